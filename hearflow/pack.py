"""`hearflow pack`: a prepared folder -> WebDataset-style tar shards with an index (`hearflow.data.shards`).

Each sample becomes four members: the frame's JPEG as it is, the flow as a 16-bit
PNG (the same levels re-encoded at zlib's strongest level, or encoded from an earlier
version's float16 ``.npy``), the audio as FLAC (the WAV's PCM, lossless) and its
manifest row as JSON. Shards fill up to
``shard_size`` bytes in the order of the sorted ids; ``--shard I/N`` packs the ids
whose stable hash falls in part I into shards and an index of its own, so N jobs can
pack one folder into one OUT side by side. Every shard is written atomically and the
index last, so a run killed at any moment leaves no part that looks finished; a rerun
packs its part again from the start.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hearflow.data.codecs import FLOW_STEP, PACK_ZLIB_LEVEL, encode_flac, encode_flow, recompress_flow
from hearflow.data.lists import shard_of
from hearflow.data.prepared import JPEG_QUALITY, MANIFEST_COLUMNS, PreparedFolder
from hearflow.data.shards import (
    FORMAT,
    HEADER_NAME,
    INDEX_COLUMNS,
    VERSION,
    ShardWriter,
    index_name,
    shard_prefix,
)
from hearflow.errors import HearflowError
from hearflow.io import csv_text, json_text, write_atomic, write_text

DEFAULT_SHARD_SIZE = "1GB"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


@dataclass
class PackSummary:
    """What a pack run wrote."""

    samples: int = 0
    shards: int = 0
    bytes: int = 0
    out: str = ""
    index: str = ""

    def line(self) -> str:
        per_sample = self.bytes / self.samples / 1000 if self.samples else 0.0
        return (f"packed {self.samples} samples into {self.shards} shard(s), {self.bytes / 1e9:.3f} GB "
                f"({per_sample:.1f} KB per sample) -> {self.out} (index: {self.index})")


def parse_size(text: str | int) -> int:
    """``"1GB"`` (10^9), ``"512MiB"`` (2^29), ``"2e9"`` or a number of bytes -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match and match[2].upper()
    if not match or unit not in _UNITS or float(match[1]) * _UNITS[unit] < 1:
        raise HearflowError(f"--shard-size expects a size such as 1GB, 500MB or 2GiB, got {text!r}")
    return int(float(match[1]) * _UNITS[unit])


def pack(
    prepared: str | Path,
    out: str | Path,
    *,
    shard_size: str | int = DEFAULT_SHARD_SIZE,
    part: tuple[int, int] | None = None,
    progress: bool = True,
) -> PackSummary:
    """Pack the prepared folder ``prepared`` (hearflow's layout) into shards in ``out``.

    shard_size: the largest shard in bytes (or a size text, `parse_size`); a sample
    larger than it gets a shard of its own. part: (I, N), pack only the ids of part I.
    A sample whose files are missing or unreadable stops the run naming the file.
    """
    limit = parse_size(shard_size)
    folder = PreparedFolder(prepared)
    if folder.layout != "hearflow":
        raise HearflowError(f"{folder.path} is in the released layout; pack takes folders made by `hearflow prepare`")
    ids = [i for i in folder.ids if part is None or shard_of(i, part[1]) == part[0]]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_header(out, folder)
    prefix = shard_prefix(part)
    (out / index_name(part)).unlink(missing_ok=True)
    for stale in out.glob(f"{prefix}*.tar"):
        if re.fullmatch(re.escape(prefix) + r"\d{6}\.tar", stale.name):
            stale.unlink()  # an earlier run's shards of this part
    summary = PackSummary(out=str(out), index=str(out / index_name(part)))
    rows = _write_shards(folder, ids, out, prefix, limit, summary, progress)
    write_text(out / index_name(part), csv_text(INDEX_COLUMNS, ([row[c] for c in INDEX_COLUMNS] for row in rows)))
    return summary


def _write_shards(folder: PreparedFolder, ids: list[str], out: Path, prefix: str, limit: int,
                  summary: PackSummary, progress: bool) -> list[dict]:
    """Write the shards of ``ids``; returns their index rows."""
    from tqdm import tqdm

    mtime = int((folder.path / "manifest.csv").stat().st_mtime) if (folder.path / "manifest.csv").exists() else 0
    rows, writer = [], None
    try:
        for sample_id in tqdm(ids, unit="sample", desc="pack", file=sys.stderr, disable=not progress,
                              dynamic_ncols=True):
            members = sample_members(folder, sample_id)
            size = sum(len(data) for data in members.values()) + 512 * (len(members) + 1)
            if writer is not None and writer.size + size > limit:
                writer.close()
                writer = None
            if writer is None:
                writer = ShardWriter(out / f"{prefix}{summary.shards:06d}.tar", mtime)
                summary.shards += 1
            location = writer.add(sample_id, members)
            rows.append({**folder.rows[sample_id], "shard": location.shard, "offset": location.offset,
                         "size": location.size})
            summary.samples += 1
            summary.bytes += location.size
        if writer is not None:
            writer.close()
    except BaseException as error:
        if writer is not None:
            writer.abort(error)
        raise
    return rows


def sample_members(folder: PreparedFolder, sample_id: str) -> dict[str, bytes]:
    """The four members of one sample of ``folder`` (`hearflow.data.shards.MEMBERS`)."""
    from scipy.io import wavfile

    paths = folder.paths(sample_id)
    missing = folder.missing_files(sample_id)
    if missing:
        raise HearflowError(f"sample {sample_id!r}: missing {', '.join(map(str, missing))} "
                            "(rerun `hearflow prepare` on it)")
    if paths["flow"].suffix == ".png":
        try:
            flow = recompress_flow(paths["flow"].read_bytes())
        except HearflowError as error:
            raise HearflowError(f"{paths['flow']}: {error} (rerun `hearflow prepare` on it)") from None
    else:
        flow = encode_flow(folder.read(sample_id).flow, zlib_level=PACK_ZLIB_LEVEL)
    try:
        rate, pcm = wavfile.read(str(paths["audio"]))
    except (OSError, ValueError) as error:
        raise HearflowError(f"{paths['audio']}: not a readable WAV file ({error})") from None
    if pcm.dtype != np.int16 or pcm.ndim != 1:
        raise HearflowError(f"{paths['audio']}: pack takes the 16-bit mono WAVs `hearflow prepare` writes, "
                            f"not {pcm.dtype} x {1 if pcm.ndim == 1 else pcm.shape[1]} channels")
    row = {"id": sample_id, **{column: folder.rows[sample_id].get(column, "") for column in MANIFEST_COLUMNS}}
    return {
        "jpg": paths["frame"].read_bytes(),
        "flow.png": flow,
        "flac": encode_flac(pcm, rate),
        "json": json_text(row).encode("utf-8"),
    }


def _check_header(out: Path, folder: PreparedFolder) -> None:
    """Write shards.json, or check that the one in ``out`` describes the same data."""
    header = {"format": FORMAT, "version": VERSION, "recipe": folder.recipe, "jpeg_quality": JPEG_QUALITY,
              "flow": {"encoding": "png16", "step": FLOW_STEP}, "audio": "flac"}
    path = out / HEADER_NAME
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise HearflowError(f"{path} is unreadable ({error}); remove it or use a new output folder") from None
        if earlier != header:
            changed = sorted(key for key in set(header) | set(earlier) if earlier.get(key) != header.get(key))
            raise HearflowError(f"{out} holds shards of other data ({', '.join(changed)} differ); "
                                "use a new output folder")
        return
    write_atomic(path, (json_text(header) + "\n").encode("utf-8"))
