"""hearflow calibrate, evaluate --negatives, the sounding threshold in checkpoints, training with negatives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixtures_train import small_config, synth_set  # noqa: F401

from hearflow.calibrate import calibrate
from hearflow.checkpoint import load_checkpoint, load_model, save_checkpoint
from hearflow.cli import main
from hearflow.config import Config
from hearflow.inference import InferenceOptions
from hearflow.data.annotations import load_annotations
from hearflow.errors import HearflowError
from hearflow.evaluate import evaluate
from hearflow.model import build_model
from hearflow.negatives import calibration_threshold, map_max, negative_results
from hearflow.scoring import AnnotatedSet

KINDS = ("silence", "noise", "offscreen")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("calibrate") / "model.pt"
    save_checkpoint(path, build_model(config=small_config()), epoch=3)
    return path


def test_calibrate_stores_the_f1_optimal_threshold_of_positives_against_negatives(synth_set, checkpoint, tmp_path):
    out = tmp_path / "calibrated.pt"
    record = calibrate(checkpoint, synth_set.prepared, synth_set.annotations, out=out, workers=0, batch_size=5,
                       progress=False)
    model, options = load_model(out)
    assert options.sounding_threshold == record["threshold"] and options.flow_fusion == 0.0
    stored = load_checkpoint(out)
    assert stored["calibration"] == record and stored["epoch"] == 3  # the rest of the checkpoint is kept
    # the same threshold, recomputed from the maps with the metrics module
    annotated = AnnotatedSet(synth_set.prepared, synth_set.annotations, model.config)
    predictions = annotated.predict(model, batch_size=5, progress=False)
    cious, _ = annotated.score(predictions)
    maps = annotated.negative_maps(model, KINDS, predictions, cious, batch_size=5)
    no_source = sum(not annotated.annotations.has_source(i) for i in predictions.ids)
    assert record["n_negative"] == {"silence": len(maps.ids), "noise": len(maps.ids), "offscreen": len(maps.ids),
                                    "no_source": no_source}
    scores = np.concatenate([map_max(maps.positive)] + [map_max(m) for m in maps.negatives.values()])
    expected = calibration_threshold(scores, np.arange(len(scores)) < len(maps.ids))
    assert (record["threshold"], record["f1"]) == pytest.approx(expected)


def test_calibrate_cli_in_place_and_a_released_checkpoint_needs_out(synth_set, checkpoint, tmp_path, capsys):
    copy = tmp_path / "model.pt"
    copy.write_bytes(checkpoint.read_bytes())
    assert load_model(copy)[1].sounding_threshold is None
    assert main(["calibrate", "--checkpoint", str(copy), "--data", str(synth_set.prepared), "--annotations",
                 str(synth_set.annotations), "--negatives", "silence", "--workers", "0", "--quiet"]) == 0
    assert "sounding when map_max >" in capsys.readouterr().out
    assert load_model(copy)[1].sounding_threshold is not None
    released = tmp_path / "released.pth"
    torch.save({"model": build_model("htf-released").state_dict()}, released)
    status = main(["calibrate", "--checkpoint", str(released), "--data", str(synth_set.prepared),
                   "--annotations", str(synth_set.annotations), "--workers", "0", "--quiet"])
    assert status == 1 and "pass --out" in capsys.readouterr().err


def test_evaluate_negatives_section_and_table(synth_set, checkpoint, tmp_path, capsys):
    results = evaluate(checkpoint, synth_set.prepared, synth_set.annotations, workers=0, batch_size=6,
                       negatives="silence,noise,offscreen", sounding_threshold=0.3, out=tmp_path / "r.json")
    section = results["negatives"]
    assert set(section) == {"positive", *KINDS, "no_source", "all"} and results["sounding_threshold"] == 0.3
    for kind in KINDS:
        assert section[kind]["n"] == results["n"]
        assert {"pia", "pia_auc", "map_max", "iou_median", "iou_at_threshold", "auroc", "ap", "max_f1",
                "detection_f1"} <= set(section[kind])
    assert section["no_source"]["n"] == results["n_no_source"]
    assert json.loads((tmp_path / "r.json").read_text())["negatives"] == section
    table = capsys.readouterr().out
    assert "negative audio (universal threshold t = 0.3000, given" in table and "offscreen" in table
    # the section is `negative_results` of the maps (the scoring layer's, recomputed here)
    model, _ = load_model(checkpoint)
    annotated = AnnotatedSet(synth_set.prepared, synth_set.annotations, model.config)
    predictions = annotated.predict(model, batch_size=6, progress=False)
    cious, _ = annotated.score(predictions)
    maps = annotated.negative_maps(model, KINDS, predictions, cious, batch_size=6)
    again = negative_results(maps.positive, maps.cious, maps.negatives, 0.3)
    assert again["silence"]["auroc"] == pytest.approx(section["silence"]["auroc"], abs=1e-3)


def test_evaluate_without_a_threshold_leaves_out_what_needs_one(synth_set, checkpoint, capsys):
    results = evaluate(checkpoint, synth_set.prepared, synth_set.annotations, workers=0, negatives="silence")
    assert results["sounding_threshold"] is None
    assert "pia" not in results["negatives"]["silence"] and "auroc" in results["negatives"]["silence"]
    assert "uncalibrated" in capsys.readouterr().out
    with pytest.raises(HearflowError, match="unknown negative kind"):
        evaluate(checkpoint, synth_set.prepared, synth_set.annotations, workers=0, negatives="hum")


def test_offscreen_partners_in_evaluation_sound_a_class_not_in_the_frame(synth_set):
    from hearflow.data.negatives import offscreen_partners, read_labels

    labels = read_labels(synth_set.annotations)
    ids = list(load_annotations(synth_set.annotations).ids)
    for sample_id, partner in zip(ids, offscreen_partners(ids, labels)):
        assert labels[partner].sound is not None and labels[partner].sound not in labels[sample_id].visible


def test_inference_options_and_new_objective_fields_round_trip(tmp_path):
    model = build_model(config=small_config())
    save_checkpoint(tmp_path / "m.pt", model, inference=InferenceOptions(sounding_threshold=0.42))
    assert load_model(tmp_path / "m.pt")[1] == InferenceOptions(sounding_threshold=0.42)
    save_checkpoint(tmp_path / "n.pt", model, inference=InferenceOptions())
    assert load_model(tmp_path / "n.pt")[1].sounding_threshold is None
    with pytest.raises(HearflowError, match="finite"):
        InferenceOptions(sounding_threshold=float("nan")).validate()
    old = small_config().to_dict()
    for name in ("audio_negatives", "negatives_weight", "negatives_margin"):
        del old["objective"][name]  # a config written before these fields existed
    assert Config.from_dict(old).objective.audio_negatives == ""


def test_training_with_negatives_runs_and_resumes_with_its_labels(synth_set, tmp_path):
    from hearflow.train import train

    config = small_config(**{"objective.audio_negatives": "silence,noise,offscreen", "train.epochs": 1})
    train(config, synth_set.prepared, tmp_path / "run", train_labels=synth_set.annotations, progress=False,
          deterministic=True)
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["run"]["train_labels"] == str(synth_set.annotations)
    assert checkpoint["config"]["objective"]["audio_negatives"] == "silence,noise,offscreen"
    config.train.epochs = 2
    train(config, None, tmp_path / "run", resume=True, progress=False, deterministic=True)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 2
