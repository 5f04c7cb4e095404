"""Checkpoints: own format round trip, both released formats, clear errors for anything else."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

import hearflow
from hearflow.checkpoint import load, load_checkpoint, save_checkpoint
from hearflow.errors import HearflowError
from hearflow.model import build_model
from hearflow.synthetic.presets import demo_config

SMALL = {"width": 8, "image_size": 64, "train_resize": 70}


def randomised(model):
    """The model with every parameter and BatchNorm statistic set to fresh random values."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=generator) + 0.1)
    return model


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_own_format_round_trip_keeps_config_weights_and_extra(tmp_path):
    model = randomised(build_model("htf-maxpool", prior_gate=True, **SMALL))
    optimizer = torch.optim.Adam(model.parameters())
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, epoch=3, optimizer=optimizer.state_dict(), metrics={"auc": 0.5})
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]  # no temporary file left behind

    loaded = hearflow.load(path)
    assert not loaded.training
    assert loaded.config == model.config
    assert same_state(loaded, model)
    raw = load_checkpoint(path)
    assert raw["format"] == "hearflow-checkpoint" and raw["hearflow_version"] == hearflow.__version__
    assert raw["epoch"] == 3 and raw["metrics"] == {"auc": 0.5} and "state" in raw["optimizer"]


def test_extra_may_not_replace_the_checkpoint_entries(tmp_path):
    with pytest.raises(ValueError, match="config"):
        save_checkpoint(tmp_path / "x.pt", build_model(config=demo_config("cpu-small")), config={})


@pytest.mark.parametrize("preset", ["htf-released", "htf-released-maxpool"])
def test_released_pth_and_lightning_ckpt_load_into_the_released_preset(tmp_path, preset):
    released = randomised(build_model(preset))
    state = released.state_dict()
    torch.save({"model": state}, tmp_path / "released.pth")
    hyper = {"args": argparse.Namespace(tau=0.03, flowtype="cnn", freeze_vision=1, gt_all={"a": [[0.1, 0.2, 0.3, 0.4]]})}
    lightning = {
        "epoch": 12,
        "state_dict": {f"model.{name}": value for name, value in state.items()},
        "hyper_parameters": hyper,
    }
    torch.save(lightning, tmp_path / "released.ckpt")
    for name in ("released.pth", "released.ckpt"):
        model = load(tmp_path / name)
        assert model.config.preset == preset
        assert not model.training
        assert same_state(model, released)


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"obj": os.path.join}}, path)
    with pytest.raises(HearflowError, match="refused for safety .*posixpath.join"):
        load(path)


def test_corrupt_file_is_one_clear_error(tmp_path):
    path = tmp_path / "broken.pt"
    save_checkpoint(path, build_model(config=demo_config("cpu-small")))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(HearflowError, match=f"cannot read checkpoint {path}"):
        load(path)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(HearflowError, match="not a PyTorch checkpoint or a damaged one"):
        load(text)
    with pytest.raises(HearflowError, match="No such file"):
        load(tmp_path / "absent.pt")


def test_a_file_that_is_no_checkpoint_at_all_says_so_in_one_line(tmp_path):
    import numpy as np
    from PIL import Image

    (tmp_path / "notes.txt").write_text("id,ciou\nclip_1,0.5\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "frame.jpg")
    np.save(tmp_path / "flow.npy", np.zeros((4, 4, 2), np.float16))
    for name in ("notes.txt", "frame.jpg", "flow.npy"):
        with pytest.raises(HearflowError) as error:
            load(tmp_path / name)
        message = str(error.value)
        assert message == (f"cannot read checkpoint {tmp_path / name}: not a PyTorch checkpoint "
                           "(neither torch.save's zip archive nor its legacy pickle)")


def test_foreign_state_dict_names_missing_and_unexpected_keys(tmp_path):
    state = build_model("htf-released").state_dict()
    del state["audnet.conv1.weight"]
    state["head.weight"] = torch.zeros(3)
    state["flowatt.value_conv.bias"] = torch.zeros(7)
    torch.save({"model": state}, tmp_path / "foreign.pth")
    with pytest.raises(HearflowError) as error:
        load(tmp_path / "foreign.pth")
    message = str(error.value)
    assert "missing keys 1: audnet.conv1.weight" in message
    assert "unexpected keys 1: head.weight" in message
    assert "flowatt.value_conv.bias (7,)" in message
    assert "\n" not in message


def test_dict_that_is_no_checkpoint_and_non_dict_files_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(HearflowError, match="not a hearflow checkpoint nor a released one"):
        load(tmp_path / "other.pt")
    torch.save(torch.zeros(2), tmp_path / "tensor.pt")
    with pytest.raises(HearflowError, match="not a checkpoint"):
        load(tmp_path / "tensor.pt")


def test_inference_options_are_recorded_beside_the_config_and_an_old_flow_fusion_still_applies(tmp_path):
    from hearflow.checkpoint import load_model
    from hearflow.config import InferenceOptions

    model = build_model(config=demo_config("cpu-small"))
    save_checkpoint(tmp_path / "plain.pt", model)
    assert load_model(tmp_path / "plain.pt")[1] == InferenceOptions()
    save_checkpoint(tmp_path / "fused.pt", model, inference=InferenceOptions(flow_fusion=0.5))
    loaded, options = load_model(tmp_path / "fused.pt")
    assert options.flow_fusion == 0.5 and loaded.config == model.config
    # A checkpoint of an earlier version kept the option in its model config: it still loads,
    # the option becomes the recorded default and the config no longer holds it.
    old = load_checkpoint(tmp_path / "plain.pt")
    old["config"]["model"]["flow_fusion"] = 2.0
    torch.save(old, tmp_path / "old.pt")
    loaded, options = load_model(tmp_path / "old.pt")
    assert options.flow_fusion == 2.0 and not hasattr(loaded.config.model, "flow_fusion")
