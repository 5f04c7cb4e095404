"""The training loop: run files, config precedence, learning, exact resume, NaN stop, frozen encoders."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml
from fixtures_train import single_thread, small_config, synth_set  # noqa: F401

import hearflow.train as train_module
from hearflow.checkpoint import load, load_checkpoint
from hearflow.cli import main
from hearflow.config import Config
from hearflow.errors import HearflowError
from hearflow.train import METRICS_COLUMNS, train, training_config

pytestmark = pytest.mark.usefixtures("single_thread")


def _ids_file(path, ids):
    path.write_text("".join(f"{sample_id}\n" for sample_id in ids))
    return path


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def _tensorboard_losses(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars("train/loss")]


def test_config_precedence_preset_file_set_flags(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "preset": "lvs",
        "model": {"width": 32},
        "train": {"lr": 0.01, "epochs": 7, "batch_size": 16},
    }))
    config = training_config(config_file=path)
    assert (config.preset, config.model.prior, config.model.width) == ("lvs", "none", 32)
    assert (config.train.lr, config.train.epochs, config.train.batch_size) == (0.01, 7, 16)
    config = training_config("cpu-small", path, {"train.lr": "0.002", "train.epochs": "9"}, epochs=3, seed=None)
    assert config.preset == "cpu-small" and config.model.prior == "channel"  # --preset beats the file's preset
    assert config.model.width == 32  # the file beats the preset
    assert config.train.lr == 0.002  # --set beats the file
    assert config.train.epochs == 3  # an explicit flag beats --set
    assert config.train.seed == 0  # a flag left out changes nothing
    with pytest.raises(HearflowError, match="unknown config key"):
        training_config("htf", None, {"train.nope": "1"})
    path.write_text("- not a mapping\n")
    with pytest.raises(HearflowError, match="mapping"):
        training_config(config_file=path)


def test_every_recipe_in_configs_loads():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(recipes) >= 22
    for recipe in recipes:
        config = training_config(config_file=recipe)
        assert (config.train.epochs, config.train.batch_size, config.train.lr) == (100, 128, 1e-3), recipe
    assert training_config(config_file=recipes[0].with_name("table5-a.yaml")).model.flow_encoder == "maxpool"
    assert training_config(config_file=recipes[0].with_name("table4-a.yaml")).model.vision_pretrained is False


def test_cli_train_writes_the_run_folder(synth_set, tmp_path, capsys):
    run_dir = tmp_path / "run"
    status = main([
        "train", "--preset", "cpu-small", "--train", str(synth_set.prepared), "--val", str(synth_set.prepared),
        "--val-annotations", str(synth_set.annotations), "--out", str(run_dir), "--epochs", "1",
        "--batch-size", "4", "--workers", "0", "--set", "train.lr=0.002",
    ])
    assert status == 0
    assert {"best.pt", "last.pt", "config.yaml", "metrics.csv"} <= {p.name for p in run_dir.iterdir()}
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert not list(run_dir.glob("*.tmp-*"))
    config = Config.from_yaml(run_dir / "config.yaml")
    assert (config.preset, config.train.lr, config.train.batch_size, config.train.epochs) == ("cpu-small", 0.002, 4, 1)
    (row,) = _rows(run_dir)
    assert tuple(row) == METRICS_COLUMNS
    assert row["epoch"] == "1" and row["global_step"] == "4" and row["is_best"] == "1"
    assert 0.0 <= float(row["val_ciou_at_0_5"]) <= 1.0 and 0.0 <= float(row["val_auc"]) <= 1.0
    assert [step for step, _ in _tensorboard_losses(run_dir)] == [1, 2, 3, 4]
    last = load_checkpoint(run_dir / "last.pt")
    assert last["epoch"] == 1 and last["global_step"] == 4
    assert last["best"]["metric"] == "val_ciou_at_0_5" and last["best"]["epoch"] == 1
    assert {"python", "numpy", "torch"} <= set(last["rng"]) and last["optimizer"]["state"]
    assert last["run"]["train_dir"] == str(synth_set.prepared)
    model = load(run_dir / "best.pt")
    assert not model.training and model.config.preset == "cpu-small"
    assert "epoch 1: loss" in capsys.readouterr().out


def test_cli_usage_errors(synth_set, tmp_path, capsys):
    assert main(["train", "--preset", "cpu-small", "--train", str(synth_set.prepared)]) == 1
    assert "--out" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--lr", "0.1"]) == 1
    assert "--lr" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 1
    assert "last.pt does not exist" in capsys.readouterr().err
    assert main(["train", "--preset", "cpu-small", "--train", str(synth_set.prepared), "--out", str(tmp_path / "r"),
                 "--batch-size", "64", "--workers", "0"]) == 1
    assert "fewer than one batch" in capsys.readouterr().err
    assert main(["train", "--preset", "cpu-small", "--train", str(synth_set.prepared), "--out", str(tmp_path / "r"),
                 "--val", str(synth_set.prepared)]) == 1
    assert "--val-annotations" in capsys.readouterr().err


@pytest.mark.slow
def test_loss_decreases_on_a_set_the_model_can_overfit(synth_set, tmp_path):
    ids = _ids_file(tmp_path / "ids.txt", synth_set.ids()[:8])
    config = small_config(**{"train.batch_size": 8, "train.epochs": 10})
    train(config, synth_set.prepared, tmp_path / "run", train_ids=ids)
    losses = [float(row["train_loss"]) for row in _rows(tmp_path / "run")]
    assert len(losses) == 10
    assert max(losses[-2:]) < 0.6 * losses[0], losses
    # No validation set: best.pt is the epoch with the lowest training loss.
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["best"]["metric"] == "train_loss"
    assert best["epoch"] == 1 + losses.index(min(losses))


def test_resume_continues_exactly(synth_set, tmp_path):
    ids = _ids_file(tmp_path / "ids.txt", synth_set.ids()[:8])
    config = small_config(**{"train.epochs": 2, "train.seed": 7})
    straight = train(config, synth_set.prepared, tmp_path / "straight", train_ids=ids, deterministic=True)
    config.train.epochs = 1
    train(config, synth_set.prepared, tmp_path / "split", train_ids=ids, deterministic=True)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 1
    resumed = train(None, None, tmp_path / "split", resume=True, epochs=2, deterministic=True)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    one, two = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    assert one["global_step"] == two["global_step"] == 4
    for key, state in one["optimizer"]["state"].items():
        assert all(torch.equal(state[k], two["optimizer"]["state"][key][k]) for k in state)
    straight_rows, split_rows = _rows(tmp_path / "straight"), _rows(tmp_path / "split")
    assert [r["train_loss"] for r in straight_rows] == [r["train_loss"] for r in split_rows]
    assert _tensorboard_losses(tmp_path / "straight") == _tensorboard_losses(tmp_path / "split")
    with pytest.raises(HearflowError, match="already holds a run"):
        train(config, synth_set.prepared, tmp_path / "split", train_ids=ids)


def test_nan_loss_stops_and_leaves_the_last_checkpoint(synth_set, tmp_path, monkeypatch):
    ids = _ids_file(tmp_path / "ids.txt", synth_set.ids()[:8])
    run_dir = tmp_path / "run"
    train(small_config(), synth_set.prepared, run_dir, train_ids=ids)
    saved = (run_dir / "last.pt").read_bytes()
    calls = []
    real_loss = train_module.lvs_loss

    def loss_going_nan(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(train_module, "lvs_loss", loss_going_nan)
    with pytest.raises(HearflowError, match=r"loss is nan at epoch 2, step 2 \(global step 4\).*last\.pt \(epoch 1\)"):
        train(None, None, run_dir, resume=True, epochs=2)
    assert (run_dir / "last.pt").read_bytes() == saved
    assert len(_rows(run_dir)) == 1


def test_frozen_encoder_is_left_out_of_the_optimiser(synth_set, tmp_path):
    ids = _ids_file(tmp_path / "ids.txt", synth_set.ids()[:4])
    config = small_config(**{"model.vision_frozen": True})
    model = train(config, synth_set.prepared, tmp_path / "run", train_ids=ids)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and not any(p.requires_grad for p in model.imgnet.parameters())
    (group,) = load_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]["param_groups"]
    assert len(group["params"]) == len(trainable)
