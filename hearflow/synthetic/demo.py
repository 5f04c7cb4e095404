"""`hearflow demo`: the whole method end to end on synthetic videos, on a CPU in minutes.

1. ``synth``: a training set, a test set (plus clips in which no visible object
   sounds) and a small validation set of synthetic sounding-objects videos
   (`hearflow.synthetic.clips`, different seeds, so no clip is in two);
2. ``prepare``: both sets through the real `hearflow prepare` stage (key frame,
   optical flow, audio window);
3. ``train``: HTF and the LVS baseline with the CPU configurations ``demo-htf`` and
   ``demo-lvs`` (`hearflow.synthetic.presets`: quarter-width ResNet-18 blocks, 64 x 64
   inputs, 8 x 8 maps, nothing pre-trained, vision trained);
4. ``evaluate``: both checkpoints and three training-free baselines (centre box,
   flow magnitude, late fusion) with `hearflow.scoring` (`hearflow.synthetic.lab`);
   both checkpoints calibrated on the validation set and scored with negative audio
   (silence, noise, off-screen sounds; `hearflow.negatives`);
5. ``report``: ``OUT/report.json``, ``OUT/report.md``, ``OUT/figure.png`` and
   ``OUT/negatives.png`` (`hearflow.synthetic.report`); the calibrated checkpoints
   stay at ``OUT/runs/{htf,lvs}/last.pt`` for `hearflow evaluate` and `hearflow localize`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from hearflow.errors import HearflowError
from hearflow.io import write_json, write_text
from hearflow.synthetic.lab import (
    HTF,
    LOADER_WORKERS,
    LVS,
    METHODS,
    SIZES,
    TORCH_THREADS,
    make_data,
    method_metrics,
    negative_evaluation,
    predict_method,
    train_model,
)
from hearflow.synthetic.presets import demo_config
from hearflow.synthetic.report import (
    format_negatives_table,
    format_table,
    report_markdown,
    write_figure,
    write_negatives_figure,
)

PRESETS = {HTF: "demo-htf", LVS: "demo-lvs"}


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
        name: demo_config(PRESETS[name], **{"train.seed": seed, "train.epochs": size.epochs, "train.workers": LOADER_WORKERS})
        for name in (HTF, LVS)
    }
    data = make_data(out, size.train_clips, size.test_clips, seed, configs[LVS], workers=workers, progress=progress,
                     no_source_clips=size.no_source_clips, validation_clips=size.validation_clips)
    timings["synth + prepare"] = time.monotonic() - clock

    checkpoints = {}
    for name in (HTF, LVS):
        clock = time.monotonic()
        checkpoints[name] = train_model(configs[name], data.train_dir, out / "runs" / name, progress)
        timings[f"train {name}"] = time.monotonic() - clock

    clock = time.monotonic()
    maps = {name: predict_method(name, checkpoints.get(name, checkpoints[LVS]), data, configs.get(name, configs[LVS]),
                                 progress) for name in METHODS}
    methods = {name: method_metrics(maps[name], data) for name in METHODS}
    negatives = {name: negative_evaluation(checkpoints[name], maps[name], data, progress) for name in (HTF, LVS)}
    timings["evaluate"] = time.monotonic() - clock

    report = {
        "methods": methods,
        "negatives": {name: {"calibration": result.calibration, **result.section} for name, result in negatives.items()},
        "train_clips": data.train_count,
        "test_clips": len(data.test_clips),
        "no_source_test_clips": sum(record["sounding"] is None for record in data.test_clips.values()),
        "seconds": round(time.monotonic() - start, 1),
        "seed": seed,
    }
    write_json(out / "report.json", report)
    write_figure(out / "figure.png", data, maps)
    write_negatives_figure(out / "negatives.png", data, negatives)
    write_text(out / "report.md", report_markdown(report, timings, checkpoints, quick, out, next(iter(data.test_clips))))
    print(format_table(methods))
    print(format_negatives_table(report["negatives"]))
    print(f"report: {out / 'report.md'} ({report['seconds']:.0f} s)")
    return report
