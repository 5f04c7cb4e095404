"""What the demo and the study share: data, training, scoring and the training-free methods.

- `make_data`: a synthetic training set and an annotated test set, through the real
  `hearflow prepare` stage (different seeds, so no clip is in both), optionally with
  clips in which no visible object sounds added to the test set and a small
  validation set (`DemoSize`), on which `negative_evaluation` calibrates;
- `train_model`: the real `hearflow train` stage, without validation (nothing is
  chosen on the test set);
- `predict_method` / `method_metrics`: a trained checkpoint or a training-free method
  (`CENTER`, a centred box; `FLOW_ONLY`, the flow magnitude alone; `LATE_FUSION`,
  the LVS map times ``1 + alpha * flow magnitude``) scored with `hearflow.scoring`,
  overall and on the subsets of clips whose sounding object moves or stands still
  (and twin clips when the test set has them), plus the pick rate;
- `negative_evaluation`: a trained checkpoint calibrated on the validation set
  (`hearflow calibrate`) and scored on the test set with negative audio
  (`hearflow.negatives`).

The pick rate is the share of test clips whose map, upsampled to the protocol's
224 x 224 grid, has a higher mean inside the sounding object's box than inside the
box of every silent object: does the method point at the right object at all,
whatever the box overlap?
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hearflow.backends import make_backend
from hearflow.checkpoint import load
from hearflow.config import Config
from hearflow.data.annotations import load_annotations
from hearflow.data.dataset import PreparedDataset
from hearflow.io import write_text
from hearflow.metrics import MAP_SIZE, summarize, upsample_maps
from hearflow.prepare import prepare
from hearflow.calibrate import calibrate
from hearflow.errors import HearflowError
from hearflow.inference import PUBLISHED_OBJECT_FUSION
from hearflow.negatives import negative_results
from hearflow.scoring import AnnotatedSet, NegativeMaps, Predictions, predict, score
from hearflow.synthetic.baselines import CenterBox, FlowMagnitude
from hearflow.synthetic.clips import synthesize
from hearflow.synthetic.methods import CENTER, FLOW_ONLY, LATE_FUSION, OBJECT_FUSION
from hearflow.synthetic.plan import SynthSettings
from hearflow.train import train

HTF, LVS = "htf", "lvs"


METHODS = (HTF, LVS, CENTER, FLOW_ONLY, LATE_FUSION)


METHOD_LABELS = {
    HTF: "HTF (trained)",
    LVS: "LVS (trained)",
    CENTER: "centre box",
    FLOW_ONLY: "flow magnitude alone",
    LATE_FUSION: "LVS x (1 + flow), late fusion",
}


SUBSETS = ("source_moves", "source_still", "twins")


LATE_FUSION_ALPHA = 1.0  # weight of the normalised flow magnitude in late fusion
TRAINING_FREE = (CENTER, FLOW_ONLY, LATE_FUSION, OBJECT_FUSION)


@dataclass(frozen=True)
class DemoSize:
    """How much data and training one demo run uses.

    no_source_clips: clips without a visible sound source (half silent, half an
    off-screen class) added to the test set, seed ``NO_SOURCE_SEED + seed``: the test
    set's other clips, and every number over clips with a source, stay as they were;
    validation_clips: a validation set (seed ``VALIDATION_SEED + seed``, a fifth of it
    without a visible source) for calibration; 0: none.
    """

    train_clips: int
    test_clips: int
    epochs: int
    no_source_clips: int = 0
    validation_clips: int = 0


SIZES = {
    "default": DemoSize(train_clips=1200, test_clips=300, epochs=8, no_source_clips=60, validation_clips=100),
    "quick": DemoSize(train_clips=600, test_clips=100, epochs=8, no_source_clips=20, validation_clips=50),
}


NO_SOURCE_SEED = 10_000  # seeds of the extra sets: never a demo seed's 2 S + 1 or 2 S + 2 for S < 5000
VALIDATION_SEED = 20_000
VALIDATION_NO_SOURCE = 0.2  # share of the validation clips without a visible source
NEGATIVE_KINDS_SCORED = ("silence", "noise", "offscreen")


# The demo's models are tiny: one torch thread per process, and data loaded in the
# training process, beat two threads plus loader workers on a 2-core machine (about
# 4x under load from other processes, where two threads spin against each other).
TORCH_THREADS = 1


LOADER_WORKERS = 0


@dataclass
class DemoData:
    """A prepared training set and an annotated, prepared test set with its clips.json
    records (the no-source clips' included), and the validation set when there is one."""

    train_dir: Path
    test_dir: Path
    test_annotations: Path
    test_clips: dict[str, dict[str, Any]]
    train_count: int
    validation_dir: Path | None = None
    validation_annotations: Path | None = None
    train_annotations: Path | None = None
    added_no_source: list[str] = dataclasses.field(default_factory=list)  # test ids of the no-source clips added


def make_data(
    out: Path,
    train_clips: int,
    test_clips: int,
    seed: int,
    config: Config,
    workers: int = 2,
    progress: bool = True,
    no_source_clips: int = 0,
    validation_clips: int = 0,
    **synth_knobs: Any,
) -> DemoData:
    """Synthesise and prepare ``OUT/{synth,prepared}/{train,test}`` (seeds ``2 seed + 1``, ``2 seed + 2``).

    config: its ``data`` section is the preparation recipe (audio rate, flow size);
    every model trained on the folders must share it. synth_knobs:
    `hearflow.synthetic.plan.SynthSettings` fields, the same for every set.
    no_source_clips: clips without a visible source (``OUT/synth/test-no-source``,
    seed ``NO_SOURCE_SEED + seed``) prepared into the test folder too, their
    annotations joined with the test set's in ``OUT/synth/test-annotations.json``;
    validation_clips: ``OUT/{synth,prepared}/validation`` (seed ``VALIDATION_SEED +
    seed``, a share `VALIDATION_NO_SOURCE` without a visible source).
    """
    no_source = {**synth_knobs, "no_source": 1.0, "twins": 0.0}
    validation = {**synth_knobs, "no_source": VALIDATION_NO_SOURCE}
    parts = [("train", "train", train_clips, 2 * seed + 1, synth_knobs), ("test", "test", test_clips, 2 * seed + 2, synth_knobs),
             ("test-no-source", "test", no_source_clips, NO_SOURCE_SEED + seed, no_source),
             ("validation", "validation", validation_clips, VALIDATION_SEED + seed, validation)]
    for part, prepared_part, clips, synth_seed, knobs in parts:
        synth_dir = out / "synth" / part
        if clips and not _synthesized(synth_dir, clips, synth_seed, knobs):
            synthesize(synth_dir, clips, synth_seed, workers=workers, progress=progress, **knobs)
        if clips:
            prepare(synth_dir / "videos", out / "prepared" / prepared_part, config.data, workers=workers, progress=progress)
    test_parts = ["test"] + (["test-no-source"] if no_source_clips else [])
    by_part = {part: json.loads((out / "synth" / part / "clips.json").read_text()) for part in test_parts}
    records = [record for part in test_parts for record in by_part[part]]
    test_annotations = out / "synth" / "test" / "annotations.json"
    if no_source_clips:
        test_annotations = out / "synth" / "test-annotations.json"
        entries = [entry for part in test_parts for entry in json.loads((out / "synth" / part / "annotations.json").read_text())]
        write_text(test_annotations, "[\n" + ",\n".join(json.dumps(entry) for entry in entries) + "\n]\n")
    return DemoData(
        train_dir=out / "prepared" / "train",
        test_dir=out / "prepared" / "test",
        test_annotations=test_annotations,
        test_clips={record["id"]: record for record in records},
        train_count=train_clips,
        validation_dir=out / "prepared" / "validation" if validation_clips else None,
        validation_annotations=out / "synth" / "validation" / "annotations.json" if validation_clips else None,
        train_annotations=out / "synth" / "train" / "annotations.json",
        added_no_source=[record["id"] for record in by_part.get("test-no-source", [])],
    )


def _synthesized(synth_dir: Path, clips: int, seed: int, knobs: dict[str, Any]) -> bool:
    """Whether ``synth_dir`` already holds exactly this synthetic set (a rerun then skips it)."""
    try:
        made = json.loads((synth_dir / "synth.json").read_text())
    except (OSError, ValueError):
        return False
    wanted = {"seed": seed, "clips": clips, "settings": dataclasses.asdict(SynthSettings(**knobs))}
    return made == wanted and (synth_dir / "clips.json").is_file()


def train_model(config: Config, train_dir: Path, run_dir: Path, progress: bool = True, pretrained: bool = False,
                train_labels: Path | None = None) -> Path:
    """Train with `hearflow.train.train` (no validation set: nothing is chosen on the test set).

    pretrained: start the encoders the config names from ``model.pretrained_weights``;
    train_labels: the training clips' annotations, for off-screen negatives.
    Returns the final checkpoint, ``run_dir/last.pt``.
    """
    train(config, train_dir, run_dir, pretrained=pretrained, progress=progress, train_labels=train_labels)
    return run_dir / "last.pt"


def predict_method(
    method: str, checkpoint: Path, data: DemoData, config: Config, progress: bool = True,
    object_weights: Path | None = None,
) -> Predictions:
    """`Predictions` on the test set of a trained ``checkpoint`` (``method`` HTF, LVS or any
    other trained name) or of a training-free method of `TRAINING_FREE` (late fusion and
    object fusion use ``checkpoint``, a trained row's; the others only ``config``'s map
    size). Object fusion blends with a saliency trunk of ``object_weights``."""
    map_size = config.data.image_size // config.model.map_stride
    flow_fusion = 0.0
    if method == CENTER:
        model = CenterBox(map_size)
    elif method == FLOW_ONLY:
        model = FlowMagnitude(map_size)
    else:
        model = load(checkpoint)
        flow_fusion = LATE_FUSION_ALPHA if method == LATE_FUSION else 0.0
        if method == OBJECT_FUSION:
            model = make_backend("torch", model, torch.device("cpu"), object_fusion=PUBLISHED_OBJECT_FUSION,
                                 object_weights=str(object_weights))
    # The added no-source clips go in batches of their own: the test set's clips are
    # predicted in exactly the batches they were before, so their maps are bit-identical.
    added = set(data.added_no_source)
    parts = [[i for i in data.test_clips if i not in added], [i for i in data.test_clips if i in added]]
    return Predictions.concatenate([
        predict(model, PreparedDataset(data.test_dir, config, train=False, ids=ids), batch_size=64,
                device=torch.device("cpu"), workers=LOADER_WORKERS, progress=progress, flow_fusion=flow_fusion)
        for ids in parts if ids
    ])


def method_metrics(predictions: Predictions, data: DemoData) -> dict[str, Any]:
    """The protocol's metrics plus the pick rate, overall and per subset of `SUBSETS`.

    Returns ``{n, ciou_at_0_5, auc, mean_ciou, pick_rate, peak_pick_rate, [ap, max_f1,]
    subsets: {name: {n, ciou_at_0_5, auc, mean_ciou, pick_rate, peak_pick_rate}}}``
    (`picks`: box means; `peak_picks`: where the peak lies); the ``twins``
    subset only when the test set has twin clips.
    """
    annotations = load_annotations(data.test_annotations)
    cious, results = score(predictions, annotations)
    records = [data.test_clips[sample_id] for sample_id in predictions.ids]
    picked = picks(predictions.similarity, records)
    has_source = ~np.isnan(cious)
    members = {
        "source_moves": np.array([source_moves(record) is True for record in records]),
        "source_still": np.array([source_moves(record) is False for record in records]),
        "twins": np.array([bool(record["twin"]) for record in records]),
    }
    metrics = {key: results[key] for key in ("n", "ciou_at_0_5", "auc", "mean_ciou")}
    peaks = peak_picks(predictions.similarity, records)
    metrics["pick_rate"] = _rate(picked)
    metrics["peak_pick_rate"] = _rate(peaks)
    metrics.update({key: results[key] for key in ("ap", "max_f1") if key in results})
    metrics["subsets"] = {}
    for name in SUBSETS:
        rows = members[name] & has_source
        if name == "twins" and not rows.any():
            continue
        subset = {"n": int(rows.sum())}
        subset.update({key: float(value) for key, value in summarize(cious[rows]).items()} if rows.any() else {})
        subset["pick_rate"] = _rate(picked[rows])
        subset["peak_pick_rate"] = _rate(peaks[rows])
        metrics["subsets"][name] = subset
    return metrics


def picks(similarity_maps: np.ndarray, records: list[dict[str, Any]], chunk: int = 64) -> np.ndarray:
    """Per clip: 1.0 when the map's mean inside the sounding object's box beats every silent object's, else 0.0.

    similarity_maps ``N x h x w`` are upsampled to 224 x 224 as the protocol does
    (`hearflow.metrics.upsample_maps`); boxes come from clips.json (normalised) and
    land on that grid as the VGG-SS ground truth does. NaN for clips with no visible
    sounding object or no silent object to beat. Returns float64 N.
    """
    result = np.full(len(records), np.nan)
    for start in range(0, len(records), chunk):
        grids = upsample_maps(similarity_maps[start : start + chunk])
        for offset, grid in enumerate(grids):
            record = records[start + offset]
            sounding = record["sounding"]
            if sounding is None or len(record["objects"]) < 2:
                continue
            means = [_box_mean(grid, obj["box"]) for obj in record["objects"]]
            result[start + offset] = float(all(means[sounding] > mean for i, mean in enumerate(means) if i != sounding))
    return result


def peak_picks(similarity_maps: np.ndarray, records: list[dict[str, Any]], chunk: int = 64) -> np.ndarray:
    """Per clip: 1.0 when the map's peak (on the 224 x 224 grid, as `picks`) lies inside the sounding
    object's box and inside no silent object's, else 0.0; NaN as `picks` (float64 N)."""
    result = np.full(len(records), np.nan)
    for start in range(0, len(records), chunk):
        for offset, grid in enumerate(upsample_maps(similarity_maps[start : start + chunk])):
            record = records[start + offset]
            if record["sounding"] is None or len(record["objects"]) < 2:
                continue
            y, x = np.unravel_index(int(np.argmax(grid)), grid.shape)
            inside = [_contains(obj["box"], x, y) for obj in record["objects"]]
            result[start + offset] = float(inside[record["sounding"]] and sum(inside) == 1)
    return result


def _contains(box: list[float], x: int, y: int) -> bool:
    x0, y0, x1, y1 = (int(MAP_SIZE * max(value, 0.0)) for value in box)
    return x0 <= x < x1 and y0 <= y < y1


def _box_mean(grid: np.ndarray, box: list[float]) -> float:
    x0, y0, x1, y1 = (int(MAP_SIZE * max(value, 0.0)) for value in box)
    return float(grid[y0:y1, x0:x1].mean())


def source_moves(record: dict[str, Any]) -> bool | None:
    sounding = record["sounding"]
    return None if sounding is None else bool(record["objects"][sounding]["moves"])


def _rate(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


@dataclass
class NegativeEvaluation:
    """One checkpoint's calibration record (`hearflow.calibrate.calibrate`), its ``negatives``
    section on the test set (`hearflow.negatives.negative_results`) and the maps it came from."""

    calibration: dict[str, Any]
    section: dict[str, dict]
    maps: NegativeMaps


def negative_evaluation(checkpoint: Path, predictions: Predictions, data: DemoData, progress: bool = True) -> NegativeEvaluation:
    """Calibrate ``checkpoint`` on the validation set (stored in the checkpoint, as `hearflow
    calibrate` does) and score its test ``predictions`` with `NEGATIVE_KINDS_SCORED` audio."""
    if data.validation_dir is None:
        raise HearflowError("negative evaluation needs the validation set (DemoSize.validation_clips)")
    calibration = calibrate(checkpoint, data.validation_dir, data.validation_annotations, batch_size=64,
                            workers=LOADER_WORKERS, device="cpu", progress=progress)
    model = load(checkpoint)
    annotated = AnnotatedSet(data.test_dir, data.test_annotations, model.config)
    cious, _ = score(predictions, annotated.annotations)
    maps = annotated.negative_maps(model, NEGATIVE_KINDS_SCORED, predictions, cious, batch_size=64,
                                   workers=LOADER_WORKERS, progress=progress)
    section = negative_results(maps.positive, maps.cious, maps.negatives, calibration["threshold"])
    return NegativeEvaluation(calibration, section, maps)
