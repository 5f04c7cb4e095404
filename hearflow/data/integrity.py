"""Is a prepared file whole? Found without decoding it, from a few bytes of each file.

`file_problem` says why a sample's JPEG, flow PNG (or an earlier version's .npy) or WAV
cannot be used: missing, empty, or cut short. Prepare uses it to redo damaged samples on
a rerun, training and evaluation to report them before the first step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def file_problem(path: Path) -> str | None:
    """Why the prepared file ``path`` cannot be used, found without decoding it (a few bytes
    are read): missing, empty, or cut short (a JPEG without its end-of-image marker, a PNG
    without its end chunk, a WAV or .npy shorter than its header says); None when it looks whole."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            return f"{path} is not a file"
        if size == 0:
            return f"{path} is empty (0 bytes)"
        with open(path, "rb") as handle:
            kind = {".jpg": _jpeg_problem, ".wav": _wav_problem, ".npy": _npy_problem,
                    ".png": _png_problem}.get(path.suffix.lower())
            problem = kind(handle, size) if kind else None
    except FileNotFoundError:
        return f"missing {path}"
    except OSError as error:
        return f"{path} is unreadable ({error.strerror or error})"
    return None if problem is None else f"{path} {problem}"


def _jpeg_problem(handle, size: int) -> str | None:
    head = handle.read(2)
    handle.seek(max(0, size - 64))
    if head != b"\xff\xd8":
        return "is not a JPEG file"
    # Entropy-coded data never holds FF D9 (an FF there is followed by 00 or a restart marker).
    return None if b"\xff\xd9" in handle.read() else "is truncated (no JPEG end-of-image marker)"


def _png_problem(handle, size: int) -> str | None:
    head = handle.read(8)
    handle.seek(max(0, size - 12))
    if head != b"\x89PNG\r\n\x1a\n":
        return "is not a PNG file"
    return None if handle.read(12)[4:8] == b"IEND" else "is truncated (no PNG end chunk)"


def _wav_problem(handle, size: int) -> str | None:
    header = handle.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:] != b"WAVE":
        return "is not a WAV file"
    position = 12
    while position + 8 <= size:
        handle.seek(position)
        chunk, length = handle.read(4), int.from_bytes(handle.read(4), "little")
        if chunk == b"data":
            return None if position + 8 + length <= size else (
                f"is truncated ({size - position - 8} of its {length} bytes of audio)")
        position += 8 + length + (length & 1)
    return "is truncated (no audio data chunk)"


def _npy_problem(handle, size: int) -> str | None:
    try:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(handle)
    except (ValueError, SyntaxError, EOFError) as error:
        return f"is not a .npy file ({error})"
    expected = handle.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return None if size >= expected else f"is truncated ({size} of {expected} bytes)"
