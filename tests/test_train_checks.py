"""What stops a training run is found before the first step and reported together;
loader workers default to the machine."""

from __future__ import annotations

import urllib.error
import warnings

import pytest
import torch
from fixtures_train import CLIPS, small_config, synth_set  # noqa: F401

from hearflow.cli import main
from hearflow.config import TrainConfig, machine_workers
from hearflow.errors import HearflowError
from hearflow.train import train

def _offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


def test_a_new_users_three_walls_are_one_error_before_any_step(synth_set, tmp_path, monkeypatch, capsys):
    """The defaults on a small own set, offline: the batch is larger than the set and the
    ImageNet weights cannot be fetched; both come in one line, and no run folder is made."""
    _offline(monkeypatch)
    out = tmp_path / "run"
    status = main(["train", "--train", str(synth_set.prepared), "--out", str(out)])
    error = capsys.readouterr().err.strip()
    assert status == 1 and "\n" not in error
    assert error.startswith("hearflow: error: training cannot start, 2 problems: (1) the training set has "
                            f"{CLIPS} samples, fewer than one batch of 128 (train.batch_size); use --batch-size "
                            f"{CLIPS} or less; (2) cannot load the ImageNet ResNet-18 weights")
    assert "--no-pretrained (Python: pretrained=False)" in error and "--set model.vision_pretrained=false" in error
    assert not out.exists()


def test_every_problem_is_numbered_and_a_single_one_stands_alone(synth_set, tmp_path):
    run_file = tmp_path / "taken"
    run_file.write_text("not a folder")
    config = small_config(**{"train.batch_size": 1, "train.workers": -1, "objective.loss": "nope"})
    with pytest.raises(HearflowError) as error:
        train(config, synth_set.prepared, run_file, pretrained=False)
    message = str(error.value)
    assert message.startswith("training cannot start, 4 problems: (1) objective.loss is 'nope'")
    assert ("(2) train.batch_size is 1: the contrastive loss needs at least 2 pairs per batch (each clip's "
            "negatives are the other clips' sounds); use --batch-size 2 or more") in message
    assert "(3) train.workers is -1; use --workers 0" in message
    assert (f"(4) {run_file} is a file, not a folder for the run; choose another --out (Python: out_dir)"
            in message)
    with pytest.raises(HearflowError) as error:
        train(small_config(**{"train.batch_size": 1}), synth_set.prepared, tmp_path / "run", pretrained=False)
    assert str(error.value).startswith("train.batch_size is 1: the contrastive loss")
    with pytest.raises(HearflowError, match=r"^training cannot start, 2 problems: \(1\) no usable samples"):
        train(small_config(**{"train.batch_size": 1}), synth_set.prepared, tmp_path / "run",
              train_ids=_ids(tmp_path, ["not-a-sample"]), skip_missing=True, pretrained=False)


def _ids(tmp_path, ids):
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(ids) + "\n")
    return path


def test_loader_workers_default_to_the_cpus_of_the_machine(monkeypatch):
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert machine_workers() == cpus and TrainConfig().workers == cpus
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cpus))  # more torchrun processes than CPUs: one each
    assert TrainConfig().workers == 1


def test_more_workers_than_cpus_is_said_once_and_torchs_warning_is_not_repeated(synth_set, tmp_path, capsys):
    config = small_config(**{"train.workers": machine_workers() + 1})
    ids = _ids(tmp_path, synth_set.ids()[:4])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(config, synth_set.prepared, tmp_path / "run", train_ids=ids, pretrained=False, progress=False)
    assert not [w for w in caught if "DataLoader will create" in str(w.message)]
    err = capsys.readouterr().err
    assert err.count(f"hearflow: warning: train.workers is {machine_workers() + 1}, more than the "
                     f"{machine_workers()} CPUs this process may use") == 1
    assert (tmp_path / "run" / "last.pt").is_file()
