"""`hearflow demo`: the whole method end to end on synthetic videos, on a CPU in minutes.

1. ``synth``: a training set and a test set of synthetic sounding-objects videos
   (`hearflow.synth`, different seeds, so no clip is in both);
2. ``prepare``: both sets through the real `hearflow prepare` stage (key frame,
   optical flow, audio window);
3. ``train``: HTF and the LVS baseline with the CPU presets ``demo-htf`` and
   ``demo-lvs`` (quarter-width ResNet-18 blocks, 64 x 64 inputs, 8 x 8 maps,
   nothing ImageNet-initialised, vision trained);
4. ``evaluate``: both checkpoints and three training-free baselines (`CENTER`, a
   centred box; `FLOW_ONLY`, the flow magnitude alone; `LATE_FUSION`, the LVS map
   times ``1 + alpha * flow magnitude``) with the evaluation's own ``predict`` and
   ``score``, overall and on the subsets of clips whose sounding object moves or
   stands still (and twin clips when the test set has them), plus the pick rate;
5. ``report``: ``OUT/report.json``, ``OUT/report.md`` and ``OUT/figure.png``; the
   checkpoints stay at ``OUT/runs/{htf,lvs}/last.pt`` for `hearflow evaluate` and
   `hearflow localize`.

The pick rate is the share of test clips whose map, upsampled to the protocol's
224 x 224 grid, has a higher mean inside the sounding object's box than inside the
box of every silent object: does the method point at the right object at all,
whatever the box overlap?
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from hearflow.config import Config, preset_config
from hearflow.errors import HearflowError
from hearflow.metrics import MAP_SIZE, summarize, upsample_maps

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
FIGURE_CLIPS = 6  # test clips in the figure: the first moving-source and still-source ones
FIGURE_CELL = 160  # pixels per figure cell


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
PRESETS = {HTF: "demo-htf", LVS: "demo-lvs"}


@dataclass
class DemoData:
    """A prepared training set and an annotated, prepared test set with its clips.json."""

    train_dir: Path
    test_dir: Path
    test_annotations: Path
    test_clips: dict[str, dict[str, Any]]
    train_count: int


def run_demo(
    out_dir: str | Path = "hearflow-demo",
    quick: bool = False,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo into ``out_dir``; prints the table and returns the report (report.json).

    quick: the small CI version (`SIZES`); seed: the training set is synthesised
    with ``2 * seed + 1``, the test set with ``2 * seed + 2``, and training uses
    ``seed``; workers: processes for synthesis and preparation.
    """
    if seed < 0 or workers < 1:
        raise HearflowError(f"--seed must be >= 0 and --workers >= 1, got {seed} and {workers}")
    start = time.monotonic()
    torch.set_num_threads(TORCH_THREADS)
    size = SIZES["quick" if quick else "default"]
    out = Path(out_dir)
    timings: dict[str, float] = {}

    clock = time.monotonic()
    configs = {
        name: preset_config(PRESETS[name], **{"train.seed": seed, "train.epochs": size.epochs, "train.workers": LOADER_WORKERS})
        for name in (HTF, LVS)
    }
    data = make_data(out, size.train_clips, size.test_clips, seed, configs[LVS], workers=workers, progress=progress)
    timings["synth + prepare"] = time.monotonic() - clock

    checkpoints = {}
    for name in (HTF, LVS):
        clock = time.monotonic()
        checkpoints[name] = train_model(configs[name], data.train_dir, out / "runs" / name, progress)
        timings[f"train {name}"] = time.monotonic() - clock

    clock = time.monotonic()
    maps = predict_methods(checkpoints, data, progress=progress)
    methods = {name: method_metrics(maps[name], data) for name in METHODS}
    timings["evaluate"] = time.monotonic() - clock

    report = {
        "methods": methods,
        "train_clips": data.train_count,
        "test_clips": len(data.test_clips),
        "seconds": round(time.monotonic() - start, 1),
        "seed": seed,
    }
    _write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_figure(out / "figure.png", data, maps)
    _write_text(out / "report.md", report_markdown(report, timings, checkpoints, quick, out, next(iter(data.test_clips))))
    print(format_table(methods))
    print(f"report: {out / 'report.md'} ({report['seconds']:.0f} s)")
    return report


@dataclass(frozen=True)
class StudyRow:
    """One row of the flow-prior study: a trained preset with overrides, or a training-free method."""

    name: str
    description: str
    preset: str | None = None  # trained rows: the preset and its overrides
    overrides: tuple[tuple[str, Any], ...] = ()
    method: str | None = None  # training-free rows: a method of `METHODS` computed in the lvs row's run
    pretrain: bool = False  # start from the seed's synthetic classifier (`hearflow.pretrain`), Table 4's ImageNet


STUDY_SEEDS = (0, 1, 2)
STUDY_SETTINGS = {
    # The demo's benchmark, unchanged; then a harder one: a third of the clips have a
    # silent twin of the sounding object (only motion tells them apart) and 32 classes.
    "default": {},
    "hard": {"twins": 0.3, "classes": 32},
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
)


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
    _write_text(out / "study.json", json.dumps(summary, indent=2) + "\n")
    _write_text(out / "study.md", study_markdown(summary))
    print(study_markdown(summary))
    return summary


def _study_seed(out: Path, setting: str, seed: int, rows: list[StudyRow], size: DemoSize, workers: int, progress: bool) -> None:
    """Train and score every row still missing for one (setting, seed)."""
    def result_path(row):
        return out / "rows" / row.name / f"seed{seed}.json"

    missing = [row for row in rows if not result_path(row).is_file()]
    if not missing:
        return
    lvs_config = _study_config(STUDY_ROWS[0], seed, size)
    data_dir = out / f"data-seed{seed}"
    data = make_data(data_dir, size.train_clips, size.test_clips, seed, lvs_config, workers=workers,
                     progress=progress, **STUDY_SETTINGS[setting])
    lvs_checkpoint = data_dir / "runs" / "lvs" / "last.pt"
    for row in missing:
        clock = time.monotonic()
        if row.method is None:
            config = _study_config(row, seed, size)
            if row.pretrain:
                from hearflow.pretrain import make_pretrained_weights
                from hearflow.synth import SynthSettings

                classes = STUDY_SETTINGS[setting].get("classes", SynthSettings().classes)
                weights = make_pretrained_weights(data_dir / "vision-classifier.pt", config, classes, seed,
                                                  progress=progress)
                config.model.pretrained_weights = str(weights)
            run_dir = data_dir / "runs" / row.name
            checkpoint = run_dir / "last.pt"
            if not checkpoint.is_file():
                train_model(config, data.train_dir, run_dir, progress, pretrained=row.pretrain)
            predictions = predict_model(_load(checkpoint), data, config, progress)
        else:
            if not lvs_checkpoint.is_file():
                train_model(lvs_config, data.train_dir, lvs_checkpoint.parent, progress)
            model = {CENTER: lambda: _center(lvs_config), FLOW_ONLY: lambda: _flow_only(lvs_config),
                     LATE_FUSION: lambda: _fused(lvs_checkpoint)}[row.method]()
            predictions = predict_model(model, data, lvs_config, progress)
        metrics = method_metrics(predictions, data)
        metrics["seconds"] = round(time.monotonic() - clock, 1)
        _write_text(result_path(row), json.dumps(metrics, indent=2) + "\n")


def _study_config(row: StudyRow, seed: int, size: DemoSize) -> Config:
    fields = {"train.seed": seed, "train.epochs": size.epochs, "train.workers": LOADER_WORKERS, **dict(row.overrides)}
    return preset_config(row.preset, **fields)


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
    for key in ("mean_ciou", "pick_rate", "ciou_at_0_5"):
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
        lines.append("| row | seeds | mean cIoU | vs lvs | pick rate | cIoU@0.5 | twins: mean cIoU / pick "
                     "| moving source: mean cIoU / pick |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for row in STUDY_ROWS:
            entry = summary.get(setting, {}).get(row.name)
            if entry is None:
                lines.append(f"| {row.name}: {row.description} | not run | | | | | | |")
                continue
            single = len(entry["seeds"]) == 1
            versus = _pm(entry["vs_lvs"], single, "+.3f") if "vs_lvs" in entry else "-"
            cells = [_pm(entry["mean_ciou"], single), versus, _pm(entry["pick_rate"], single),
                     _pm(entry["ciou_at_0_5"], single)]
            for subset in ("twins", "source_moves"):
                part = entry.get(subset)
                cells.append(f"{_pm(part['mean_ciou'], single)} / {_pm(part['pick_rate'], single)}" if part else "-")
            seeds = ",".join(map(str, entry["seeds"]))
            lines.append(f"| {row.name}: {row.description} | {seeds} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _pm(pair: list[float], single: bool = False, form: str = ".3f") -> str:
    return f"{pair[0]:{form}}" if single else f"{pair[0]:{form}} ± {pair[1]:.3f}"


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
    `hearflow.synth.SynthSettings` fields, the same for both sets.
    """
    from hearflow.prepare import prepare
    from hearflow.synth import synthesize

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
    import dataclasses

    from hearflow.synth import SynthSettings

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
    from hearflow.train import train

    train(config, train_dir, run_dir, pretrained=pretrained, progress=progress)
    return run_dir / "last.pt"


def predict_methods(
    checkpoints: dict[str, Path], data: DemoData, progress: bool = True
) -> dict[str, Any]:
    """`hearflow.evaluate.Predictions` on the test set for every method of `METHODS`."""
    trained = {name: _load(path) for name, path in checkpoints.items()}
    config = trained[LVS].config
    models = {
        **trained,
        CENTER: _center(config),
        FLOW_ONLY: _flow_only(config),
        LATE_FUSION: _fused(checkpoints[LVS]),
    }
    return {
        name: predict_model(model, data, getattr(model, "config", config), progress)
        for name, model in models.items()
    }


def _load(checkpoint: Path) -> torch.nn.Module:
    from hearflow.checkpoint import load

    return load(checkpoint)


def _fused(checkpoint: Path) -> torch.nn.Module:
    """The checkpoint with late fusion switched on (``model.flow_fusion = LATE_FUSION_ALPHA``)."""
    model = _load(checkpoint)
    model.config.model.flow_fusion = LATE_FUSION_ALPHA
    return model


def _map_size(config: Config) -> int:
    return config.data.image_size // config.model.map_stride


def _center(config: Config) -> torch.nn.Module:
    from hearflow.baselines import CenterBox

    return CenterBox(_map_size(config))


def _flow_only(config: Config) -> torch.nn.Module:
    from hearflow.baselines import FlowMagnitude

    return FlowMagnitude(_map_size(config))


def predict_model(model: torch.nn.Module, data: DemoData, config: Config, progress: bool = True):
    """The evaluation's `predict` over the test set, inputs made with ``config.data``."""
    from hearflow.data.dataset import PreparedDataset
    from hearflow.evaluate import predict

    dataset = PreparedDataset(data.test_dir, config, train=False, ids=list(data.test_clips))
    return predict(model, dataset, batch_size=64, device=torch.device("cpu"), workers=LOADER_WORKERS, progress=progress)


def method_metrics(predictions, data: DemoData) -> dict[str, Any]:
    """The protocol's metrics plus the pick rate, overall and per subset of `SUBSETS`.

    Returns ``{n, ciou_at_0_5, auc, mean_ciou, pick_rate, [ap, max_f1,]
    subsets: {name: {n, ciou_at_0_5, auc, mean_ciou, pick_rate}}}``; the ``twins``
    subset only when the test set has twin clips.
    """
    from hearflow.data.annotations import load_annotations
    from hearflow.evaluate import score

    annotations = load_annotations(data.test_annotations)
    cious, results = score(predictions, annotations)
    records = [data.test_clips[sample_id] for sample_id in predictions.ids]
    picked = picks(predictions.similarity, records)
    has_source = ~np.isnan(cious)
    members = {
        "source_moves": np.array([_source_moves(record) is True for record in records]),
        "source_still": np.array([_source_moves(record) is False for record in records]),
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


def _source_moves(record: dict[str, Any]) -> bool | None:
    sounding = record["sounding"]
    return None if sounding is None else bool(record["objects"][sounding]["moves"])


def _rate(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def format_table(methods: dict[str, dict[str, Any]]) -> str:
    """The printed table: one row per method, overall metrics and the subsets' mean cIoU / pick rate."""
    header = f"{'method':<30} {'cIoU@0.5':>8} {'AUC':>6} {'mean cIoU':>9} {'pick':>6} {'moving':>13} {'still':>13}"
    lines = [header, "-" * len(header)]
    for name, metrics in methods.items():
        cells = [f"{metrics['ciou_at_0_5']:>8.3f}", f"{metrics['auc']:>6.3f}", f"{metrics['mean_ciou']:>9.3f}",
                 f"{_number(metrics['pick_rate']):>6}"]
        for subset in ("source_moves", "source_still"):
            values = metrics["subsets"].get(subset, {})
            cells.append(f"{_number(values.get('mean_ciou')):>6}/{_number(values.get('pick_rate')):>6}")
        lines.append(f"{METHOD_LABELS.get(name, name):<30} " + " ".join(cells))
    lines.append("moving / still: mean cIoU / pick rate on clips whose sounding object moves / stands still")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def report_markdown(
    report: dict[str, Any],
    timings: dict[str, float],
    checkpoints: dict[str, Path],
    quick: bool,
    out: Path,
    example_id: str,
) -> str:
    """report.md: what ran, the table (overall and per subset), the figure, how to reuse the checkpoints."""
    command = f"hearflow demo --out {out}{' --quick' if quick else ''} --seed {report['seed']}"
    lines = [
        "# hearflow demo",
        "",
        f"`{command}`: {report['train_clips']} synthetic training clips, {report['test_clips']} test clips, "
        f"{report['seconds']:.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}).",
        "",
        "| method | cIoU@0.5 | AUC | mean cIoU | pick rate |",
        "|---|---|---|---|---|",
    ]
    for name, metrics in report["methods"].items():
        lines.append(
            f"| {METHOD_LABELS[name]} | {metrics['ciou_at_0_5']:.3f} | {metrics['auc']:.3f} | "
            f"{metrics['mean_ciou']:.3f} | {_number(metrics['pick_rate'])} |"
        )
    subsets = [name for name in SUBSETS if any(name in m["subsets"] for m in report["methods"].values())]
    lines += ["", "Per subset (mean cIoU / pick rate; n = clips):", ""]
    counts = {name: next(m["subsets"][name]["n"] for m in report["methods"].values() if name in m["subsets"]) for name in subsets}
    lines.append("| method | " + " | ".join(f"{name} (n={counts[name]})" for name in subsets) + " |")
    lines.append("|---|" + "---|" * len(subsets))
    for name, metrics in report["methods"].items():
        cells = []
        for subset in subsets:
            values = metrics["subsets"].get(subset, {})
            cells.append(f"{_number(values.get('mean_ciou'))} / {_number(values.get('pick_rate'))}")
        lines.append(f"| {METHOD_LABELS[name]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The pick rate is the share of clips whose map is higher, on average, inside the sounding "
        "object's box than inside every silent object's box.",
        "",
        "![test clips: frame with the sounding object's box, optical flow, LVS and HTF heatmaps](figure.png)",
        "",
        "Figure: the first test clips whose sounding object moves, then the first whose sounding "
        "object stands still (not chosen by score). Rows: key frame with the ground-truth box, "
        "optical flow (hue = direction, brightness = speed), LVS heatmap, HTF heatmap.",
        "",
        "Checkpoints (usable as they are):",
        "",
        "```bash",
        f"hearflow evaluate --checkpoint {checkpoints[HTF]} --data {out / 'prepared' / 'test'} "
        f"--annotations {out / 'synth' / 'test' / 'annotations.json'}",
        f"hearflow evaluate --checkpoint {checkpoints[LVS]} --flow-fusion {LATE_FUSION_ALPHA} "
        f"--data {out / 'prepared' / 'test'} --annotations {out / 'synth' / 'test' / 'annotations.json'}",
        f"hearflow localize {out / 'synth' / 'test' / 'videos'}/{example_id}.mp4 "
        f"--checkpoint {checkpoints[HTF]} --out {out / 'localize'}",
        "```",
        "",
    ]
    return "\n".join(lines)


def flow_colors(flow: np.ndarray) -> np.ndarray:
    """Colour a flow field ``H x W x 2`` (dx, dy pixels): hue = direction, brightness = speed.

    Brightness is scaled by the field's own largest speed (a still field is black).
    Returns RGB uint8 H x W x 3.
    """
    dx, dy = flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32)
    magnitude, angle = cv2.cartToPolar(dx, dy, angleInDegrees=True)
    peak = float(magnitude.max())
    hsv = np.zeros((*flow.shape[:2], 3), np.uint8)
    hsv[..., 0] = (angle / 2).astype(np.uint8)  # OpenCV hue is 0..179
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(magnitude / peak * 255, 0, 255).astype(np.uint8) if peak > 0 else 0
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def figure_ids(test_clips: dict[str, dict[str, Any]], count: int = FIGURE_CLIPS) -> list[str]:
    """The first ``count - count // 3`` moving-source clips, then the first still-source ones."""
    moving = [i for i, record in test_clips.items() if _source_moves(record) is True]
    still = [i for i, record in test_clips.items() if _source_moves(record) is False]
    take_still = min(len(still), count // 3)
    return moving[: count - take_still] + still[:take_still]


def write_figure(path: Path, data: DemoData, maps: dict[str, Any]) -> None:
    """The figure (like the paper's Figure 3): one column per clip; rows frame + box, flow, LVS, HTF."""
    from hearflow.data.prepared import PreparedFolder
    from hearflow.overlay import draw_box, overlay_heatmap

    folder = PreparedFolder(data.test_dir)
    rows = {name: dict(zip(maps[name].ids, maps[name].similarity)) for name in (LVS, HTF)}
    columns = []
    for sample_id in figure_ids(data.test_clips):
        record = data.test_clips[sample_id]
        sample = folder.read(sample_id)
        frame = cv2.resize(sample.frame, (FIGURE_CELL, FIGURE_CELL), interpolation=cv2.INTER_AREA)
        box = [v * FIGURE_CELL for v in record["objects"][record["sounding"]]["box"]]
        cells = [draw_box(frame, box), cv2.resize(flow_colors(sample.flow), (FIGURE_CELL, FIGURE_CELL))]
        for name in (LVS, HTF):
            heatmap = _normalised(rows[name][sample_id], FIGURE_CELL)
            cells.append(draw_box(overlay_heatmap(frame, heatmap), box))
        title = _label(f"{'moving' if _source_moves(record) else 'still'} source", FIGURE_CELL)
        columns.append(np.concatenate([title, *cells], axis=0))
    names = ["", "frame + box", "flow", "LVS", "HTF"]
    heights = [columns[0].shape[0] - 4 * FIGURE_CELL] + [FIGURE_CELL] * 4
    legend = np.concatenate([_label(name, 110, height) for name, height in zip(names, heights)], axis=0)
    image = np.concatenate([legend, *columns], axis=1)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise HearflowError(f"cannot encode the figure {path}")
    _write_bytes(path, encoded.tobytes())


def _normalised(similarity: np.ndarray, size: int) -> np.ndarray:
    """The map as the metric sees it (bicubic upsampling, min-max to [0, 1]) at ``size`` pixels."""
    resized = upsample_maps(similarity[None], size)[0]
    low, high = float(resized.min()), float(resized.max())
    return (resized - low) / (high - low) if high > low else np.zeros_like(resized)


def _label(text: str, width: int, height: int = 24) -> np.ndarray:
    strip = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (4, height // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def _write_text(path: Path, text: str) -> None:
    _write_bytes(path, text.encode())


def _write_bytes(path: Path, data: bytes) -> None:
    from hearflow.data.prepared import write_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    except OSError as error:
        raise HearflowError(f"cannot write {path}: {error}") from error
