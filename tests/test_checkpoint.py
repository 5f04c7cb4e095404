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


class _Payload:
    """Unpickling it would run ``touch MARKER``: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"obj": os.path.join}}, path)
    with pytest.raises(HearflowError, match="code-bearing objects .*posixpath.join.*refused for safety"):
        load(path)
    marker = tmp_path / "ran"
    torch.save({"format": "hearflow-checkpoint", "config": {}, "state_dict": {"x": _Payload(marker)}},
               tmp_path / "payload.pt")
    with pytest.raises(HearflowError) as error:
        load(tmp_path / "payload.pt")
    message = str(error.value)
    assert "contains code-bearing objects (posix.system), refused for safety" in message
    assert "weights_only" not in message and "\n" not in message and "trust" not in message
    assert not marker.exists()


def _nested_checkpoint(path, depth: int) -> None:
    """A hearflow checkpoint whose config is ``depth`` mappings deep, written without recursion
    (the pickle opcodes by hand, in torch's zip layout)."""
    import zipfile

    torch.save({"format": "x"}, path)
    with zipfile.ZipFile(path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    def text(value):
        return b"X" + len(value).to_bytes(4, "little") + value
    pickle = (b"\x80\x02}" + text(b"format") + text(b"hearflow-checkpoint") + b"s" + text(b"config") + b"}"
              + (text(b"a") + b"}") * depth + b"s" * depth + b"s.")
    members[next(name for name in members if name.endswith("data.pkl"))] = pickle
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for name, data in members.items():
            out.writestr(name, data)


def test_every_bad_hearflow_checkpoint_is_one_error_naming_the_file(tmp_path):
    model = build_model(config=demo_config("cpu-small"))
    good = load_checkpoint(_saved(model, tmp_path / "good.pt"))
    cases = {
        "no-config": ({key: value for key, value in good.items() if key != "config"}, "has no config"),
        "string-config": ({**good, "config": "htf"}, "a config is a mapping of sections, not a str"),
        "no-weights": ({key: value for key, value in good.items() if key != "state_dict"}, "holds no weights"),
        "list-preset": ({**good, "config": {**good["config"], "preset": ["htf"]}}, "preset is a name"),
        "deep-field": ({**good, "config": {**good["config"], "model": {**good["config"]["model"],
                                                                       "width": {"a": {"b": 1}}}}},
                       "'model.width' needs a int, got a dict"),
        "bad-options": ({**good, "inference": "fast"}, "inference options are a str"),
        "absurd-width": ({**good, "config": {**good["config"], "model": {**good["config"]["model"],
                                                                         "width": 10**7}}},
                         "does not match"),
    }
    for name, (checkpoint, expected) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(checkpoint, path)
        with pytest.raises(HearflowError) as error:
            load(path)
        assert expected in str(error.value) and str(path) in str(error.value), name
        assert "\n" not in str(error.value)
    _nested_checkpoint(tmp_path / "deep.pt", 100_000)
    with pytest.raises(HearflowError, match=f"checkpoint {tmp_path / 'deep.pt'} holds a config this version cannot use"):
        load(tmp_path / "deep.pt")


def test_an_unknown_preset_loads_its_recorded_fields_or_is_refused(tmp_path):
    """A config of a preset this version does not know: every recorded field is used (never
    the ``htf`` defaults), and a config that does not record every field is refused."""
    model = randomised(build_model(config=demo_config("cpu-small")))
    checkpoint = load_checkpoint(_saved(model, tmp_path / "good.pt"))
    checkpoint["config"]["preset"] = "from-the-future"
    torch.save(checkpoint, tmp_path / "future.pt")
    loaded = load(tmp_path / "future.pt")
    assert loaded.config.preset == "from-the-future" and loaded.config.model == model.config.model
    assert loaded.config.data == model.config.data and same_state(loaded, model)
    del checkpoint["config"]["data"]["image_size"]
    torch.save(checkpoint, tmp_path / "partial.pt")
    with pytest.raises(HearflowError, match="unknown preset 'from-the-future' and the config does not give every "
                                            "field \\(missing data.image_size"):
        load(tmp_path / "partial.pt")


def test_an_absurd_width_is_refused_before_anything_is_allocated(tmp_path, monkeypatch):
    """A width of 10^7 would need ~10^15 parameters: it is compared on the meta device first."""
    checkpoint = load_checkpoint(_saved(build_model(config=demo_config("cpu-small")), tmp_path / "good.pt"))
    checkpoint["config"]["model"]["width"] = 10**7
    torch.save(checkpoint, tmp_path / "huge.pt")
    built_on = []
    real_init = torch.nn.Conv2d.__init__

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built_on.append(self.weight.device.type)

    monkeypatch.setattr(torch.nn.Conv2d, "__init__", recording_init)
    with pytest.raises(HearflowError, match="does not match"):
        load(tmp_path / "huge.pt")
    assert built_on and set(built_on) == {"meta"}


@pytest.mark.parametrize("preset", ["htf", "htf-released", "htf-released-maxpool", "lvs", "table4-a"])
def test_presets_build_on_the_meta_device(preset):
    with torch.device("meta"):
        model = build_model(preset)
    real = build_model(preset).state_dict()
    assert {name: value.shape for name, value in model.state_dict().items()} == \
        {name: value.shape for name, value in real.items()}


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_earlier_file(tmp_path, monkeypatch):
    model = build_model(config=demo_config("cpu-small"))
    path = _saved(model, tmp_path / "last.pt")
    before = path.read_bytes()

    def full_disk(obj, file, *args, **kwargs):
        file.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(HearflowError) as error:
        save_checkpoint(path, model)
    message = str(error.value)
    assert message.startswith(f"cannot write checkpoint {path}: RuntimeError: [enforce fail")
    assert "MB free on its disk" in message and "is left as it was" in message
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left


def _saved(model, path):
    save_checkpoint(path, model)
    return path


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
    from hearflow.inference import InferenceOptions

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
