"""Benchmark annotations: a small registry of the benchmarks hearflow scores.

Each benchmark (`BENCHMARKS`) says how its annotations are recognised, read and
turned into the protocol's 224 x 224 ground-truth map:

- ``vggss``: a JSON list (VGG-SS, and the synthetic sets of `hearflow synth`) of
  ``{"file", "class", "bbox": [[x0, y0, x1, y1], ...]}`` normalised to [0, 1]; the
  map is the union of the boxes (`gt_map_vggss`);
- ``flickr``: a folder of Flickr SoundNet XML files, boxes of several annotators on
  a 256 grid; the map is their consensus (`flickr_consensus_map`).

`load_annotations(path)` detects which and returns `Annotations`, which gives each
sample's boxes and ground truth. Sample ids are file stems: a VGG-SS entry
``{"file": "abc_000030.mp4", ...}`` and a Flickr file ``abc.xml`` are the samples
``abc_000030`` and ``abc``, matching prepared folders.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hearflow.errors import HearflowError
from hearflow.metrics import MAP_SIZE

FLICKR_GRID = 256  # Flickr SoundNet boxes are given on a 256 x 256 grid


# ---------------------------------------------------------------- Flickr SoundNet


def read_flickr_boxes(xml_path: str | Path) -> list[tuple[float, float, float, float]]:
    """The annotators' boxes of one Flickr SoundNet XML file: ``(xmin, ymin, xmax, ymax)``
    on the 256 x 256 grid.

    As the released evaluation reads it: every ``bbox`` element one level below the
    root's children (``<annotation><bboxes><bbox>...``); its first child is a label and
    the next four are xmin, ymin, xmax, ymax. Raises HearflowError naming the file when
    it is unreadable, holds no ``bbox`` or a box is not four numbers.
    """
    path = Path(xml_path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as error:
        raise HearflowError(f"cannot read Flickr annotation {path}: {error}") from error
    boxes = []
    for element in root.findall("./*/bbox"):
        fields = list(element)[1:5]
        try:
            if len(fields) != 4:
                raise ValueError(f"{len(fields)} coordinates")
            boxes.append(tuple(_number(field.text) for field in fields))
        except (TypeError, ValueError) as error:
            raise HearflowError(
                f"Flickr annotation {path}: a <bbox> needs a label then xmin, ymin, xmax, ymax numbers ({error})"
            ) from None
    if not boxes:
        raise HearflowError(f"Flickr annotation {path} holds no <bbox> element (expected <annotation><bboxes><bbox>...)")
    return boxes


def flickr_consensus_map(boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """Float32 224 x 224 consensus map of boxes on the 256 grid: sum of the box masks / 2,
    clipped at 1 (a pixel inside two annotators' boxes counts fully, inside one half).

    Each coordinate v becomes ``int(224 * v / 256)``; a box covers rows ymin:ymax and
    columns xmin:xmax (Python slicing, as the released code).
    """
    total = np.zeros((MAP_SIZE, MAP_SIZE), np.float64)
    for box in boxes:
        xmin, ymin, xmax, ymax = (int(MAP_SIZE * value / FLICKR_GRID) for value in box)
        total[ymin:ymax, xmin:xmax] += 1
    return np.minimum(total / 2, 1).astype(np.float32)


def gt_map_flickr(xml_path: str | Path) -> np.ndarray:
    """Float32 224 x 224 ground truth of one Flickr SoundNet XML file (values 0, 0.5, 1)."""
    return flickr_consensus_map(read_flickr_boxes(xml_path))


def _read_flickr(folder: Path) -> dict[str, list[tuple[float, ...]]]:
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise HearflowError(f"annotation folder {folder} holds no .xml file (expected one Flickr SoundNet XML per sample)")
    return {file.stem: read_flickr_boxes(file) for file in files}


def _number(text: str | None) -> float | int:
    text = (text or "").strip()
    try:
        return int(text)
    except ValueError:
        value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value




# ---------------------------------------------------------------- VGG-SS


def gt_map_vggss(boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """Float32 224 x 224 union of VGG-SS boxes ``[[x0, y0, x1, y1], ...]`` normalised to [0, 1].

    Each coordinate v becomes ``int(224 * max(v, 0))`` (the released rule: the file's
    negative sentinels give empty boxes); an empty list gives an all-zero map.
    """
    union = np.zeros((MAP_SIZE, MAP_SIZE), np.float32)
    for box in boxes:
        if len(box) != 4:
            raise ValueError(f"a VGG-SS box is [x0, y0, x1, y1], got {list(box)!r}")
        xmin, ymin, xmax, ymax = (int(MAP_SIZE * max(float(value), 0.0)) for value in box)
        union[ymin:ymax, xmin:xmax] = 1
    return union


def _read_vggss(file: Path) -> dict[str, list[tuple[float, ...]]]:
    expected = 'a JSON list of {"file": ..., "class": ..., "bbox": [[x0, y0, x1, y1], ...]}'
    try:
        entries = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HearflowError(f"cannot read annotations {file}: {error} (expected {expected})") from error
    except RecursionError:
        raise HearflowError(f"cannot read annotations {file}: nested too deeply (expected {expected})") from None
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
    return boxes


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


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Benchmark:
    """How one benchmark's annotations are recognised, read and scored.

    matches(path): whether ``path`` is in this benchmark's format; read(path): sample
    id -> boxes in the file's units; grid: those units per image side;
    ground_truth(boxes): the float32 224 x 224 map of one sample.
    """

    name: str
    description: str
    matches: Callable[[Path], bool]
    read: Callable[[Path], dict[str, list[tuple[float, ...]]]]
    grid: float
    ground_truth: Callable[[Sequence[Sequence[float]]], np.ndarray]


BENCHMARKS: dict[str, Benchmark] = {
    "flickr": Benchmark("flickr", "a folder of Flickr SoundNet XML files", Path.is_dir, _read_flickr,
                        FLICKR_GRID, flickr_consensus_map),
    "vggss": Benchmark("vggss", "a VGG-SS-style JSON file", Path.is_file, _read_vggss, 1.0, gt_map_vggss),
}


class Annotations:
    """Boxes and ground-truth maps of an annotated test set.

    ``benchmark`` names its entry of `BENCHMARKS` (``"flickr"``: boxes of several
    annotators on a 256 grid, consensus map; ``"vggss"``: normalised boxes, union map).
    ``ids`` keeps the file's order (VGG-SS) or the sorted file names (Flickr).
    """

    def __init__(self, path: Path, benchmark: str, boxes: dict[str, list[tuple[float, ...]]]):
        if benchmark not in BENCHMARKS:
            raise ValueError(f"benchmark must be one of {tuple(BENCHMARKS)}, got {benchmark!r}")
        self.path = path
        self.benchmark = benchmark
        self._spec = BENCHMARKS[benchmark]
        self._boxes = boxes  # in the file's units (Flickr: the 256 grid; VGG-SS: normalised)
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
        grid = self._spec.grid
        return [tuple(value / grid for value in box) for box in self._lookup(sample_id)]

    def has_source(self, sample_id: str) -> bool:
        """False for a sample annotated with no visible sound source (an empty box list)."""
        return bool(self._lookup(sample_id))

    def gt_map(self, sample_id: str) -> np.ndarray:
        """Float32 224 x 224 ground truth of one sample (all zero without a source)."""
        return self._spec.ground_truth(self._lookup(sample_id))

    def box_problems(self, sample_ids: Iterable[str] | None = None) -> "BoxProblems":
        """The boxes of ``sample_ids`` (default: all) that cannot be scored as given (see `BoxProblems`)."""
        problems, unscorable = [], []
        for sample_id in self.ids if sample_ids is None else sample_ids:
            boxes = self._lookup(sample_id)
            for box in boxes:
                problem = _box_problem(box, self._spec.grid)
                if problem:
                    problems.append((sample_id, box, problem))
            if boxes and not self.gt_map(sample_id).any():
                unscorable.append(sample_id)
        return BoxProblems(self.path, problems, unscorable, self._spec.grid)

    def gt_maps(self, sample_ids: Iterable[str]) -> np.ndarray:
        """Float32 N x 224 x 224 ground truths, in the order of ``sample_ids``."""
        sample_ids = list(sample_ids)
        maps = np.empty((len(sample_ids), MAP_SIZE, MAP_SIZE), np.float32)
        for row, sample_id in enumerate(sample_ids):
            maps[row] = self.gt_map(sample_id)
        return maps


def _box_problem(box: Sequence[float], grid: float) -> str | None:
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return "inverted or zero-area"
    if min(box) < -0.01 * grid or max(box) > 1.01 * grid:
        pixels = grid == 1 and max(box) > 1.01
        return f"outside [0, {grid:g}]" + (" (pixels instead of fractions of the image?)" if pixels else "")
    return None


@dataclass
class BoxProblems:
    """Annotation boxes that cannot be scored as given: inverted or zero-area ones, and ones
    outside the image (pixels where fractions belong); ``problems`` holds ``(id, box,
    reason)``; ``unscorable``: samples with boxes but an empty ground truth (they score 0)."""

    path: Path
    problems: list[tuple[str, tuple[float, ...], str]]
    unscorable: list[str]
    grid: float

    def line(self) -> str | None:
        """One line with the counts and up to three examples, or None when every box is usable."""
        if not self.problems and not self.unscorable:
            return None
        examples = "; ".join(f"{sample_id} {[round(v, 4) for v in box]}: {reason}"
                             for sample_id, box, reason in self.problems[:3])
        text = (f"annotations {self.path}: {len(self.problems)} box(es) of "
                f"{len({sample_id for sample_id, _, _ in self.problems})} sample(s) cannot be scored as given"
                + (f" (e.g. {examples})" if examples else ""))
        if self.unscorable:
            text += (f"; {len(self.unscorable)} sample(s) have no usable box and score 0 "
                     f"(e.g. {', '.join(self.unscorable[:3])})")
        return text


def load_annotations(path: str | Path, benchmark: str = "auto") -> Annotations:
    """Read the annotations at ``path`` (a VGG-SS JSON file or a folder of Flickr XML files).

    benchmark: ``auto`` takes the one whose format ``path`` has; a name of `BENCHMARKS`
    also checks that it is that one. An empty ``bbox`` list (VGG-SS) is a sample with
    no visible sound source. Raises HearflowError naming the path and what was expected.
    """
    path = Path(path)
    if benchmark != "auto" and benchmark not in BENCHMARKS:
        raise HearflowError(f"benchmark is {benchmark!r}; choose auto or one of {', '.join(BENCHMARKS)}")
    formats = "; ".join(f"{spec.name}: {spec.description}" for spec in BENCHMARKS.values())
    found = next((spec for spec in BENCHMARKS.values() if spec.matches(path)), None)
    if found is None:
        raise HearflowError(f"annotations {path} do not exist (expected {formats})")
    if benchmark != "auto" and found.name != benchmark:
        raise HearflowError(f"{path} holds {found.name} annotations, not {benchmark} ({formats})")
    return Annotations(path, found.name, found.read(path))
