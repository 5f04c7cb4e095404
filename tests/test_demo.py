"""The demo: pick rate, subsets, baselines, the study's bookkeeping, and an end-to-end --quick run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hearflow.data.annotations import gt_map_vggss
from hearflow.metrics import ciou
from hearflow.scoring import Predictions
from hearflow.synthetic.baselines import CenterBox, FlowMagnitude
from hearflow.synthetic.lab import DemoData, method_metrics, peak_picks, picks
from hearflow.synthetic.report import figure_ids, flow_colors
from hearflow.synthetic.study import STUDY_ROWS, study_markdown, study_summary


def _record(sample_id, sounding, moves, twin=False, boxes=((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0))):
    objects = [{"class": "c", "box": list(box), "moves": move} for box, move in zip(boxes, moves)]
    return {"id": sample_id, "sounding": sounding, "twin": twin, "objects": objects}


def _left_right_map(left: float, right: float, size: int = 8) -> np.ndarray:
    grid = np.full((size, size), right, np.float32)
    grid[:, : size // 2] = left
    return grid


def test_picks_counts_the_object_with_the_higher_mean_and_skips_clips_without_a_rival():
    records = [
        _record("a", 0, [True, False]),  # left sounds, left is hot: picked
        _record("b", 1, [False, True]),  # right sounds, left is hot: missed
        _record("c", None, [False, False]),  # no visible source: undefined
        _record("d", 0, [True], boxes=((0.1, 0.1, 0.6, 0.9),)),  # nothing to beat: undefined
        _record("e", 1, [True, True]),  # a flat map ties: not picked
    ]
    maps = np.stack([_left_right_map(1, 0), _left_right_map(1, 0), _left_right_map(1, 0),
                     _left_right_map(1, 0), _left_right_map(0.5, 0.5)])
    result = picks(maps, records, chunk=2)
    assert result[0] == 1.0 and result[1] == 0.0 and result[4] == 0.0
    assert np.isnan(result[2]) and np.isnan(result[3])


def test_peak_picks_asks_whether_the_peak_is_in_the_sounding_object_alone():
    peak_at = lambda y, x: np.eye(8, dtype=np.float32)[y][:, None] * np.eye(8, dtype=np.float32)[x][None]  # noqa: E731
    overlapping = ((0.0, 0.0, 0.6, 1.0), (0.4, 0.0, 1.0, 1.0))
    records = [
        _record("a", 0, [True, False]),  # peak in the left (sounding) half: picked
        _record("b", 1, [False, True]),  # peak in the left half, the right sounds: missed
        _record("c", 0, [True, False], boxes=overlapping),  # peak where both boxes overlap: not alone
        _record("d", None, [False, False]),  # no visible source: undefined
        _record("e", 0, [True], boxes=((0.1, 0.1, 0.6, 0.9),)),  # no other object: undefined
    ]
    maps = np.stack([peak_at(4, 1), peak_at(4, 1), peak_at(4, 4) + peak_at(4, 3), peak_at(4, 1), peak_at(4, 1)])
    result = peak_picks(maps * 10, records, chunk=2)
    assert result[:3].tolist() == [1.0, 0.0, 0.0] and np.isnan(result[3]) and np.isnan(result[4])


def test_picks_matches_a_direct_box_mean_on_random_maps():
    rng = np.random.default_rng(0)
    records, expected = [], []
    maps = rng.normal(size=(12, 8, 8)).astype(np.float32)
    import cv2

    for index in range(12):
        boxes = [sorted(rng.uniform(0, 1, 2)) for _ in range(4)]
        boxes = [(a[0], b[0], a[1], b[1]) for a, b in zip(boxes[::2], boxes[1::2])]
        boxes = [(x0, y0, max(x1, x0 + 0.1), max(y1, y0 + 0.1)) for x0, y0, x1, y1 in boxes]
        records.append(_record(str(index), index % 2, [True, False], boxes=boxes))
        grid = cv2.resize(maps[index], (224, 224), interpolation=cv2.INTER_CUBIC)
        means = []
        for x0, y0, x1, y1 in boxes:
            mask = gt_map_vggss([[x0, y0, x1, y1]]) > 0
            means.append(grid[mask].mean())
        expected.append(float(means[index % 2] > means[1 - index % 2]))
    np.testing.assert_allclose(picks(maps, records, chunk=5), expected)


def test_center_box_scores_a_centred_box_and_ignores_audio():
    model = CenterBox(8)
    out = model(torch.zeros(3, 3, 64, 64), torch.zeros(3, 2, 64, 64), torch.zeros(3, 1, 10, 10))
    assert out.similarity.shape == (3, 8, 8) and out.cross_similarity.shape == (3, 3, 8, 8)
    maps = out.similarity.numpy()
    assert maps[0, 3:5, 3:5].min() > maps[0, 0].max()
    centre = gt_map_vggss([[0.25, 0.25, 0.75, 0.75]])
    corner = gt_map_vggss([[0.0, 0.0, 0.4, 0.4]])
    scores = ciou(maps[:2], np.stack([centre, corner]))
    assert scores[0] > 0.45 and scores[1] < 0.2


def test_flow_magnitude_is_the_max_pooled_speed_scaled_per_clip():
    rng = np.random.default_rng(1)
    flow = rng.normal(size=(2, 2, 16, 16)).astype(np.float32)
    flow[1] = 0.0
    maps = FlowMagnitude(4)(torch.zeros(2, 3, 16, 16), torch.from_numpy(flow), torch.zeros(2, 1, 4, 4)).similarity
    speed = np.sqrt((flow[0] ** 2).sum(axis=0))
    expected = np.array([[speed[4 * r : 4 * r + 4, 4 * c : 4 * c + 4].max() for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(maps[0].numpy(), expected / expected.max(), rtol=1e-5)
    assert float(maps[1].abs().max()) == 0.0


def test_flow_colors_hue_follows_direction_and_brightness_speed():
    flow = np.zeros((4, 4, 2), np.float32)
    flow[0, 0] = (2.0, 0.0)  # rightwards, fastest: full-brightness red
    flow[1, 1] = (0.0, 1.0)  # downwards (image y), half speed
    colors = flow_colors(flow)
    assert tuple(colors[0, 0]) == (255, 0, 0)
    assert colors[1, 1].max() in (127, 128) and colors[2, 2].max() == 0
    assert flow_colors(np.zeros((3, 3, 2), np.float32)).max() == 0


def _demo_data(tmp_path, records):
    annotations = [{"file": r["id"], "class": "c", "bbox": [] if r["sounding"] is None else
                    [r["objects"][r["sounding"]]["box"]]} for r in records]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(annotations))
    return DemoData(tmp_path, tmp_path, path, {r["id"]: r for r in records}, train_count=0)


def test_method_metrics_breaks_results_down_by_motion_and_twins(tmp_path):
    records = [
        _record("m0", 0, [True, False]),
        _record("m1", 1, [False, True], twin=True),
        _record("s0", 0, [False, True]),
        _record("s1", 1, [False, False]),
    ]
    data = _demo_data(tmp_path, records)
    # Right on the moving clips, wrong (points at the other half) on the still ones.
    maps = np.stack([_left_right_map(1, 0), _left_right_map(0, 1), _left_right_map(0, 1), _left_right_map(1, 0)])
    predictions = Predictions([r["id"] for r in records], maps, maps.reshape(4, -1).max(axis=1))
    metrics = method_metrics(predictions, data)
    assert metrics["n"] == 4 and metrics["pick_rate"] == 0.5
    moving, still, twins = (metrics["subsets"][name] for name in ("source_moves", "source_still", "twins"))
    assert moving["n"] == 2 and moving["pick_rate"] == 1.0 and moving["ciou_at_0_5"] == 1.0
    assert still["n"] == 2 and still["pick_rate"] == 0.0 and still["mean_ciou"] == 0.0
    assert twins["n"] == 1 and twins["pick_rate"] == 1.0
    no_twins = method_metrics(Predictions(["m0", "s0"], maps[[0, 2]], np.ones(2)), _demo_data(tmp_path, [records[0], records[2]]))
    assert "twins" not in no_twins["subsets"]


def test_figure_takes_the_first_moving_then_the_first_still_clips():
    clips = {str(i): _record(str(i), 0, [i % 3 != 0, False]) for i in range(12)}
    assert figure_ids(clips, 6) == ["1", "2", "4", "5", "0", "3"]


def test_study_summary_gives_mean_and_spread_and_lists_rows_not_run(tmp_path):
    for seed, (value, pick) in enumerate([(0.4, 0.9), (0.5, 1.0)]):
        for row, shift in (("lvs", 0.0), ("channel-maxpool", 0.1)):
            folder = tmp_path / "default" / "rows" / row
            folder.mkdir(parents=True, exist_ok=True)
            subsets = {"source_moves": {"mean_ciou": value, "pick_rate": pick, "ciou_at_0_5": 0.5}}
            result = {"mean_ciou": value + shift, "pick_rate": pick, "ciou_at_0_5": 0.5, "subsets": subsets}
            (folder / f"seed{seed}.json").write_text(json.dumps(result))
    summary = study_summary(tmp_path)
    lvs = summary["default"]["lvs"]
    assert lvs["seeds"] == [0, 1] and lvs["mean_ciou"] == [0.45, 0.05] and lvs["pick_rate"] == [0.95, 0.05]
    assert "twins" not in lvs and lvs["source_moves"]["mean_ciou"] == [0.45, 0.05]
    table = study_markdown(summary)
    assert "+0.100" in table
    not_run = [row.name for row in STUDY_ROWS if row.name not in ("lvs", "channel-maxpool")]
    for name in not_run:
        assert f"| {name}: " in table and "not run" in table.split(f"| {name}: ")[1].split("\n")[0]
    assert "hard" in table and summary.get("hard") is None


def test_study_compares_a_row_with_lvs_on_the_seeds_both_have(tmp_path):
    for row, values in (("lvs", {0: 0.40, 1: 0.60}), ("spatial-resnet18", {1: 0.65})):
        folder = tmp_path / "default" / "rows" / row
        folder.mkdir(parents=True)
        for seed, value in values.items():
            result = {"mean_ciou": value, "pick_rate": 1.0, "ciou_at_0_5": 0.5, "subsets": {}}
            (folder / f"seed{seed}.json").write_text(json.dumps(result))
    summary = study_summary(tmp_path)
    assert summary["default"]["spatial-resnet18"]["vs_lvs"] == [0.05, 0.0]  # seed 1 only, not 0.65 - 0.50
    line = next(l for l in study_markdown(summary).splitlines() if l.startswith("| spatial-resnet18: "))
    assert "| 1 | 0.650 | +0.050 | 1.000 | - | 0.500 |" in line  # one seed: no spread shown; no peak pick stored


@pytest.mark.slow
def test_a_frozen_pretrained_study_row_keeps_the_classifier_weights(tmp_path, monkeypatch):
    """Table 4 c on a tiny run: the row pre-trains once per seed, starts vision from that
    classifier and, frozen, ends training with exactly its weights (BatchNorm included)."""
    import functools

    import hearflow.synthetic.study as study
    from hearflow.checkpoint import load
    from hearflow.model.encoders import encoder_weights_state_dict
    from hearflow.synthetic.lab import SIZES, DemoSize

    monkeypatch.setitem(SIZES, "quick", DemoSize(train_clips=64, test_clips=8, epochs=1))
    monkeypatch.setattr(study, "make_pretrained_weights",
                        functools.partial(study.make_pretrained_weights, images_per_class=4, epochs=1))
    study.run_study(tmp_path, rows=["lvs-frozen"], seeds=(0,), settings=["default"], quick=True, workers=1,
                   progress=False)
    data_dir = tmp_path / "default" / "data-seed0"
    weights = encoder_weights_state_dict(data_dir / "vision-classifier.pt", 16)
    model = load(data_dir / "runs" / "lvs-frozen" / "last.pt")
    assert model.config.model.pretrained_weights == str(data_dir / "vision-classifier.pt")
    for name, value in model.imgnet.state_dict().items():
        assert torch.equal(value, weights[name]), name
    result = json.loads((tmp_path / "default" / "rows" / "lvs-frozen" / "seed0.json").read_text())
    assert 0 <= result["pick_rate"] <= 1 and "mean_ciou" in result


# Calibrated from measured `hearflow demo --quick` runs, seeds 0 and 1 (README, "The
# demo"): HTF / LVS pick rates 1.00 / 0.99 and 0.96 / 0.98, mean cIoU above the centre
# box's by 0.179 / 0.264 and 0.156 / 0.278, pick rates above flow-only's by at least
# 0.21. Thresholds = the lowest measured value minus a safety margin: pick rate 0.96 -
# 0.16 = 0.80 (above the centre box's 0.49-0.57 and flow-only's 0.70-0.75, so a model
# that learnt nothing, or only to follow motion, fails), mean cIoU gain 0.156 - 0.076 =
# 0.08, pick-rate gain over flow-only 0.21 - 0.16 = 0.05. Remeasured with the current
# demo-htf (gated spatial prior, ResNet-18 flow) on seeds 0 and 1: HTF pick 0.99 / 0.98,
# gain 0.226 / 0.235, pick over flow-only 0.29 / 0.23; the thresholds stand.
QUICK_MIN_PICK = 0.80
QUICK_MIN_GAIN = 0.08
QUICK_MIN_PICK_OVER_FLOW = 0.05


@pytest.mark.slow
def test_quick_demo_learns_to_localize_the_sounding_object(tmp_path):
    from hearflow.checkpoint import load_model
    from hearflow.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--seed", "0", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"methods", "negatives", "train_clips", "test_clips", "no_source_test_clips", "seconds", "seed"}
    assert set(report["methods"]) == {"htf", "lvs", "center", "flow_only", "lvs_flow_fusion"}
    center = report["methods"]["center"]
    for name in ("htf", "lvs"):
        metrics = report["methods"][name]
        assert {"ciou_at_0_5", "auc", "mean_ciou", "pick_rate"} <= set(metrics)
        assert {"source_moves", "source_still"} <= set(metrics["subsets"])
        assert metrics["pick_rate"] >= QUICK_MIN_PICK, (name, metrics)
        assert metrics["mean_ciou"] >= center["mean_ciou"] + QUICK_MIN_GAIN, (name, metrics, center)
        assert metrics["pick_rate"] >= report["methods"]["flow_only"]["pick_rate"] + QUICK_MIN_PICK_OVER_FLOW
    assert (out / "report.md").read_text().count("|") > 20 and (out / "figure.png").stat().st_size > 10_000
    assert report["no_source_test_clips"] == 20 and (out / "negatives.png").stat().st_size > 10_000
    for name in ("htf", "lvs"):
        negatives = report["negatives"][name]
        assert {"positive", "silence", "noise", "offscreen", "no_source", "all"} <= set(negatives)
        assert negatives["silence"]["n"] == report["methods"][name]["n"] == 100
        assert load_model(out / "runs" / name / "last.pt")[1].sounding_threshold == negatives["calibration"]["threshold"]
    assert "## Negative audio" in (out / "report.md").read_text()
    assert load_model(out / "runs" / "htf" / "last.pt")[0].config.model.prior != "none"
