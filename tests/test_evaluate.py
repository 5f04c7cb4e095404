"""hearflow evaluate: the documented files, the protocol's numbers, unmatched ids, released checkpoints."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from fixtures_train import small_config, synth_set  # noqa: F401

from hearflow.checkpoint import load, save_checkpoint
from hearflow.cli import main
from hearflow.data.annotations import load_annotations
from hearflow.data.dataset import PreparedDataset
from hearflow.errors import HearflowError
from hearflow.evaluate import evaluate
from hearflow.metrics import ap_max_f1, ciou, slavc_confidence, summarize
from hearflow.model import build_model
from hearflow.negatives import map_max
from hearflow.scoring import Predictions, score

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A cpu-small model with random weights (its BatchNorm statistics moved off 0/1)."""
    torch.manual_seed(0)
    model = build_model(config=small_config())
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-0.1, 0.1)
    path = tmp_path_factory.mktemp("evaluate") / "model.pt"
    save_checkpoint(path, model)
    return path


def _annotations(synth_set):
    return json.loads(synth_set.annotations.read_text())


def test_cli_evaluate_writes_the_documented_files(synth_set, checkpoint, tmp_path, capsys):
    status = main([
        "evaluate", "--checkpoint", str(checkpoint), "--data", str(synth_set.prepared),
        "--annotations", str(synth_set.annotations), "--out", str(tmp_path / "results.json"),
        "--per-sample", str(tmp_path / "per_sample.csv"), "--save-maps", str(tmp_path / "maps"),
        "--num-maps", "2", "--batch-size", "5", "--workers", "0",
    ])
    assert status == 0
    results = json.loads((tmp_path / "results.json").read_text())
    entries = _annotations(synth_set)
    no_source = sum(1 for entry in entries if not entry["bbox"])
    assert no_source > 0
    assert results["n"] == len(entries) - no_source and results["n_no_source"] == no_source
    assert {"n", "ciou_at_0_5", "auc", "mean_ciou", "ap", "max_f1"} <= set(results)
    assert results["annotated_without_sample"] == results["samples_without_annotation"] == 0
    table = capsys.readouterr().out
    for label in ("samples", "cIoU@0.5", "AUC", "mean cIoU", "AP", "max-F1"):
        assert label in table
    with open(tmp_path / "per_sample.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["id", "ciou", "confidence"]
    assert [row["id"] for row in rows] == [entry["file"] for entry in entries]
    assert sum(1 for row in rows if row["ciou"] == "") == no_source
    maps = sorted(path.name for path in (tmp_path / "maps").iterdir())
    assert [name[:8] for name in maps] == ["best-01-", "best-02-", "worst-01", "worst-02"]
    image = cv2.imread(str(tmp_path / "maps" / maps[0]))
    assert image.shape == (224, 224, 3)
    best_id = maps[0][len("best-01-"):-len(".png")]
    scored = [row for row in rows if row["ciou"]]
    assert best_id == max(scored, key=lambda row: float(row["ciou"]))["id"]


def test_saved_maps_never_show_a_sample_as_both_best_and_worst(synth_set, tmp_path):
    from hearflow.evaluate import save_overlays

    annotations = load_annotations(synth_set.annotations)
    dataset = PreparedDataset(synth_set.prepared, small_config(), train=False)
    ids = [sample_id for sample_id in dataset.ids if annotations.has_source(sample_id)][:5]
    predictions = Predictions(ids, np.zeros((5, 8, 8), np.float32), np.zeros(5, np.float32))
    cious = np.array([0.2, 0.9, np.nan, 0.5, 0.1])  # ids[2] counts as a no-source sample
    written = save_overlays(tmp_path / "few", predictions, cious, annotations, dataset, count=8)
    assert [path.name for path in written] == [f"best-01-{ids[1]}.png", f"best-02-{ids[3]}.png",
                                               f"worst-01-{ids[4]}.png", f"worst-02-{ids[0]}.png"]
    three = Predictions(ids[:4], predictions.similarity[:4], predictions.confidence[:4])  # 3 scored: 2 best, 1 worst
    written = save_overlays(tmp_path / "odd", three, cious[:4], annotations, dataset, count=8)
    assert [path.name for path in written] == [f"best-01-{ids[1]}.png", f"best-02-{ids[3]}.png",
                                               f"worst-01-{ids[0]}.png"]
    written = save_overlays(tmp_path / "many", predictions, cious, annotations, dataset, count=1)
    assert [path.name for path in written] == [f"best-01-{ids[1]}.png", f"worst-01-{ids[4]}.png"]


def test_numbers_equal_a_per_sample_loop(synth_set, checkpoint):
    results = evaluate(checkpoint, synth_set.prepared, synth_set.annotations, batch_size=6, workers=0)
    model = load(checkpoint)
    annotations = load_annotations(synth_set.annotations)
    dataset = PreparedDataset(synth_set.prepared, model.config, train=False)
    maps, confidence, has_source, gt = [], [], [], []
    with torch.no_grad():
        for index in range(len(dataset)):
            item = dataset[index]
            output = model(item["image"][None], item["flow"][None], item["spectrogram"][None])
            maps.append(output.similarity[0].numpy())
            confidence.append(float(slavc_confidence(output.similarity.numpy())[0]))  # AP's, by default
            has_source.append(annotations.has_source(item["id"]))
            gt.append(annotations.gt_map(item["id"]))
    has_source = np.array(has_source)
    cious = ciou(np.stack(maps), np.stack(gt))
    expected = {
        **summarize(cious[has_source]),
        **ap_max_f1(np.array(confidence), has_source, np.where(has_source, cious, 0.0)),
    }
    # Scoring the loop's maps gives exactly the metrics module's numbers...
    predictions = Predictions(list(dataset.ids), np.stack(maps), map_max(np.stack(maps)).astype(np.float32))
    scored_cious, scored = score(predictions, annotations, chunk=4)
    np.testing.assert_array_equal(scored_cious[has_source], cious[has_source])
    assert np.isnan(scored_cious[~has_source]).all()
    for key, value in expected.items():
        assert scored[key] == value, key
    # ...and batched inference gives the loop's maps up to float rounding, which can
    # move a pixel across a median threshold (a cIoU change of ~1e-5).
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-4), key


def test_unmatched_ids_are_counted_and_reported(synth_set, checkpoint, tmp_path, capsys):
    entries = _annotations(synth_set)
    kept = entries[3:]
    extra = [{"file": "clip-never-prepared", "class": "x", "bbox": [[0.1, 0.1, 0.5, 0.5]]}]
    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps(kept + extra))
    results = evaluate(checkpoint, synth_set.prepared, annotations, workers=0, out=tmp_path / "r.json")
    assert results["annotated_without_sample"] == 1
    assert results["samples_without_annotation"] == 3
    assert results["n"] + results.get("n_no_source", 0) == len(kept)
    out = capsys.readouterr().out
    assert "1 annotated ids without a prepared sample (e.g. clip-never-prepared)" in out
    assert f"3 prepared samples without an annotation (e.g. {entries[0]['file']}" in out
    annotations.write_text(json.dumps(extra))
    with pytest.raises(HearflowError, match="no prepared sample .* is annotated"):
        evaluate(checkpoint, synth_set.prepared, annotations, workers=0)


def test_missing_files_stop_or_are_skipped(synth_set, checkpoint, tmp_path, capsys):
    folder = synth_set.copy_prepared(tmp_path / "prepared")
    victim = next(entry["file"] for entry in _annotations(synth_set) if entry["bbox"])
    (folder / "audio" / f"{victim}.wav").unlink()
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(folder),
                 "--annotations", str(synth_set.annotations), "--workers", "0"]) == 1
    error = capsys.readouterr().err
    assert victim in error and f"{victim}.wav" in error and "--skip-missing" in error
    full = evaluate(checkpoint, synth_set.prepared, synth_set.annotations, workers=0)
    results = evaluate(checkpoint, folder, synth_set.annotations, workers=0, skip_missing=True)
    assert results["skipped_missing_files"] == 1 and results["n"] == full["n"] - 1
    assert "1 samples skipped for missing or damaged files" in capsys.readouterr().out


def test_unusable_boxes_are_warned_about_or_refused_with_strict(synth_set, checkpoint, tmp_path, capsys):
    entries = _annotations(synth_set)
    with_source = [entry for entry in entries if entry["bbox"]]
    with_source[0]["bbox"] = [[0.7, 0.7, 0.2, 0.2]]  # inverted
    with_source[1]["bbox"] = [[10, 12, 40, 50]]  # pixels
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(entries))
    results = evaluate(checkpoint, synth_set.prepared, path, workers=0)
    assert results["unusable_boxes"] == 2
    warning = capsys.readouterr().err
    assert "hearflow: warning: annotations" in warning and "2 box(es) of 2 sample(s) cannot be scored" in warning
    assert with_source[0]["file"] in warning and "--strict refuses them" in warning
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(synth_set.prepared), "--annotations",
                 str(path), "--workers", "0", "--strict"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "refused (strict)" in error[0]


def test_nan_maps_name_the_samples(synth_set, tmp_path):
    model = build_model(config=small_config())
    with torch.no_grad():
        model.audnet.conv1.weight.fill_(float("nan"))
    path = tmp_path / "nan.pt"
    save_checkpoint(path, model)
    with pytest.raises(HearflowError) as error:
        evaluate(path, synth_set.prepared, synth_set.annotations, workers=0)
    message = str(error.value)
    assert "maps of 16 sample(s) hold NaN or infinite values" in message
    assert repr(_annotations(synth_set)[0]["file"]) in message and "samples [" not in message


def test_benchmark_check_and_flow_fusion(synth_set, checkpoint, tmp_path):
    with pytest.raises(HearflowError, match="holds vggss annotations, not flickr"):
        evaluate(checkpoint, synth_set.prepared, synth_set.annotations, benchmark="flickr", workers=0)
    plain, fused = tmp_path / "plain.csv", tmp_path / "fused.csv"
    evaluate(checkpoint, synth_set.prepared, synth_set.annotations, workers=0, per_sample=plain)
    results = evaluate(checkpoint, synth_set.prepared, synth_set.annotations, workers=0, per_sample=fused,
                       flow_fusion=2.0)
    assert results["flow_fusion"] == 2.0
    confidence = [[float(row["confidence"]) for row in csv.DictReader(open(path))] for path in (plain, fused)]
    assert confidence[0] != confidence[1]
    with pytest.raises(HearflowError, match="non-negative"):
        evaluate(checkpoint, synth_set.prepared, synth_set.annotations, workers=0, flow_fusion=-1.0)


@pytest.mark.slow
def test_released_checkpoint_is_evaluated_with_its_own_preprocessing(synth_set, tmp_path, capsys):
    torch.manual_seed(0)
    released = build_model("htf-released")
    path = tmp_path / "released.pth"
    torch.save({"model": released.state_dict()}, path)
    results = evaluate(path, synth_set.prepared, synth_set.annotations, batch_size=16, workers=0,
                       per_sample=tmp_path / "per_sample.csv")
    model = load(path)
    assert model.config.preset == "htf-released" and model.config.data.flow_encoding == "official"
    dataset = PreparedDataset(synth_set.prepared, model.config, train=False)
    item = dataset[0]
    assert item["image"].shape == (3, 224, 224) and item["spectrogram"].shape == (1, 257, 276)
    with torch.no_grad():
        similarity = model(item["image"][None], item["flow"][None], item["spectrogram"][None]).similarity
    rows = list(csv.DictReader(open(tmp_path / "per_sample.csv")))
    assert rows[0]["id"] == item["id"]
    assert float(rows[0]["confidence"]) == pytest.approx(float(slavc_confidence(similarity.numpy())[0]), abs=1e-5)
    assert results["confidence"] == "slavc"
    warning = capsys.readouterr().err  # the folder is htf's recipe, the checkpoint the release's
    assert "was prepared with another recipe than the checkpoint's (sample_rate: 16000 in the folder, 22050" in warning
    assert "flow_size: 256 in the folder, 0 in the config" in warning and "--preset htf-released" in warning
    assert results["n"] > 0 and 0.0 <= results["auc"] <= 1.0
