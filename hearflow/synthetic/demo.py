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
from tqdm import tqdm

from hearflow.errors import HearflowError, option
from hearflow.io import write_json, write_text
from hearflow.synthetic.lab import (
    HTF,
    LOADER_WORKERS,
    LVS,
    METHODS,
    SIZES,
    TORCH_THREADS,
    DemoSize,
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


# Seconds per unit of work on 2 idle CPU cores, from the default size's measured run
# (docs/demo-results.md: 41 s to synthesise and prepare 1,500 clips with 2 workers, 143 s
# and 111 s to train HTF and LVS for 8 epochs of 1,200 clips, 7 s to evaluate 300 clips):
# the estimate printed before the run, rescaled by the measured pace as stages finish.
SECONDS_PER_CLIP = 0.03  # synth + prepare, training and test clips alike
SECONDS_PER_CLIP_EPOCH = {HTF: 0.015, LVS: 0.012}
SECONDS_PER_TEST_CLIP = 0.025  # evaluating every method


def run_demo(
    out_dir: str | Path = "hearflow-demo",
    quick: bool = False,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo into ``out_dir``; prints its stages, the table and what it says; returns the
    report (report.json).

    quick: the small CI version (`SIZES`); seed: the training set is synthesised
    with ``2 * seed + 1``, the test set with ``2 * seed + 2``, and training uses
    ``seed``; workers: processes for synthesis and preparation; progress: progress
    bars (the stage headers are printed either way).
    """
    if seed < 0 or workers < 1:
        raise HearflowError(f"{option('--seed', 'seed')} must be >= 0 and {option('--workers', 'workers')} >= 1, "
                            f"got {seed} and {workers}")
    torch.set_num_threads(TORCH_THREADS)
    size = SIZES["quick" if quick else "default"]
    out = Path(out_dir)
    stages = Stages(size, quick)
    timings: dict[str, float] = {}

    stages.start("synth + prepare")
    configs = {
        name: demo_config(PRESETS[name], **{"train.seed": seed, "train.epochs": size.epochs, "train.workers": LOADER_WORKERS})
        for name in (HTF, LVS)
    }
    data = make_data(out, size.train_clips, size.test_clips, seed, configs[LVS], workers=workers, progress=progress,
                     no_source_clips=size.no_source_clips, validation_clips=size.validation_clips)
    timings["synth + prepare"] = stages.finish()

    checkpoints = {}
    for name in (HTF, LVS):
        stages.start(f"train {name}")
        checkpoints[name] = train_model(configs[name], data.train_dir, out / "runs" / name, progress)
        timings[f"train {name}"] = stages.finish()

    stages.start("evaluate")
    maps = {name: predict_method(name, checkpoints.get(name, checkpoints[LVS]), data, configs.get(name, configs[LVS]),
                                 progress) for name in METHODS}
    methods = {name: method_metrics(maps[name], data) for name in METHODS}
    negatives = {name: negative_evaluation(checkpoints[name], maps[name], data, progress) for name in (HTF, LVS)}
    timings["evaluate"] = stages.finish()

    report = {
        "methods": methods,
        "negatives": {name: {"calibration": result.calibration, **result.section} for name, result in negatives.items()},
        "train_clips": data.train_count,
        "test_clips": len(data.test_clips),
        "no_source_test_clips": sum(record["sounding"] is None for record in data.test_clips.values()),
        "seconds": round(stages.elapsed(), 1),
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


class Stages:
    """The demo's stages on the console: the plan with an estimate, then a header per stage with
    the time so far and an estimate of what is left (the plan rescaled by the pace measured)."""

    def __init__(self, size: DemoSize, quick: bool) -> None:
        clip_epochs = size.train_clips * size.epochs
        test_clips = size.test_clips + size.no_source_clips
        self.plan = {  # stage -> (header, planned seconds)
            "synth + prepare": (f"synth and prepare {size.train_clips} training, {test_clips} test and "
                                f"{size.validation_clips} validation clips",
                                (size.train_clips + test_clips + size.validation_clips) * SECONDS_PER_CLIP),
            f"train {HTF}": (f"training HTF (1 of 2): {PRESETS[HTF]}, {size.epochs} epochs of {size.train_clips} clips",
                             clip_epochs * SECONDS_PER_CLIP_EPOCH[HTF]),
            f"train {LVS}": (f"training LVS (2 of 2): {PRESETS[LVS]}, {size.epochs} epochs of {size.train_clips} clips",
                             clip_epochs * SECONDS_PER_CLIP_EPOCH[LVS]),
            "evaluate": (f"evaluating HTF, LVS and 3 training-free baselines on {test_clips} test clips, "
                         "calibrating both and scoring them with negative audio",
                         (test_clips + size.validation_clips) * SECONDS_PER_TEST_CLIP),
        }
        self.begun = time.monotonic()
        self.clock = self.begun
        self.current = ""
        self.done: list[str] = []
        tqdm.write(f"hearflow demo{' --quick' if quick else ''}: 5 stages, about "
                   f"{_duration(sum(s for _, s in self.plan.values()))} on 2 CPU cores")
        for line in STAGE_LINES:
            tqdm.write(f"  {line}")

    def start(self, stage: str) -> None:
        header, _ = self.plan[stage]
        numbers = "1-2" if stage == "synth + prepare" else str(len(self.done) + 2)
        line = f"[{numbers}/5] {header}"
        if self.done:
            planned_done = sum(self.plan[name][1] for name in self.done)
            left = sum(s for name, (_, s) in self.plan.items() if name not in self.done)
            pace = self.elapsed() / max(planned_done, 1e-9)
            line += f" ({_duration(self.elapsed())} so far, about {_duration(left * pace)} to go)"
        tqdm.write(line)
        self.clock = time.monotonic()
        self.current = stage

    def finish(self) -> float:
        """Seconds the current stage took."""
        self.done.append(self.current)
        return time.monotonic() - self.clock

    def elapsed(self) -> float:
        return time.monotonic() - self.begun


STAGE_LINES = (
    "1/5 synth     synthetic videos of two objects, one of them sounding (as `hearflow synth`)",
    "2/5 prepare   key frame, optical flow to the next frame and 3 s of audio per clip (`hearflow prepare`)",
    "3/5 train     HTF, the flow-prior model (`hearflow train`)",
    "4/5 train     LVS, the same model without the flow prior",
    "5/5 evaluate  both and three training-free baselines on the test clips, with negative audio; then OUT/report.md",
)


def _duration(seconds: float) -> str:
    """``"45 s"``, or ``"3 min 20 s"`` (to 10 s) from a minute on."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes, rest = divmod(int(round(seconds / 10) * 10), 60)
    return f"{minutes} min" + (f" {rest} s" if rest else "")
