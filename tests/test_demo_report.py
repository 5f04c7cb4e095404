"""What the demo tells a person: its stages with an estimate, what the metrics mean, what the
run says (computed from its numbers), and the figure's colour scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import hearflow.synthetic.demo as demo
from hearflow.overlay import heatmap_colors, heatmap_scale
from hearflow.synthetic.lab import SIZES, DemoSize
from hearflow.synthetic.report import METRIC_NOTES, _scale_strip, findings, format_table, report_markdown


def _metrics(mean, pick, moving=None, still=None):
    subsets = {}
    if moving is not None:
        subsets = {"source_moves": {"n": 3, "mean_ciou": moving, "pick_rate": 1.0},
                   "source_still": {"n": 1, "mean_ciou": still, "pick_rate": 1.0}}
    return {"n": 4, "ciou_at_0_5": 0.5, "auc": 0.5, "mean_ciou": mean, "pick_rate": pick, "subsets": subsets}


METHODS = {
    "htf": _metrics(0.62, 0.99, 0.60, 0.64),
    "lvs": _metrics(0.58, 0.96, 0.57, 0.60),
    "center": _metrics(0.35, 0.49, 0.35, 0.35),
    "flow_only": _metrics(0.43, 0.70, 0.54, 0.16),
    "lvs_flow_fusion": _metrics(0.60, 0.92, 0.63, 0.52),
}


def test_findings_say_what_the_numbers_say():
    lines = findings(METHODS)
    assert lines == [
        "HTF points at the sounding object in 99% of the test clips and LVS in 96%; a centred box, which sees "
        "nothing, in 49% and the flow magnitude alone in 70%: both trained models learnt to point at the sound.",
        "What the flow prior adds (HTF against LVS): mean cIoU 0.620 against 0.580 (+0.040): HTF ahead on this "
        "seed; docs/demo-results.md compares 3 seeds.",
        "Late fusion (the LVS map times 1 + the flow magnitude): mean cIoU 0.600, above LVS where the sounding "
        "object moves (0.630 against 0.570) and below where it stands still (0.520 against 0.600).",
    ]
    close = {**METHODS, "htf": _metrics(0.59, 0.72, 0.60, 0.64)}  # HTF no better than flow-only at picking
    first, second, _ = findings(close)
    assert first.endswith("only LVS learnt to point at the sound.")
    assert "(+0.010): level on this seed" in second
    lost = {**METHODS, "htf": _metrics(0.30, 0.50), "lvs": _metrics(0.30, 0.60)}
    assert findings(lost)[0].endswith("neither trained model beat the baselines (try another --seed, or the "
                                      "default size).")
    assert len(findings(lost)) == 2  # LVS has no subsets: no late-fusion sentence


def test_table_and_report_explain_the_metrics_and_the_result():
    table = format_table(METHODS)
    flat = " ".join(table.split())
    for note in METRIC_NOTES:
        assert " ".join(note.split()) in flat
    assert "What this run says:" in table and all(len(line) <= 100 for line in table.splitlines()[7:])
    checkpoints = {"htf": Path("o/runs/htf/last.pt"), "lvs": Path("o/runs/lvs/last.pt")}
    report = {"methods": METHODS, "negatives": {}, "train_clips": 8, "test_clips": 4, "no_source_test_clips": 0,
              "seconds": 12.0, "seed": 0}
    markdown = report_markdown(report, {"evaluate": 1.0}, checkpoints, True, Path("o"), "clip")
    assert all(f"- {note}" in markdown for note in METRIC_NOTES)
    assert all(f"- {line}" in markdown for line in findings(METHODS))


def test_stages_print_the_plan_then_headers_with_time_so_far_and_left(monkeypatch, capsys):
    now = [100.0]
    monkeypatch.setattr(demo.time, "monotonic", lambda: now[0])
    size = DemoSize(train_clips=600, test_clips=100, epochs=8)
    stages = demo.Stages(size, quick=True)
    planned = {"synth + prepare": 700 * 0.03, "train htf": 4800 * 0.015, "train lvs": 4800 * 0.012,
               "evaluate": 100 * 0.025}  # 21 + 72 + 57.6 + 2.5 = 153.1 s
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "hearflow demo --quick: 5 stages, about 2 min 30 s on 2 CPU cores"
    assert [line.split()[0] for line in out[1:]] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    stages.start("synth + prepare")
    now[0] += 2 * planned["synth + prepare"]  # twice as slow as planned
    assert stages.finish() == 42.0
    stages.start("train htf")
    assert capsys.readouterr().out.splitlines() == [
        "[1-2/5] synth and prepare 600 training, 100 test and 0 validation clips",
        "[3/5] training HTF (1 of 2): demo-htf, 8 epochs of 600 clips (42 s so far, about 4 min 20 s to go)",
    ]  # 2 x (72 + 57.6 + 2.5) = 264 s
    stages.finish()
    stages.start("train lvs")
    assert capsys.readouterr().out.startswith("[4/5] training LVS (2 of 2): demo-lvs, 8 epochs of 600 clips (42 s")
    assert demo._duration(0.2) == "1 s" and demo._duration(59.4) == "59 s" and demo._duration(604) == "10 min"


def test_the_estimate_of_the_default_size_is_the_measured_five_minutes():
    size = SIZES["default"]
    other_clips = size.test_clips + size.no_source_clips + size.validation_clips
    seconds = ((size.train_clips + other_clips) * demo.SECONDS_PER_CLIP
               + size.train_clips * size.epochs * sum(demo.SECONDS_PER_CLIP_EPOCH.values())
               + other_clips * demo.SECONDS_PER_TEST_CLIP)
    # docs/demo-results.md: 302 s of stages on 2 idle cores for the 1,500 clips before the no-source and
    # validation clips of the negative-audio evaluation; they add 160 clips to synthesise, prepare and score
    assert 290 <= seconds <= 340


def test_the_figure_carries_the_heatmap_colour_scale():
    scale = heatmap_scale(50, 3)
    assert scale.shape == (3, 50, 3) and scale.dtype == np.uint8
    np.testing.assert_array_equal(scale[:, 0], np.repeat(heatmap_colors(np.zeros((1, 1))), 3, axis=0)[:, 0])
    np.testing.assert_array_equal(scale[:, -1], np.repeat(heatmap_colors(np.ones((1, 1))), 3, axis=0)[:, 0])
    strip = _scale_strip(600)
    assert strip.shape == (44, 600, 3)
    np.testing.assert_array_equal(strip[6:20, 118:592], heatmap_scale(474, 14))
