"""What the demo and the study share: data, training, scoring and the training-free methods.

- `make_data`: a synthetic training set and an annotated test set, through the real
  `hearflow prepare` stage (different seeds, so no clip is in both);
- `train_model`: the real `hearflow train` stage, without validation (nothing is
  chosen on the test set);
- `predict_method` / `method_metrics`: a trained checkpoint or a training-free method
  (`CENTER`, a centred box; `FLOW_ONLY`, the flow magnitude alone; `LATE_FUSION`,
  the LVS map times ``1 + alpha * flow magnitude``) scored with `hearflow.scoring`,
  overall and on the subsets of clips whose sounding object moves or stands still
  (and twin clips when the test set has them), plus the pick rate.

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

from hearflow.checkpoint import load
from hearflow.config import Config
from hearflow.data.annotations import load_annotations
from hearflow.data.dataset import PreparedDataset
from hearflow.metrics import MAP_SIZE, summarize, upsample_maps
from hearflow.prepare import prepare
from hearflow.scoring import Predictions, predict, score
from hearflow.synthetic.baselines import CenterBox, FlowMagnitude
from hearflow.synthetic.clips import synthesize
from hearflow.synthetic.plan import SynthSettings
from hearflow.train import train

HTF, LVS = "htf", "lvs"


CENTER, FLOW_ONLY, LATE_FUSION = "center", "flow_only", "lvs_flow_fusion"


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
TRAINING_FREE = (CENTER, FLOW_ONLY, LATE_FUSION)


@dataclass(frozen=True)
class DemoSize:
    """How much data and training one demo run uses."""

    train_clips: int
    test_clips: int
    epochs: int


SIZES = {
    "default": DemoSize(train_clips=1200, test_clips=300, epochs=8),
    "quick": DemoSize(train_clips=600, test_clips=100, epochs=8),
}


# The demo's models are tiny: one torch thread per process, and data loaded in the
# training process, beat two threads plus loader workers on a 2-core machine (about
# 4x under load from other processes, where two threads spin against each other).
TORCH_THREADS = 1


LOADER_WORKERS = 0


@dataclass
class DemoData:
    """A prepared training set and an annotated, prepared test set with its clips.json."""

    train_dir: Path
    test_dir: Path
    test_annotations: Path
    test_clips: dict[str, dict[str, Any]]
    train_count: int


def make_data(
    out: Path,
    train_clips: int,
    test_clips: int,
    seed: int,
    config: Config,
    workers: int = 2,
    progress: bool = True,
    **synth_knobs: Any,
) -> DemoData:
    """Synthesise and prepare ``OUT/{synth,prepared}/{train,test}`` (seeds ``2 seed + 1``, ``2 seed + 2``).

    config: its ``data`` section is the preparation recipe (audio rate, flow size);
    every model trained on the folders must share it. synth_knobs:
    `hearflow.synthetic.plan.SynthSettings` fields, the same for both sets.
    """
    folders = {}
    for part, clips, synth_seed in (("train", train_clips, 2 * seed + 1), ("test", test_clips, 2 * seed + 2)):
        synth_dir, prepared_dir = out / "synth" / part, out / "prepared" / part
        if not _synthesized(synth_dir, clips, synth_seed, synth_knobs):
            synthesize(synth_dir, clips, synth_seed, workers=workers, progress=progress, **synth_knobs)
        prepare(synth_dir / "videos", prepared_dir, config.data, workers=workers, progress=progress)
        folders[part] = (synth_dir, prepared_dir)
    test_synth = folders["test"][0]
    records = json.loads((test_synth / "clips.json").read_text())
    return DemoData(
        train_dir=folders["train"][1],
        test_dir=folders["test"][1],
        test_annotations=test_synth / "annotations.json",
        test_clips={record["id"]: record for record in records},
        train_count=train_clips,
    )


def _synthesized(synth_dir: Path, clips: int, seed: int, knobs: dict[str, Any]) -> bool:
    """Whether ``synth_dir`` already holds exactly this synthetic set (a rerun then skips it)."""
    try:
        made = json.loads((synth_dir / "synth.json").read_text())
    except (OSError, ValueError):
        return False
    wanted = {"seed": seed, "clips": clips, "settings": dataclasses.asdict(SynthSettings(**knobs))}
    return made == wanted and (synth_dir / "clips.json").is_file()


def train_model(config: Config, train_dir: Path, run_dir: Path, progress: bool = True, pretrained: bool = False) -> Path:
    """Train with `hearflow.train.train` (no validation set: nothing is chosen on the test set).

    pretrained: start the encoders the config names from ``model.pretrained_weights``.
    Returns the final checkpoint, ``run_dir/last.pt``.
    """
    train(config, train_dir, run_dir, pretrained=pretrained, progress=progress)
    return run_dir / "last.pt"


def predict_method(
    method: str, checkpoint: Path, data: DemoData, config: Config, progress: bool = True
) -> Predictions:
    """`Predictions` on the test set of a trained ``checkpoint`` (``method`` HTF, LVS or any
    other trained name) or of a training-free method of `TRAINING_FREE` (late fusion
    uses ``checkpoint``, the LVS one; the others only ``config``'s map size)."""
    map_size = config.data.image_size // config.model.map_stride
    flow_fusion = 0.0
    if method == CENTER:
        model = CenterBox(map_size)
    elif method == FLOW_ONLY:
        model = FlowMagnitude(map_size)
    else:
        model = load(checkpoint)
        flow_fusion = LATE_FUSION_ALPHA if method == LATE_FUSION else 0.0
    dataset = PreparedDataset(data.test_dir, config, train=False, ids=list(data.test_clips))
    return predict(model, dataset, batch_size=64, device=torch.device("cpu"), workers=LOADER_WORKERS,
                   progress=progress, flow_fusion=flow_fusion)


def method_metrics(predictions: Predictions, data: DemoData) -> dict[str, Any]:
    """The protocol's metrics plus the pick rate, overall and per subset of `SUBSETS`.

    Returns ``{n, ciou_at_0_5, auc, mean_ciou, pick_rate, [ap, max_f1,]
    subsets: {name: {n, ciou_at_0_5, auc, mean_ciou, pick_rate}}}``; the ``twins``
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
    metrics["pick_rate"] = _rate(picked)
    metrics.update({key: results[key] for key in ("ap", "max_f1") if key in results})
    metrics["subsets"] = {}
    for name in SUBSETS:
        rows = members[name] & has_source
        if name == "twins" and not rows.any():
            continue
        subset = {"n": int(rows.sum())}
        subset.update({key: float(value) for key, value in summarize(cious[rows]).items()} if rows.any() else {})
        subset["pick_rate"] = _rate(picked[rows])
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


def _box_mean(grid: np.ndarray, box: list[float]) -> float:
    x0, y0, x1, y1 = (int(MAP_SIZE * max(value, 0.0)) for value in box)
    return float(grid[y0:y1, x0:x1].mean())


def source_moves(record: dict[str, Any]) -> bool | None:
    sounding = record["sounding"]
    return None if sounding is None else bool(record["objects"][sounding]["moves"])


def _rate(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None
