"""Benchmark annotations: VGG-SS JSON files and folders of Flickr SoundNet XML files.

`load_annotations(path)` reads either and returns `Annotations`, which gives each
sample's boxes and its 224 x 224 ground-truth map (`hearflow.metrics`). Sample ids are
file stems: a VGG-SS entry ``{"file": "abc_000030.mp4", ...}`` and a Flickr file
``abc.xml`` are the samples ``abc_000030`` and ``abc``, matching prepared folders.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

import numpy as np

from hearflow.errors import HearflowError
from hearflow.metrics import FLICKR_GRID, MAP_SIZE, flickr_consensus_map, gt_map_vggss, read_flickr_boxes

BENCHMARKS = ("flickr", "vggss")


class Annotations:
    """Boxes and ground-truth maps of an annotated test set.

    ``benchmark`` is ``"flickr"`` (boxes of several annotators on a 256 grid, consensus
    map) or ``"vggss"`` (normalised boxes, union map). ``ids`` keeps the file's order
    (VGG-SS) or the sorted file names (Flickr).
    """

    def __init__(self, path: Path, benchmark: str, boxes: dict[str, list[tuple[float, ...]]]):
        if benchmark not in BENCHMARKS:
            raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
        self.path = path
        self.benchmark = benchmark
        self._boxes = boxes  # flickr: the file's values on the 256 grid; vggss: normalised
        self.ids = list(boxes)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._boxes

    def __repr__(self) -> str:
        return f"Annotations({self.benchmark}, {len(self)} samples, {self.path})"

    def _lookup(self, sample_id: str) -> list[tuple[float, ...]]:
        try:
            return self._boxes[sample_id]
        except KeyError:
            raise HearflowError(f"sample {sample_id!r} is not annotated in {self.path}") from None

    def boxes(self, sample_id: str) -> list[tuple[float, float, float, float]]:
        """The sample's boxes ``(x0, y0, x1, y1)`` as fractions of the image side.

        Flickr values are the file's divided by 256; VGG-SS values are the file's as
        they are (a few hold negative sentinels, which the ground truth treats as 0).
        """
        boxes = self._lookup(sample_id)
        if self.benchmark == "flickr":
            return [tuple(value / FLICKR_GRID for value in box) for box in boxes]
        return list(boxes)

    def has_source(self, sample_id: str) -> bool:
        """False for a sample annotated with no visible sound source (an empty box list)."""
        return bool(self._lookup(sample_id))

    def gt_map(self, sample_id: str) -> np.ndarray:
        """Float32 224 x 224 ground truth of one sample (all zero without a source)."""
        boxes = self._lookup(sample_id)
        if self.benchmark == "flickr":
            return flickr_consensus_map(boxes)
        return gt_map_vggss(boxes)

    def gt_maps(self, sample_ids: Iterable[str]) -> np.ndarray:
        """Float32 N x 224 x 224 ground truths, in the order of ``sample_ids``."""
        sample_ids = list(sample_ids)
        maps = np.empty((len(sample_ids), MAP_SIZE, MAP_SIZE), np.float32)
        for row, sample_id in enumerate(sample_ids):
            maps[row] = self.gt_map(sample_id)
        return maps


def load_annotations(path: str | Path) -> Annotations:
    """Read a VGG-SS-style JSON file or a folder of Flickr SoundNet XML files.

    JSON: a list of ``{"file": str, "class": str, "bbox": [[x0, y0, x1, y1], ...]}`` with
    coordinates normalised to [0, 1]; an empty ``bbox`` list is a sample with no visible
    sound source. Folder: one ``<id>.xml`` per sample. Raises HearflowError naming the
    path and what was expected.
    """
    path = Path(path)
    if path.is_dir():
        return _load_flickr(path)
    if path.is_file():
        return _load_vggss(path)
    raise HearflowError(f"annotations {path} do not exist (expected a VGG-SS JSON file or a folder of Flickr XML files)")


def _load_flickr(folder: Path) -> Annotations:
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise HearflowError(f"annotation folder {folder} holds no .xml file (expected one Flickr SoundNet XML per sample)")
    return Annotations(folder, "flickr", {file.stem: read_flickr_boxes(file) for file in files})


def _load_vggss(file: Path) -> Annotations:
    expected = 'a JSON list of {"file": ..., "class": ..., "bbox": [[x0, y0, x1, y1], ...]}'
    try:
        entries = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HearflowError(f"cannot read annotations {file}: {error} (expected {expected})") from error
    if not isinstance(entries, list):
        raise HearflowError(f"annotations {file} hold a {type(entries).__name__}; expected {expected}")
    boxes: dict[str, list[tuple[float, ...]]] = {}
    for index, entry in enumerate(entries):
        where = f"annotations {file}, entry {index}"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"]:
            raise HearflowError(f"{where} has no \"file\" name; expected {expected}")
        sample_id = Path(entry["file"]).stem
        if sample_id in boxes:
            raise HearflowError(f"{where}: sample {sample_id!r} is annotated twice")
        boxes[sample_id] = _vggss_boxes(entry.get("bbox"), f"{where} ({sample_id})", expected)
    if not boxes:
        raise HearflowError(f"annotations {file} are an empty list; expected {expected}")
    return Annotations(file, "vggss", boxes)


def _vggss_boxes(value, where: str, expected: str) -> list[tuple[float, ...]]:
    if not isinstance(value, list):
        raise HearflowError(f"{where} has no \"bbox\" list; expected {expected}")
    boxes = []
    for box in value:
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
        ):
            raise HearflowError(f"{where}: box {box!r} is not four finite numbers [x0, y0, x1, y1]")
        boxes.append(tuple(float(v) for v in box))
    return boxes
