"""Lists of inputs: videos to prepare, sample ids, Flickr key frames, shards.

Shared by the stages that take them (`hearflow prepare` selects videos by id and
shard; `hearflow train --train-ids` selects samples).
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

from hearflow.errors import HearflowError
from hearflow.io import read_csv

VIDEO_SUFFIXES = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".mpg", ".mpeg", ".ts", ".mts", ".3gp", ".ogv", ".wmv",
)  # fmt: skip

def find_videos(src: str | Path) -> list[Path]:
    """Videos under a folder (recursive, by suffix, sorted), or the paths listed in a text file.

    The search follows symbolic links to folders and files; a folder reached a
    second time (a link loop, or two links to one folder) is searched once. A list
    file has one path per line (blank lines and ``#`` comments ignored); relative
    paths are taken relative to the list file's folder. Names that are not valid
    UTF-8 are kept as their bytes (``surrogateescape``).
    """
    src = Path(src)
    try:
        if src.is_dir():
            return sorted(_walk_videos(src))
        if src.is_file():
            lines = src.read_bytes().decode("utf-8", "surrogateescape").splitlines()
            paths = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
            return [p if p.is_absolute() else src.parent / p for p in map(Path, paths)]
    except OSError as error:
        raise HearflowError(f"cannot read {error.filename or src}: {error.strerror or error}") from None
    raise HearflowError(f"{src}: no such folder or list file")


def _walk_videos(root: Path) -> list[Path]:
    """Files with a video suffix under ``root``, following links, each folder once."""
    videos, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True, onerror=_raise):
        status = os.stat(folder)
        if (status.st_dev, status.st_ino) in seen:
            subfolders.clear()
            continue
        seen.add((status.st_dev, status.st_ino))
        videos += [Path(folder, name) for name in files if Path(name).suffix.lower() in VIDEO_SUFFIXES]
    return videos


def _raise(error: OSError) -> None:
    raise error


_HEADER_WORDS = {"id", "ids", "video", "file", "flickr_id", "youtube_id", "ytid", "# ytid"}


def read_ids(path: str | Path) -> list[str]:
    """Sample ids from a text/CSV file: the first field of each record.

    VGG-Sound ids are ``{youtube_id}_{start:06d}``; a VGG-Sound metadata row
    ``youtube_id,start,label,split`` becomes that id; Flickr ids are numbers. A
    header line (``id``, ``video``, ``flickr_id``, ...) is skipped. The file is CSV
    as hearflow writes it (`hearflow.io.read_csv`), so the first column of a
    manifest selects its ids exactly: an id with a comma, a quote or a line break is
    quoted (``"a,b"``), and a quoted id is taken as it is, spaces included; an
    unquoted one is stripped of surrounding spaces.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as error:
        raise HearflowError(f"cannot read the id list {path}: {error.strerror or error}") from None
    records, _ = read_csv(text if text.endswith("\n") or not text else text + "\n")
    ids = []
    for number, (fields, quoted) in enumerate(zip(records, _first_field_quoted(text))):
        fields = fields or [""]
        if not quoted:
            fields = [field.strip() for field in fields]
        if not fields[0] or (number == 0 and fields[0].lower() in _HEADER_WORDS):
            continue
        first = fields[0]
        if (
            len(fields) >= 3
            and re.fullmatch(r"\d+", fields[1])
            and not first.isdigit()
            and not re.search(r"_\d{6}$", first)
        ):
            first = f"{first}_{int(fields[1]):06d}"
        ids.append(first)
    if not ids:
        raise HearflowError(f"the id list {path} holds no ids")
    return ids


def _first_field_quoted(text: str) -> list[bool]:
    """Per CSV record of ``text``: whether its first field is quoted."""
    starts, quoted, at_start = [], False, True
    for match in re.finditer(r'["\n]|[^"\n]+', text):
        token = match[0]
        if at_start:
            starts.append(token == '"')
            at_start = False
        if token == '"':
            quoted = not quoted
        elif token == "\n" and not quoted:
            at_start = True
    return starts


def read_keyframes(path: str | Path) -> dict[str, int]:
    """``id -> 1-based frame index`` from a Flickr key-frame CSV (``flickr_id,frame_indices``).

    The indices column holds space-separated candidates; the first one is used (as
    the authors did).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise HearflowError(f"cannot read the key-frame file {path}: {error}") from None
    keyframes = {}
    for number, line in enumerate(lines, 1):
        sample_id, _, indices = line.partition(",")
        candidates = indices.replace('"', " ").split()
        if not candidates or not candidates[0].isdigit():
            if number == 1:
                continue  # header
            raise HearflowError(f"{path}:{number}: expected 'id,index [index ...]', got {line!r}")
        keyframes[sample_id.strip()] = int(candidates[0])
    return keyframes


def read_keyframe_files(paths: str | Path | list[str | Path] | tuple) -> dict[str, int]:
    """`read_keyframes` of each file in turn, a later file's entry overriding an earlier one's
    for the same id (e.g. the benchmark's list, then a small CSV of the release's overrides)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    keyframes: dict[str, int] = {}
    for path in paths:
        keyframes.update(read_keyframes(path))
    return keyframes


def key_frame_from_one_based(index: int, n_frames: int) -> int:
    """The authors' rule for a 1-based Flickr index: subtract 1, or 2 when it is the last frame.

    (An index past the end, from a frame count that differs from theirs, is treated
    like the last frame.)
    """
    return max(0, n_frames - 2 if index >= n_frames else index - 1)


def parse_shard(text: str, environ: dict[str, str] | None = None) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N; ``"auto"`` -> this SLURM array task's place
    (`slurm_array_shard`)."""
    if (text or "").strip() == "auto":
        return slurm_array_shard(os.environ if environ is None else environ)
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise HearflowError(f"--shard expects I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(match[1]), int(match[2])


def slurm_array_shard(environ) -> tuple[int, int]:
    """(I, N) of a SLURM array job's task: N = ``SLURM_ARRAY_TASK_COUNT`` tasks, I = (
    ``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN``) / ``SLURM_ARRAY_TASK_STEP`` (``sbatch
    --array 0-7`` gives tasks 0..7 of 8; ``--array 1-15:2`` tasks 0..7 of 8 too)."""
    try:
        task, count = int(environ["SLURM_ARRAY_TASK_ID"]), int(environ["SLURM_ARRAY_TASK_COUNT"])
        first, step = int(environ.get("SLURM_ARRAY_TASK_MIN", 0)), int(environ.get("SLURM_ARRAY_TASK_STEP", 1))
    except KeyError:
        raise HearflowError("--shard auto reads SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT, which are not "
                            "set: run it as a task of `sbatch --array`, or give --shard I/N") from None
    except ValueError:
        raise HearflowError("--shard auto: the SLURM_ARRAY_TASK_* variables are not integers") from None
    index, remainder = divmod(task - first, max(step, 1))
    if remainder or not 0 <= index < count:
        raise HearflowError(f"--shard auto: task {task} is not one of {count} tasks from {first} in steps of {step} "
                            "(use an evenly spaced --array range, or give --shard I/N)")
    return index, count


def shard_of(sample_id: str, count: int) -> int:
    """The shard (0..count-1) of an id: a stable hash, the same on every machine."""
    return zlib.crc32(sample_id.encode("utf-8", "surrogateescape")) % count
