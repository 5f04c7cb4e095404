"""The negative-audio study: LVS and HTF trained with and without negative audio, on the demo's benchmark.

Each seed synthesises and prepares the demo's data once (`lab.make_data` with the
demo's sizes: 1,200 training clips; 300 test clips plus 60 without a visible source;
a 100-clip validation set) and trains every row of `NEGATIVES_ROWS` on it. Every
trained checkpoint is calibrated on the validation set (`hearflow calibrate`) and
scored on the test set: the positives' protocol metrics (`lab.method_metrics`) and the
negative-audio section (`hearflow.negatives.negative_results`). A finished (row,
seed) is stored in ``OUT/rows/{row}/seed{seed}.json`` and not redone, so the study can
be stopped and resumed; ``OUT/negatives_study.json`` and ``.md`` hold mean and spread
over the seeds, and the issue's goals as measured.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hearflow.errors import HearflowError
from hearflow.io import write_json, write_text
from hearflow.synthetic.lab import (
    LOADER_WORKERS,
    SIZES,
    TORCH_THREADS,
    make_data,
    method_metrics,
    negative_evaluation,
    predict_method,
    train_model,
)
from hearflow.synthetic.presets import demo_config

ALL_NEGATIVES = "silence,noise,offscreen"


@dataclass(frozen=True)
class NegativesRow:
    """One trained row: a demo preset, with or without ``objective.audio_negatives``; ``baseline``
    names the row it is compared with (the same preset without negatives)."""

    name: str
    description: str
    preset: str
    negatives: str = ""
    baseline: str | None = None


NEGATIVES_ROWS = (
    NegativesRow("lvs", "LVS (demo-lvs), trained without negatives", "demo-lvs"),
    NegativesRow("htf", "HTF (demo-htf), trained without negatives", "demo-htf"),
    NegativesRow("lvs-negatives", "LVS trained with silence, noise and off-screen negatives", "demo-lvs",
                 ALL_NEGATIVES, baseline="lvs"),
    NegativesRow("htf-negatives", "HTF trained with silence, noise and off-screen negatives", "demo-htf",
                 ALL_NEGATIVES, baseline="htf"),
)
SEEDS = (0, 1, 2)
# The goals, for the rows trained with negatives (synthetic benchmark, mean over seeds).
GOAL_AUROC_SILENCE = 0.95
GOAL_AUROC_OFFSCREEN = 0.85
GOAL_MEAN_CIOU_GAP = 0.01
# (label, path in a stored result) of every number the summary spreads over seeds.
MEASURES = {
    "ciou_at_0_5": ("positives", "ciou_at_0_5"), "mean_ciou": ("positives", "mean_ciou"),
    "pick_rate": ("positives", "pick_rate"), "threshold": ("calibration", "threshold"),
    **{f"auroc_{kind}": ("negatives", kind, "auroc") for kind in ("silence", "noise", "offscreen", "no_source", "all")},
    **{f"pia_{kind}": ("negatives", kind, "pia") for kind in ("positive", "silence", "noise", "offscreen", "no_source")},
    **{f"map_max_{kind}": ("negatives", kind, "map_max", "mean") for kind in ("positive", "silence", "offscreen")},
    "iou_median_silence": ("negatives", "silence", "iou_median"),
    "iou_median_offscreen": ("negatives", "offscreen", "iou_median"),
    "detection_f1_all": ("negatives", "all", "detection_f1"), "max_f1_all": ("negatives", "all", "max_f1"),
}


def run_negatives_study(
    out_dir: str | Path = "hearflow-negatives-study",
    rows: list[str] | None = None,
    seeds: tuple[int, ...] = SEEDS,
    quick: bool = False,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, calibrate and score every row of ``rows`` (default all) on every seed; resumable.

    quick: the demo's --quick sizes (a smoke test, not a result). Writes
    ``OUT/negatives_study.{json,md}`` and returns the summary (`negatives_summary`).
    """
    names = [row.name for row in NEGATIVES_ROWS]
    unknown = sorted(set(rows or ()) - set(names))
    if unknown:
        raise HearflowError(f"unknown negatives-study row(s) {unknown}; rows: {', '.join(names)}")
    torch.set_num_threads(TORCH_THREADS)
    size = SIZES["quick" if quick else "default"]
    out = Path(out_dir)
    chosen = [row for row in NEGATIVES_ROWS if rows is None or row.name in rows]
    for seed in seeds:
        missing = [row for row in chosen if not _result_path(out, row, seed).is_file()]
        if not missing:
            continue
        data_dir = out / f"data-seed{seed}"
        data = make_data(data_dir, size.train_clips, size.test_clips, seed, _config(NEGATIVES_ROWS[0], seed, size.epochs),
                         workers=workers, progress=progress, no_source_clips=size.no_source_clips,
                         validation_clips=size.validation_clips)
        for row in missing:
            clock = time.monotonic()
            config = _config(row, seed, size.epochs)
            checkpoint = data_dir / "runs" / row.name / "last.pt"
            if not checkpoint.is_file():
                train_model(config, data.train_dir, checkpoint.parent, progress,
                            train_labels=data.train_annotations if row.negatives else None)
            predictions = predict_method(row.name, checkpoint, data, config, progress)
            evaluation = negative_evaluation(checkpoint, predictions, data, progress)
            write_json(_result_path(out, row, seed), {
                "positives": method_metrics(predictions, data), "calibration": evaluation.calibration,
                "negatives": evaluation.section, "seconds": round(time.monotonic() - clock, 1),
            })
    summary = negatives_summary(out)
    write_json(out / "negatives_study.json", summary)
    write_text(out / "negatives_study.md", negatives_markdown(summary))
    print(negatives_markdown(summary))
    return summary


def _result_path(out: Path, row: NegativesRow, seed: int) -> Path:
    return out / "rows" / row.name / f"seed{seed}.json"


def _config(row: NegativesRow, seed: int, epochs: int):
    fields = {"train.seed": seed, "train.epochs": epochs, "train.workers": LOADER_WORKERS}
    if row.negatives:
        fields["objective.audio_negatives"] = row.negatives
    return demo_config(row.preset, **fields)


def _lookup(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def negatives_summary(out: Path) -> dict[str, Any]:
    """Per row: ``{"seeds", MEASURE: [mean, std], ..., "vs_baseline": [mean, std], "goals": {...}}``.

    ``vs_baseline`` is the row's positives' mean cIoU minus its baseline row's on the
    same seed (over the seeds both have); ``goals`` (rows with a baseline) says, on the
    means, whether AUROC(silence) >= 0.95, AUROC(offscreen) >= 0.85 and |vs_baseline| <=
    0.01. Rows with no stored seed are absent.
    """
    results: dict[str, dict[int, dict]] = {}
    for row in NEGATIVES_ROWS:
        files = sorted((out / "rows" / row.name).glob("seed*.json"))
        results[row.name] = {int(path.stem[4:]): json.loads(path.read_text()) for path in files}
    summary: dict[str, Any] = {}
    for row in NEGATIVES_ROWS:
        per_seed = results[row.name]
        if not per_seed:
            continue
        entry: dict[str, Any] = {"seeds": sorted(per_seed)}
        for name, path in MEASURES.items():
            values = [v for v in (_lookup(result, path) for result in per_seed.values()) if v is not None]
            if values:
                entry[name] = [round(float(np.mean(values)), 4), round(float(np.std(values)), 4)]
        if row.baseline is not None:
            base = results.get(row.baseline, {})
            gaps = [per_seed[s]["positives"]["mean_ciou"] - base[s]["positives"]["mean_ciou"] for s in per_seed if s in base]
            if gaps:
                entry["vs_baseline"] = [round(float(np.mean(gaps)), 4), round(float(np.std(gaps)), 4)]
            entry["goals"] = {
                "auroc_silence": entry.get("auroc_silence", [0])[0] >= GOAL_AUROC_SILENCE,
                "auroc_offscreen": entry.get("auroc_offscreen", [0])[0] >= GOAL_AUROC_OFFSCREEN,
                "mean_ciou_within": bool(gaps) and abs(entry["vs_baseline"][0]) <= GOAL_MEAN_CIOU_GAP,
            }
        summary[row.name] = entry
    return summary


def negatives_markdown(summary: dict[str, Any]) -> str:
    """Two tables (positives; negative audio), mean ± std over seeds, and the goals as measured."""
    def cell(entry, key, form=".3f"):
        pair = entry.get(key)
        if pair is None:
            return "-"
        return f"{pair[0]:{form}}" if len(entry["seeds"]) == 1 else f"{pair[0]:{form}} ± {pair[1]:.3f}"

    lines = ["Positives (test clips with a source; mean ± std over seeds):", "",
             "| row | seeds | cIoU@0.5 | mean cIoU | vs without negatives | pick rate | threshold t |",
             "|---|---|---|---|---|---|---|"]
    for row in NEGATIVES_ROWS:
        entry = summary.get(row.name)
        if entry is None:
            lines.append(f"| {row.name}: {row.description} | not run | | | | | |")
            continue
        lines.append(f"| {row.name}: {row.description} | {','.join(map(str, entry['seeds']))} | "
                     f"{cell(entry, 'ciou_at_0_5')} | {cell(entry, 'mean_ciou')} | {cell(entry, 'vs_baseline', '+.3f')} | "
                     f"{cell(entry, 'pick_rate')} | {cell(entry, 'threshold')} |")
    lines += ["", "Negative audio (AUROC: own sound vs that audio, by the confidence; pIA at the calibrated t):", "",
              "| row | AUROC silence | AUROC noise | AUROC off-screen | AUROC no-source clips | AUROC all | "
              "pIA own / silence / off-screen | IoU with own: silence / off-screen | detection F1 at t |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in NEGATIVES_ROWS:
        entry = summary.get(row.name)
        if entry is None:
            continue
        pias = " / ".join(cell(entry, f"pia_{kind}") for kind in ("positive", "silence", "offscreen"))
        ious = " / ".join(cell(entry, f"iou_median_{kind}") for kind in ("silence", "offscreen"))
        aurocs = " | ".join(cell(entry, f"auroc_{kind}") for kind in ("silence", "noise", "offscreen", "no_source", "all"))
        lines.append(f"| {row.name} | {aurocs} | {pias} | {ious} | {cell(entry, 'detection_f1_all')} |")
    lines += ["", f"Goals (rows trained with negatives, on the means): AUROC silence >= {GOAL_AUROC_SILENCE}, "
              f"AUROC off-screen >= {GOAL_AUROC_OFFSCREEN}, mean cIoU within {GOAL_MEAN_CIOU_GAP} of the same "
              "model trained without:", ""]
    for row in NEGATIVES_ROWS:
        goals = summary.get(row.name, {}).get("goals")
        if goals:
            lines.append(f"- {row.name}: " + ", ".join(f"{name} {'met' if met else 'not met'}" for name, met in goals.items()))
    return "\n".join(lines) + "\n"
