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
  are refused, numpy scalars become numbers), `write_png` (RGB uint8).

A name too long to take the suffix (a legal 250-character name) gets a temporary
name made of a hash of it instead (`temporary_name`); `remove_stale_temporaries`
deletes the leftovers of given final names, matching that exact pattern only.

CSV (`csv_row`, `csv_text`, `read_csv`): every cell round-trips exactly (quoted when
it holds a comma, quote, newline or carriage return). A text cell that a spreadsheet
would run as a formula (`csv_cell`: ``=1+1``, ``@SUM(A1)``, ``-2+cmd|' /C calc'!A0``)
is written with a leading ``'``, and so is any cell that starts with ``'``;
`read_csv` removes that one character again.

`folder_lock` takes an advisory lock on a file (``flock``: the system releases it
when its process ends, however it ends) and says who holds it when it is taken.

Errors: `atomic_path` and `write_atomic` let ``OSError`` through (callers that
record per-file failures want it as it is); the text, JSON and PNG writers turn it
into a `HearflowError` naming the file. `storage_problem` tells an error of the
output's storage (full, read-only, not permitted) from one of the data.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from hearflow.errors import HearflowError

TMP_MARKER = ".tmp-"
NAME_MAX_BYTES = 255  # the longest file name of common file systems (ext4, XFS, btrfs, APFS, NTFS)
_PID_DIGITS = 10
_TEMPORARY = re.compile(r"(.+)\.tmp-(\d+)\Z", re.DOTALL)


def _temporary_stem(name: str) -> str:
    """What a temporary of the file ``name`` is called before its ``.tmp-<pid>``: the name
    itself, or (when the suffix would make it too long) a hidden name made of its hash."""
    encoded = os.fsencode(name)
    if len(encoded) + len(TMP_MARKER) + _PID_DIGITS <= NAME_MAX_BYTES:
        return name
    return "." + hashlib.sha256(encoded).hexdigest()[:40]


def temporary_name(path: str | Path) -> Path:
    """The temporary path of ``path`` for this process: ``NAME.tmp-<pid>`` in the same folder
    (``.<hash of NAME>.tmp-<pid>`` for a name too long to take the suffix)."""
    path = Path(path)
    return path.with_name(f"{_temporary_stem(path.name)}{TMP_MARKER}{os.getpid()}")


def remove_stale_temporaries(folder: str | Path, final_names: Iterable[str], dead_owners_only: bool = False) -> int:
    """Delete the temporaries (`temporary_name`, of any process) of the files ``final_names``
    in ``folder``; returns how many. A file counts only when its name is exactly such a
    temporary (``NAME.tmp-<digits>``, or a temporary of one), never by a common prefix:
    the temporaries of ``a.jpg`` are not those of ``a.tmp-1.jpg``.

    dead_owners_only: leave temporaries whose process (the pid in the name) is still
    running on this machine, for folders other runs may be writing at the same time.
    """
    wanted = {_temporary_stem(name) for name in final_names}
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        name, owner = entry.name, None
        while (match := _TEMPORARY.match(name)) is not None:
            name, owner = match[1], int(match[2]) if owner is None else owner
            if name in wanted:
                break
        if owner is None or name not in wanted or (dead_owners_only and _running(owner)):
            continue
        Path(entry.path).unlink(missing_ok=True)
        removed += 1
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


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


_FORMULA_STARTS = ("=", "@", "\t", "\r", "'")
_SIGNED_NAME = re.compile(r"[+-][\w.+ -]*\Z")  # "-abc_000030" (a YouTube id) calls nothing


def csv_cell(value: Any) -> str:
    """One cell as hearflow writes it (see the module docstring): None is empty; a text a
    spreadsheet would run as a formula gets a leading ``'``: one starting with ``= @``, a
    tab, a carriage return or ``'``, or with ``+ -`` followed by anything but letters,
    digits, ``_ . + -`` and spaces (a formula needs ``( | ! =`` or the like to do harm)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        return str(value)
    if value.startswith(_FORMULA_STARTS) or (value.startswith(("+", "-")) and not _SIGNED_NAME.match(value)):
        return "'" + value
    return value


def csv_row(values: Iterable[Any]) -> str:
    """One CSV record of ``values`` (`csv_cell` each), ending in ``\\n``. A cell is quoted when it
    holds a comma, a quote, a line feed or a carriage return, or starts or ends with a space
    (which readers that strip cells would lose)."""
    cells = [_quoted(csv_cell(value)) for value in values]
    return (",".join(cells) if cells != [""] else '""') + "\n"


def _quoted(cell: str) -> str:
    if cell != cell.strip() or any(character in cell for character in ',"\r\n'):
        return '"' + cell.replace('"', '""') + '"'
    return cell


def csv_text(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document: the header ``columns``, then one record per row (`csv_row`)."""
    return csv_row(columns) + "".join(csv_row(row) for row in rows)


def read_csv(text: str) -> tuple[list[list[str]], str]:
    """(the records of a CSV document, its torn tail): cells exactly as `csv_row` was given
    them. The tail is whatever follows the last complete record (ending in ``\\n`` outside
    quotes), as a writer killed mid-record leaves it; "" for a whole document. ``text``
    must keep its line ends as they are (read it as bytes and decode, no newline
    translation)."""
    end, quoted = 0, False
    for match in re.finditer(r'["\n]', text):
        if match[0] == '"':
            quoted = not quoted
        elif not quoted:
            end = match.end()
    records = csv.reader(io.StringIO(text[:end], newline=""))
    return [[cell[1:] if cell.startswith("'") else cell for cell in record] for record in records], text[end:]


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


# Errors of the storage a run writes to, not of the data being written: a full disk or
# quota, a read-only or failing file system, a folder the user may not write.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


def storage_problem(error: BaseException) -> str | None:
    """What is wrong with the output storage when ``error`` (or what caused it) is an
    OSError of it (no space left, a read-only file system, no permission); else None."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
            return error.strerror or os.strerror(error.errno)
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def folder_lock(path: str | Path, shared: bool = False, busy: str = "another hearflow run") -> Iterator[None]:
    """Hold an advisory lock on the file ``path`` (created) for the block.

    Exclusive by default: the file then names its holder (pid, host, start time,
    command line) while it is held. ``shared``: any number of shared holders, but
    no exclusive one. The system releases the lock when the holding process ends,
    whatever ends it, so a killed run never blocks the next one. When the lock is
    held, HearflowError names the folder and the holder (``busy`` when the file
    names none: shared holders do not write it).
    """
    import fcntl

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise HearflowError(f"cannot write to {path.parent}: {error.strerror or error}") from error
    try:
        try:
            fcntl.flock(descriptor, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 4096, 0).decode("utf-8", "replace").strip() or busy
            raise HearflowError(f"{path.parent} is in use by {holder}; wait for it to end or stop it "
                                f"(lock {path.name})") from None
        os.ftruncate(descriptor, 0)  # no exclusive holder now: whatever the file says is stale
        if not shared:
            os.pwrite(descriptor, lock_holder().encode("utf-8", "backslashreplace"), 0)
        try:
            yield
        finally:
            if not shared:
                os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)


def lock_holder() -> str:
    """How `folder_lock` names this process: pid, host, start time and command line."""
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')} ({command})"
