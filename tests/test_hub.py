"""The Hugging Face Hub: a Hub folder round trip with identical outputs, hf:// names read from an
offline cache, loading that never unpickles, the model card, and push (with a recording API)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("huggingface_hub", reason="the hub extra: pip install 'hearflow[hub]'")
pytest.importorskip("safetensors", reason="the hub extra: pip install 'hearflow[hub]'")

import huggingface_hub  # noqa: E402
from huggingface_hub import constants as hub_constants  # noqa: E402

import hearflow  # noqa: E402
from hearflow.checkpoint import record_inference, save_checkpoint  # noqa: E402
from hearflow.cli import main  # noqa: E402
from hearflow.config import resolve  # noqa: E402
from hearflow.inference import InferenceOptions  # noqa: E402
from hearflow.errors import HearflowError  # noqa: E402
from hearflow.hub import from_pretrained, save_pretrained  # noqa: E402
from hearflow.localize import Localizer  # noqa: E402
from hearflow.model import build_model  # noqa: E402
from hearflow.synthetic.presets import demo_config  # noqa: E402

RESULTS = {"n": 300, "ciou_at_0_5": 0.8125, "auc": 0.6031, "mean_ciou": 0.6543, "benchmark": "flickr",
           "data": "/data/test", "checkpoint": "last.pt"}
RUN = {"train_dir": "/data/train", "val_dir": "/data/val", "val_annotations": "/data/val/annotations.json",
       "train_ids": None, "train_labels": None}
HUB_FILES = ["README.md", "config.json", "model.safetensors", "results.json", "train-config.yaml"]


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A calibrated training checkpoint (with optimizer state) and evaluate's results.json beside it."""
    torch.manual_seed(0)  # a freshly initialised model: weights no other test shares
    model = build_model(config=demo_config("cpu-small"))
    path = tmp_path / "run" / "last.pt"
    path.parent.mkdir()
    save_checkpoint(path, model, optimizer=torch.optim.Adam(model.parameters()).state_dict(), epoch=4,
                    global_step=120, run=RUN, training_data={"train": "/data/train", "synthetic": True})
    record_inference(path, InferenceOptions(sounding_threshold=0.25), calibration={
        "threshold": 0.25, "f1": 0.9, "auroc": 0.95, "confidence": "map_max", "data": "/data/val"})
    (path.parent / "results.json").write_text(json.dumps(RESULTS))
    return path


def _step(localizer: Localizer):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 72, 96, 3), dtype=np.uint8)
    audio = rng.standard_normal(16000 * 3).astype(np.float32) * 0.1
    return localizer.localize_arrays(frames[0], frames[1], audio, 16000)


def test_a_hub_folder_round_trip_gives_identical_outputs(checkpoint, tmp_path):
    folder = save_pretrained(checkpoint, tmp_path / "hub")
    assert sorted(p.name for p in folder.iterdir()) == HUB_FILES
    header = json.loads((folder / "config.json").read_text())
    assert header["format"] == "hearflow-hub" and header["epoch"] == 4 and header["run"] == RUN
    assert not {"optimizer", "scaler", "rng", "state_dict"} & set(header)  # resume state stays home
    original, shared = hearflow.load(checkpoint), from_pretrained(folder)
    assert shared.config == original.config and not shared.training
    assert original.state_dict().keys() == shared.state_dict().keys()
    assert all(torch.equal(value, shared.state_dict()[name]) for name, value in original.state_dict().items())
    before, after = _step(Localizer.from_checkpoint(checkpoint, "cpu")), _step(Localizer.from_checkpoint(folder, "cpu"))
    assert np.array_equal(before.heatmap, after.heatmap) and before.confidence == after.confidence
    assert after.sounding == (after.confidence > 0.25)  # the calibrated threshold travelled too
    assert resolve(file=folder / "train-config.yaml") == original.config  # what the card's command trains


def test_the_model_card_has_the_results_table_and_the_training_command(checkpoint, tmp_path):
    card = (save_pretrained(checkpoint, tmp_path / "hub", repo="ada/htf-demo") / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: hearflow\n")
    assert "| cIoU@0.5 | 0.8125 |" in card and "| AUC | 0.6031 |" in card and "| samples | 300 |" in card
    assert ("hearflow train --config train-config.yaml --train /data/train --val /data/val "
            "--val-annotations /data/val/annotations.json --out RUN_DIR") in card
    assert 'hearflow.load("hf://ada/htf-demo")' in card and "Trained on synthetic clips only" in card
    assert "above 0.2500" in card
    bare = (save_pretrained(build_model(config=demo_config("cpu-small")), tmp_path / "bare") / "README.md").read_text()
    assert "Not evaluated" in bare and "Not recorded" in bare


def _cache_repo(cache: Path, repo: str, folder: Path, commit: str) -> None:
    """The Hub cache layout huggingface_hub reads offline: refs/main -> snapshots/COMMIT/files."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(folder, root / "snapshots" / commit)


def test_hf_names_load_from_the_offline_cache_and_a_missing_repo_is_one_error(checkpoint, tmp_path, monkeypatch):
    cache, commit = tmp_path / "cache", "0123456789abcdef0123456789abcdef01234567"
    _cache_repo(cache, "ada/htf-demo", save_pretrained(checkpoint, tmp_path / "hub"), commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    expected = hearflow.load(checkpoint).state_dict()
    for name in ("hf://ada/htf-demo", f"hf://ada/htf-demo@{commit}"):
        loaded = hearflow.load(name).state_dict()
        assert all(torch.equal(value, loaded[key]) for key, value in expected.items())
    assert Localizer.from_checkpoint("hf://ada/htf-demo", "cpu").options.sounding_threshold == 0.25
    with pytest.raises(HearflowError, match=r"cannot fetch hf://ada/nothing-here from the Hugging Face Hub: "):
        hearflow.load("hf://ada/nothing-here")
    with pytest.raises(HearflowError, match="not a Hub repository name"):
        hearflow.load("hf://just-a-name")


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/hearflow-hub-test-ran-code"),))


def test_loading_never_unpickles_and_bad_folders_are_one_error(checkpoint, tmp_path):
    folder = save_pretrained(checkpoint, tmp_path / "hub")
    marker = Path("/tmp/hearflow-hub-test-ran-code")
    marker.unlink(missing_ok=True)
    torch.save({"state_dict": _Payload()}, folder / "model.safetensors")  # a pickle dressed as safetensors
    with pytest.raises(HearflowError, match=r"cannot read .*model.safetensors: not a safetensors file"):
        from_pretrained(folder)
    assert not marker.exists()
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(HearflowError, match=r"config.json: its JSON is nested too deeply"):
        from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"format": "something-else", "config": {}}))
    with pytest.raises(HearflowError, match=r"config.json is not a hearflow Hub config"):
        from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(HearflowError, match=r"no config.json; not a hearflow Hub folder"):
        from_pretrained(folder)


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls and the folder's files as uploaded."""

    calls: list = []

    def create_repo(self, repo_id, private=False, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, branch, exist_ok=False):
        self.calls.append(("create_branch", repo_id, branch, exist_ok))

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        RecordingApi.card = (Path(folder_path) / "README.md").read_text()
        self.calls.append(("upload_folder", repo_id, revision, commit_message, files))


def test_push_uploads_the_hub_folder(checkpoint, monkeypatch, capsys):
    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    assert main(["push", str(checkpoint), "ada/htf-demo", "--private"]) == 0
    assert RecordingApi.calls == [("create_repo", "ada/htf-demo", True, True),
                                  ("upload_folder", "ada/htf-demo", None, "hearflow: upload last.pt", HUB_FILES)]
    assert "https://huggingface.co/ada/htf-demo" in capsys.readouterr().out
    RecordingApi.calls = []
    results = checkpoint.parent / "other-results.json"
    results.write_text(json.dumps({**RESULTS, "ciou_at_0_5": 0.5}))
    assert main(["push", str(checkpoint), "ada/htf-demo@dev", "--results", str(results), "--message", "epoch 4"]) == 0
    assert RecordingApi.calls == [("create_repo", "ada/htf-demo", False, True), ("create_branch", "ada/htf-demo", "dev", True),
                                  ("upload_folder", "ada/htf-demo", "dev", "epoch 4", HUB_FILES)]
    assert "| cIoU@0.5 | 0.5000 |" in RecordingApi.card  # --results, not the results.json beside the checkpoint
    assert main(["push", str(checkpoint), "not-a-repo"]) == 1
    assert "not-a-repo: not a Hub repository name" in capsys.readouterr().err
