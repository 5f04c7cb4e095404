"""The one way hearflow writes a file: whole or not at all.

Every file appears under its final name only once it is complete and on disk: it is
written to a temporary name beside it (``NAME.tmp-<pid>``), flushed with ``fsync``,
then renamed over the final name with `os.replace`; on any failure the temporary
file is removed and the final name is left as it was. A process killed half-way
leaves at most a ``*.tmp-<pid>`` file, never a torn file under the final name.

- `atomic_path`: a temporary path for writers that need a path (`PendingFile` for
  those with a life cycle of their own, the video encoder);
- `atomic_file`: an open temporary file (``torch.save``, streamed JSON);
- `write_atomic` (bytes), `write_text`, `write_json` (strict JSON: NaN and infinity
  are refused, numpy scalars become numbers), `write_png` (RGB uint8); `csv_text`
  makes the CSV documents hearflow writes.

Errors: `atomic_path` and `write_atomic` let ``OSError`` through (callers that
record per-file failures want it as it is); the text, JSON and PNG writers turn it
into a `HearflowError` naming the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from hearflow.errors import HearflowError

TMP_MARKER = ".tmp-"


def temporary_name(path: str | Path) -> Path:
    """The temporary path of ``path`` for this process: ``NAME.tmp-<pid>`` in the same folder."""
    path = Path(path)
    return path.with_name(f"{path.name}{TMP_MARKER}{os.getpid()}")


class PendingFile:
    """A file being written under its temporary name ``tmp``, for writers with a life cycle
    of their own (a video encoder): `commit` makes it ``path``, `discard` deletes it.

    durable: ``fsync`` the finished file before the rename, so that the final name
    never points at data still in the page cache after a power loss.
    """

    def __init__(self, path: str | Path, durable: bool = True) -> None:
        self.path = Path(path)
        self.tmp = temporary_name(self.path)
        self.durable = durable

    def commit(self) -> None:
        if self.durable:
            descriptor = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path; when the block succeeds, its file becomes ``path`` (`PendingFile`)."""
    pending = PendingFile(path, durable)
    try:
        yield pending.tmp
        pending.commit()
    finally:
        pending.discard()


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Yield an open temporary file (``mode`` ``wb`` or ``w``); it becomes ``path`` on success."""
    with atomic_path(path, durable=False) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (see the module docstring)."""
    with atomic_file(path) as handle:
        handle.write(data)


def _user_facing(path: str | Path, write) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    except OSError as error:
        raise HearflowError(f"cannot write {path}: {error.strerror or error}") from error


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically, creating its folder."""
    _user_facing(path, lambda target: write_atomic(target, text.encode("utf-8")))


def json_text(value: Any, indent: int | None = 2) -> str:
    """Strict JSON of ``value`` (numpy scalars and arrays as numbers and lists).

    NaN and infinity are not JSON: they raise HearflowError instead of being written
    as tokens other programs refuse.
    """
    try:
        return json.dumps(value, indent=indent, allow_nan=False, default=_plain)
    except ValueError as error:
        raise HearflowError(f"cannot write a value as JSON: {error} (a NaN or infinite number)") from None


def write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as strict, indented JSON (see `json_text`) to ``path`` atomically."""
    write_text(path, json_text(value) + "\n")


def csv_text(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document: the header ``columns``, then one line per row (quoted as needed, ``\\n`` line ends)."""
    text = io.StringIO()
    table = csv.writer(text, lineterminator="\n")
    table.writerow(columns)
    table.writerows(rows)
    return text.getvalue()


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB uint8 ``H x W x 3`` image as PNG to ``path`` atomically."""
    import cv2

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    if not ok:
        raise HearflowError(f"cannot encode {path} as PNG")
    _user_facing(path, lambda target: write_atomic(target, encoded.tobytes()))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
