"""The flow-prior study: every row on the same synthetic data per seed, resumable.

Each (setting, seed) synthesises and prepares its data once (the demo's sizes and
seeds) and trains every trained row on it; training-free rows reuse a trained row's
checkpoint (``StudyRow.base``, the lvs row's by default). The rows are the flow-prior
ones and the method axis (`hearflow.synthetic.methods`: EZ-VSL, FNAC, SLAVC, OGL). Every trained row is ``demo-lvs`` (the demo's CPU model without a prior)
plus its own fields, so a row means the same whatever the demo's HTF configuration
is. Results, what was run and what it says: ``docs/flow-prior-study.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hearflow.config import Config
from hearflow.errors import HearflowError
from hearflow.io import write_json, write_text
from hearflow.synthetic.lab import (
    CENTER,
    FLOW_ONLY,
    LATE_FUSION,
    LOADER_WORKERS,
    SIZES,
    TORCH_THREADS,
    DemoSize,
    make_data,
    method_metrics,
    predict_method,
    train_model,
)
from hearflow.synthetic.methods import StudyRow, method_rows
from hearflow.synthetic.plan import SynthSettings
from hearflow.synthetic.presets import demo_config
from hearflow.synthetic.pretrain import make_pretrained_weights

STUDY_SEEDS = (0, 1, 2)


STUDY_SETTINGS = {
    # The demo's benchmark, unchanged; then a harder one: a third of the clips have a
    # silent twin of the sounding object (only motion tells them apart) and 32 classes.
    "default": {},
    "hard": {"twins": 0.3, "classes": 32},
    # A second distribution: small objects (a tenth of the frame's area: 0.55 x the default
    # size) anywhere in the frame (the free layout), of 32 classes (16 shapes x hues x
    # textures and sounds the default never shows, frequencies re-spaced).
    "small": {"layout": "free", "object_scale": 0.55, "classes": 32},
}


# Every trained row is demo-lvs (the demo's CPU model without a prior) plus its own
# fields, so a row means the same whatever the demo's HTF preset is.
_CHANNEL = (("model.prior", "channel"),)


_SPATIAL = (("model.prior", "spatial"),)


_MAXPOOL = (("model.flow_encoder", "maxpool"),)


_RESNET18 = (("model.flow_encoder", "resnet18"),)


_GATE = (("model.prior_gate", True),)


_PRETRAINED_FLOW = _CHANNEL + _RESNET18 + (("model.vision_pretrained", True), ("model.flow_pretrained", True),
                                           ("model.flow_conv1_init", "rgb-mean"))


_FROZEN = (("model.vision_frozen", True),)


STUDY_ROWS = (
    StudyRow("lvs", "no flow prior (Table 4 a)", "demo-lvs"),
    StudyRow("channel-maxpool", "channel prior, max-pool flow encoder (Table 5 a)", "demo-lvs", _CHANNEL + _MAXPOOL),
    StudyRow("late-fusion", "LVS map x (1 + flow magnitude), no training", method=LATE_FUSION),
    StudyRow("flow-only", "flow magnitude alone, no training", method=FLOW_ONLY),
    StudyRow("center", "centre box, no training", method=CENTER),
    StudyRow("channel-resnet18", "channel prior, ResNet-18 flow encoder (Table 4 d, 5 b)", "demo-lvs",
             _CHANNEL + _RESNET18),
    # Eq. 2's global average pooling of the audio map against the released max pool (every
    # other row): docs/released-recipe.md.
    StudyRow("lvs-avg-audio", "no flow prior, audio map average-pooled (Eq. 2)", "demo-lvs",
             (("model.audio_pool", "avg"),)),
    StudyRow("spatial-resnet18", "spatial prior (released code), ResNet-18 flow encoder", "demo-lvs",
             _SPATIAL + _RESNET18),
    StudyRow("spatial-resnet18-gated", "spatial prior with the gate (gamma = 0 at start; `demo-htf`)", "demo-lvs",
             _SPATIAL + _RESNET18 + _GATE),
    StudyRow("channel-maxpool-gated", "channel prior, max-pool, with the gate", "demo-lvs",
             _CHANNEL + _MAXPOOL + _GATE),
    # Table 4's pre-trained rows: vision (and the ResNet-18 flow trunk) from a classifier
    # pre-trained on single-object images of other classes; rgb-mean vs random flow conv1.
    StudyRow("lvs-pretrained", "no flow prior, vision pre-trained (Table 4 b)", "demo-lvs",
             (("model.vision_pretrained", True),), pretrain=True),
    StudyRow("lvs-frozen", "no flow prior, vision pre-trained and frozen (Table 4 c)", "demo-lvs",
             (("model.vision_pretrained", True),) + _FROZEN, pretrain=True),
    StudyRow("channel-resnet18-pretrained", "channel prior, ResNet-18 flow, pre-trained (Table 4 e)", "demo-lvs",
             _PRETRAINED_FLOW, pretrain=True),
    StudyRow("channel-resnet18-frozen", "channel prior, ResNet-18 flow, pre-trained, vision frozen (Table 4 f)",
             "demo-lvs", _PRETRAINED_FLOW + _FROZEN, pretrain=True),
    StudyRow("channel-resnet18-frozen-random-conv1", "as Table 4 f with a random flow conv1 instead of rgb-mean",
             "demo-lvs", _PRETRAINED_FLOW + _FROZEN + (("model.flow_conv1_init", "random"),), pretrain=True),
    *method_rows(),  # the method axis: EZ-VSL, FNAC, SLAVC (and OGL of LVS and HTF), `synthetic.methods`
)
_ROWS = {row.name: row for row in STUDY_ROWS}


def run_study(
    out_dir: str | Path = "hearflow-study",
    rows: list[str] | None = None,
    seeds: tuple[int, ...] = STUDY_SEEDS,
    settings: list[str] | None = None,
    quick: bool = False,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """The flow-prior study: every row of `STUDY_ROWS` on every seed and setting.

    Each (setting, seed) synthesises and prepares its data once (the demo's sizes and
    seeds) and trains every trained row on it; training-free rows reuse the lvs
    row's checkpoint. A finished (setting, row, seed) is stored in
    ``OUT/{setting}/rows/{row}/seed{seed}.json`` and not redone, so the study can be
    stopped and resumed. Writes ``OUT/study.json`` and ``OUT/study.md`` (mean and
    spread over seeds; rows not run are listed as not run) and returns the summary.
    """
    chosen = [row for row in STUDY_ROWS if rows is None or row.name in rows]
    unknown = sorted(set(rows or ()) - {row.name for row in STUDY_ROWS})
    bad_settings = sorted(set(settings or ()) - set(STUDY_SETTINGS))
    if unknown or bad_settings:
        raise HearflowError(
            f"unknown study row(s) {unknown} or setting(s) {bad_settings}; rows: "
            f"{', '.join(row.name for row in STUDY_ROWS)}; settings: {', '.join(STUDY_SETTINGS)}"
        )
    torch.set_num_threads(TORCH_THREADS)
    size = SIZES["quick" if quick else "default"]
    out = Path(out_dir)
    for setting in settings or list(STUDY_SETTINGS):
        for seed in seeds:
            _study_seed(out / setting, setting, seed, chosen, size, workers, progress)
    summary = study_summary(out)
    write_json(out / "study.json", summary)
    write_text(out / "study.md", study_markdown(summary))
    print(study_markdown(summary))
    return summary


def _study_seed(out: Path, setting: str, seed: int, rows: list[StudyRow], size: DemoSize, workers: int, progress: bool) -> None:
    """Train and score every row still missing for one (setting, seed); a training-free row
    runs on its base row's checkpoint (trained first when missing)."""
    def result_path(row):
        return out / "rows" / row.name / f"seed{seed}.json"

    missing = [row for row in rows if not result_path(row).is_file()]
    if not missing:
        return
    lvs_config = _study_config(STUDY_ROWS[0], seed, size)
    data_dir = out / f"data-seed{seed}"
    data = make_data(data_dir, size.train_clips, size.test_clips, seed, lvs_config, workers=workers,
                     progress=progress, **STUDY_SETTINGS[setting])
    classes = STUDY_SETTINGS[setting].get("classes", SynthSettings().classes)
    for row in missing:
        clock = time.monotonic()
        trained = row if row.method is None else _ROWS[row.base or STUDY_ROWS[0].name]
        config = _study_config(trained, seed, size)
        weights = None
        if row.pretrain:  # the seed's synthetic classifier: Table 4's ImageNet, and OGL's saliency trunk
            weights = make_pretrained_weights(data_dir / "vision-classifier.pt", _study_config(STUDY_ROWS[0], seed, size),
                                              classes, seed, progress=progress)
        if trained.pretrain:
            config.model.pretrained_weights = str(weights)
        checkpoint = data_dir / "runs" / trained.name / "last.pt"
        if trained.method is None and not checkpoint.is_file():
            train_model(config, data.train_dir, checkpoint.parent, progress, pretrained=trained.pretrain)
        predictions = predict_method(row.method or row.name, checkpoint, data, config, progress, object_weights=weights)
        metrics = method_metrics(predictions, data)
        metrics["seconds"] = round(time.monotonic() - clock, 1)
        write_json(result_path(row), metrics)


def _study_config(row: StudyRow, seed: int, size: DemoSize) -> Config:
    fields = {"train.seed": seed, "train.epochs": size.epochs, "train.workers": LOADER_WORKERS, **dict(row.overrides)}
    return demo_config(row.preset, **fields)


def study_summary(out: Path) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every stored (setting, row) result.

    ``{setting: {row: {"seeds": [...], "mean_ciou": [mean, std], "pick_rate": [...],
    "ciou_at_0_5": [...], "vs_lvs": [mean, std], "twins": {...}, "source_moves": {...}}}}``;
    ``vs_lvs`` is the row's mean cIoU minus the lvs row's on the same seed, over the
    seeds both have (absent when they share none); rows with no stored seed are absent.
    """
    summary: dict[str, Any] = {}
    for setting in STUDY_SETTINGS:
        per_seed_lvs = {}
        for row in STUDY_ROWS:
            files = sorted((out / setting / "rows" / row.name).glob("seed*.json"))
            if not files:
                continue
            results = [json.loads(path.read_text()) for path in files]
            seeds = [int(path.stem[4:]) for path in files]
            entry = {"seeds": seeds}
            entry.update(_spread(results))
            if row.name == STUDY_ROWS[0].name:
                per_seed_lvs = {seed: result["mean_ciou"] for seed, result in zip(seeds, results)}
            gaps = [result["mean_ciou"] - per_seed_lvs[seed] for seed, result in zip(seeds, results) if seed in per_seed_lvs]
            if gaps:
                entry["vs_lvs"] = [round(float(np.mean(gaps)), 4), round(float(np.std(gaps)), 4)]
            for subset in ("twins", "source_moves"):
                parts = [result["subsets"][subset] for result in results if subset in result["subsets"]]
                if len(parts) == len(results):
                    entry[subset] = _spread(parts)
            summary.setdefault(setting, {})[row.name] = entry
    return summary


def _spread(results: list[dict[str, Any]]) -> dict[str, list[float]]:
    spread = {}
    for key in ("mean_ciou", "pick_rate", "peak_pick_rate", "ciou_at_0_5", "seconds"):
        if any(key not in result for result in results):
            continue
        values = np.array([result[key] for result in results], dtype=np.float64)
        spread[key] = [round(float(values.mean()), 4), round(float(values.std()), 4)]
    return spread


def study_markdown(summary: dict[str, Any]) -> str:
    """The study's table per setting: mean +- std over seeds; rows not run say so.

    "vs lvs" is the row's mean cIoU minus the lvs row's, seed by seed (same setting and
    data), averaged over the seeds both rows have. With one seed there is no spread.
    """
    lines = []
    for setting, knobs in STUDY_SETTINGS.items():
        lines += [f"Setting `{setting}` (synth knobs {knobs or 'defaults'}):", ""]
        lines.append("| row | seeds | mean cIoU | vs lvs | pick rate | peak pick | cIoU@0.5 | twins: mean cIoU / pick "
                     "| moving source: mean cIoU / pick | s / run |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for row in STUDY_ROWS:
            entry = summary.get(setting, {}).get(row.name)
            if entry is None:
                lines.append(f"| {row.name}: {row.description} | not run | | | | | | | | |")
                continue
            single = len(entry["seeds"]) == 1
            versus = _pm(entry["vs_lvs"], single, "+.3f") if "vs_lvs" in entry else "-"
            peak = _pm(entry["peak_pick_rate"], single) if "peak_pick_rate" in entry else "-"
            cells = [_pm(entry["mean_ciou"], single), versus, _pm(entry["pick_rate"], single), peak,
                     _pm(entry["ciou_at_0_5"], single)]
            for subset in ("twins", "source_moves"):
                part = entry.get(subset)
                cells.append(f"{_pm(part['mean_ciou'], single)} / {_pm(part['pick_rate'], single)}" if part else "-")
            cells.append(_pm(entry["seconds"], single, ".0f") if "seconds" in entry else "-")
            seeds = ",".join(map(str, entry["seeds"]))
            lines.append(f"| {row.name}: {row.description} | {seeds} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _pm(pair: list[float], single: bool = False, form: str = ".3f") -> str:
    return f"{pair[0]:{form}}" if single else f"{pair[0]:{form}} ± {pair[1]:.3f}"
