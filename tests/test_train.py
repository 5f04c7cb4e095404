"""The training loop: run files, config precedence, learning, exact resume, NaN stop, frozen encoders."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml
from fixtures_train import small_config, synth_set  # noqa: F401

from hearflow.checkpoint import load, load_checkpoint
from hearflow.cli import main
from hearflow.config import Config
from hearflow.errors import HearflowError
from hearflow.config import resolve
from hearflow.objective import LOSSES, lvs_loss, register_loss
from hearflow.train import METRICS_COLUMNS, train

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
    config = resolve(file=path)
    assert (config.preset, config.model.prior, config.model.width) == ("lvs", "none", 32)
    assert (config.train.lr, config.train.epochs, config.train.batch_size) == (0.01, 7, 16)
    config = resolve("htf", path, ["train.lr=0.002", "train.epochs=9"], {"train.epochs": 3, "train.seed": None})
    assert config.preset == "htf" and config.model.prior == "channel"  # --preset beats the file's preset
    assert config.model.width == 32  # the file beats the preset
    assert config.train.lr == 0.002  # --set beats the file
    assert config.train.epochs == 3  # an explicit flag beats --set
    assert config.train.seed == 0  # a flag left out changes nothing
    with pytest.raises(HearflowError, match="unknown config key"):
        resolve("htf", None, ["train.nope=1"])
    path.write_text("- not a mapping\n")
    with pytest.raises(HearflowError, match="mapping"):
        resolve(file=path)


def test_a_full_config_file_of_a_demo_configuration_resolves_and_a_partial_one_is_refused(tmp_path):
    full = tmp_path / "small.yaml"
    full.write_text(small_config().to_yaml())
    assert resolve(file=full) == small_config()
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump({"preset": "cpu-small", "model": {"width": 8}}))
    with pytest.raises(HearflowError, match="unknown preset 'cpu-small' and the config does not give every field"):
        resolve(file=partial)


def _small_yaml(tmp_path):
    path = tmp_path / "cpu-small.yaml"
    path.write_text(small_config().to_yaml())
    return str(path)


def test_cli_train_writes_the_run_folder_and_resumes_with_the_same_command_line(synth_set, tmp_path, capsys):
    run_dir = tmp_path / "run"
    command = [
        "train", "--config", _small_yaml(tmp_path), "--train", str(synth_set.prepared), "--val", str(synth_set.prepared),
        "--val-annotations", str(synth_set.annotations), "--batch-size", "4", "--workers", "0",
        "--set", "train.lr=0.002",
    ]
    assert main([*command, "--out", str(run_dir), "--epochs", "1"]) == 0
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
    best = load_checkpoint(run_dir / "best.pt")
    assert "optimizer" not in best and best["epoch"] == 1  # best.pt is for evaluation
    model = load(run_dir / "best.pt")
    assert not model.training and model.config.preset == "cpu-small"
    assert "epoch 1: loss" in capsys.readouterr().out

    # The same command line again, with --resume and more epochs: accepted.
    assert main([*command, "--resume", str(run_dir), "--epochs", "2"]) == 0
    assert [row["epoch"] for row in _rows(run_dir)] == ["1", "2"]
    recorded = (run_dir / "config.yaml").read_bytes(), (run_dir / "last.pt").read_bytes()
    assert main(["train", "--resume", str(run_dir), "--epochs", "2"]) == 0  # nothing left to do: says so
    assert "has trained 2 of 2 epochs: nothing to do" in capsys.readouterr().out
    assert ((run_dir / "config.yaml").read_bytes(), (run_dir / "last.pt").read_bytes()) == recorded
    # A value that differs from the run's is refused, naming the field.
    assert main([*command, "--resume", str(run_dir), "--lr", "0.1"]) == 1
    assert "train.lr is 0.002 there, 0.1 here" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir), "--preset", "htf"]) == 1
    assert "model.width is 16 there, 64 here" in capsys.readouterr().err


def test_cli_usage_errors(synth_set, tmp_path, capsys):
    small = _small_yaml(tmp_path)
    assert main(["train", "--config", small, "--train", str(synth_set.prepared)]) == 1
    assert "--out" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 1
    assert "last.pt does not exist" in capsys.readouterr().err
    assert main(["train", "--config", small, "--train", str(synth_set.prepared), "--out", str(tmp_path / "r"),
                 "--batch-size", "64", "--workers", "0"]) == 1
    assert "fewer than one batch" in capsys.readouterr().err
    assert main(["train", "--config", small, "--train", str(synth_set.prepared), "--out", str(tmp_path / "r"),
                 "--val", str(synth_set.prepared)]) == 1
    assert "--val-annotations" in capsys.readouterr().err
    assert main(["train", "--config", small, "--train", str(synth_set.prepared), "--out", str(tmp_path / "r"),
                 "--set", "objective.loss=nope", "--workers", "0"]) == 1
    assert "objective.loss is 'nope'; registered losses: ezvsl, fnac, lvs, slavc" in capsys.readouterr().err


def test_a_loss_registered_from_outside_trains_through_the_models_halves(synth_set, tmp_path):
    """A method = a model configuration + a registered loss: the loss sees the features of
    ``model.embed`` (every learnable part) and reaches the maps through ``model.similarity``."""
    seen = []

    @register_loss("test-mean-map")
    def mean_map_loss(features, model, objective, epoch):
        seen.append((tuple(features.visual.shape), tuple(features.audio.shape)))
        cross = model.similarity(features).cross_similarity
        return lvs_loss(cross) + 0.0 * cross.mean()

    try:
        ids = _ids_file(tmp_path / "ids.txt", synth_set.ids()[:8])
        config = small_config(**{"objective.loss": "test-mean-map", "model.prior": "spatial", "model.prior_gate": True})
        before = build_model_like(config)
        model = train(config, synth_set.prepared, tmp_path / "run", train_ids=ids, pretrained=False)
    finally:
        del LOSSES["test-mean-map"]
    assert seen == [((4, 128, 8, 8), (4, 128))] * 2  # two steps of 4 (8 samples), global batches
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["objective"]["loss"] == "test-mean-map"
    changed = {name.split(".")[0] for name, value in model.state_dict().items()
               if value.is_floating_point() and not torch.equal(value, before[name])}
    assert {"imgnet", "audnet", "flownet", "flowatt"} <= changed  # what the method adds was trained too


def build_model_like(config):
    """The initial weights ``train`` starts from for ``config`` (same seed, same order)."""
    from hearflow.model import build_model
    from hearflow.rng import seed_everything

    seed_everything(config.train.seed)
    return {name: value.clone() for name, value in build_model(config=config).state_dict().items()}


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
    config.train.epochs = 2  # the recorded config with more epochs: a resume may extend the run
    resumed = train(config, None, tmp_path / "split", resume=True, deterministic=True)
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
    real_loss = LOSSES["lvs"]

    def loss_going_nan(*args):
        calls.append(1)
        loss = real_loss(*args)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setitem(LOSSES, "lvs", loss_going_nan)
    with pytest.raises(HearflowError, match=r"loss is nan at epoch 2, step 2 \(global step 4\).*last\.pt \(epoch 1\)") \
            as error:
        train(small_config(**{"train.epochs": 2}), None, run_dir, resume=True)
    assert "inputs ('" in str(error.value) and "are finite: lower --lr" in str(error.value)  # names the samples
    assert (run_dir / "last.pt").read_bytes() == saved
    assert len(_rows(run_dir)) == 1


def test_a_nan_in_a_data_file_is_named_instead_of_blaming_the_learning_rate(synth_set, tmp_path):
    import numpy as np

    from hearflow.data.prepared import read_flow

    folder = synth_set.copy_prepared(tmp_path / "prepared")
    ids = synth_set.ids()[:8]
    png = folder / "flow" / f"{ids[5]}.png"
    flow = read_flow(png, ids[5])
    flow[:, :, 0] = np.nan  # a damaged flow file (an earlier version's .npy): NaN where numbers should be
    np.save(png.with_suffix(".npy"), flow.astype(np.float16))
    png.unlink()
    with pytest.raises(HearflowError) as error:
        train(small_config(), folder, tmp_path / "run", train_ids=_ids_file(tmp_path / "ids.txt", ids))
    message = str(error.value)
    assert f"the inputs of sample(s) '{ids[5]}' of {folder} hold NaN or infinite values" in message
    assert "--lr" not in message


def test_samples_left_out_for_damaged_files_are_reported(synth_set, tmp_path, capsys):
    folder = synth_set.copy_prepared(tmp_path / "prepared")
    ids = synth_set.ids()[:9]
    wav = folder / "audio" / f"{ids[2]}.wav"
    wav.write_bytes(wav.read_bytes()[:100])
    ids_file = _ids_file(tmp_path / "ids.txt", ids)
    with pytest.raises(HearflowError, match=rf"{ids[2]}.*is truncated"):
        train(small_config(), folder, tmp_path / "stopped", train_ids=ids_file)
    train(small_config(), folder, tmp_path / "run", train_ids=ids_file, skip_missing=True)
    err = capsys.readouterr().err
    assert f"hearflow: warning: left out 1 of 9 training samples with missing or damaged files (e.g. {ids[2]}: " \
           f"{wav} is truncated" in err


def test_a_failed_checkpoint_write_leaves_no_metrics_row_for_its_epoch(synth_set, tmp_path, monkeypatch):
    ids = _ids_file(tmp_path / "ids.txt", synth_set.ids()[:8])
    run_dir = tmp_path / "run"
    real_save, saves = torch.save, []

    def disk_full_at_epoch_2(obj, file, *args, **kwargs):
        saves.append(obj.get("epoch"))
        if obj.get("epoch") == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_epoch_2)
    with pytest.raises(HearflowError, match=rf"cannot write checkpoint {run_dir}/(best|last)\.pt: RuntimeError"):
        train(small_config(**{"train.epochs": 2}), synth_set.prepared, run_dir, train_ids=ids)
    assert [row["epoch"] for row in _rows(run_dir)] == ["1"] and load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    assert not list(run_dir.glob("*.tmp-*"))


def test_stale_temporaries_of_the_run_are_removed_and_an_unwritable_out_is_one_line(synth_set, tmp_path, monkeypatch,
                                                                                     capsys):
    import os

    ids = _ids_file(tmp_path / "ids.txt", synth_set.ids()[:4])
    run_dir = tmp_path / "run"
    train(small_config(), synth_set.prepared, run_dir, train_ids=ids)
    for name in ("last.pt.tmp-999999", "metrics.csv.tmp-12", "config.yaml.tmp-3"):
        (run_dir / name).write_bytes(b"left by a killed run")
    (run_dir / "notes.tmp-1.txt").write_text("not a temporary")
    train(small_config(**{"train.epochs": 2}), None, run_dir, resume=True)
    assert sorted(p.name for p in run_dir.glob("*tmp*")) == ["notes.tmp-1.txt"]
    out, real_open = tmp_path / "unwritable", os.open

    def forbidden(path, flags, *args, **kwargs):
        if str(path).startswith(str(out)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", forbidden)
    capsys.readouterr()
    assert main(["train", "--config", _small_yaml(tmp_path), "--train", str(synth_set.prepared), "--out", str(out),
                 "--workers", "0", "--batch-size", "4"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"hearflow: error: cannot write to {out}: Permission denied"]


@pytest.mark.slow
def test_a_second_training_run_on_one_out_is_refused_naming_the_first(synth_set, tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repository = Path(__file__).resolve().parents[1]
    run_dir, config = tmp_path / "run", _small_yaml(tmp_path)
    command = ["train", "--config", config, "--train", str(synth_set.prepared), "--out", str(run_dir),
               "--workers", "0", "--batch-size", "4", "--epochs", "50"]
    first = subprocess.Popen([sys.executable, "-m", "hearflow.cli", *command], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(repository)})
    try:
        lock = run_dir / "train.lock"
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lock.read_text().startswith(f"pid {first.pid} on ")
        assert main(command) == 1
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and f"{run_dir} is in use by pid {first.pid}" in error[0]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(60)


def test_frozen_encoder_is_left_out_of_the_optimiser(synth_set, tmp_path):
    ids = _ids_file(tmp_path / "ids.txt", synth_set.ids()[:4])
    config = small_config(**{"model.vision_frozen": True})
    model = train(config, synth_set.prepared, tmp_path / "run", train_ids=ids)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and not any(p.requires_grad for p in model.imgnet.parameters())
    (group,) = load_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]["param_groups"]
    assert len(group["params"]) == len(trainable)
