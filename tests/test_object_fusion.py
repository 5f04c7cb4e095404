"""Object-guided localization (OGL): the blend, the saliency trunk's weights (ImageNet's from the
cache with no download, or a file the test writes), and evaluate / the backends applying it."""

from __future__ import annotations

import os
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from fixtures_train import small_config, synth_set  # noqa: F401
from hearflow.backends import example_inputs, export_checkpoint, make_backend
from hearflow.checkpoint import record_inference, save_checkpoint
from hearflow.errors import HearflowError
from hearflow.evaluate import evaluate
from hearflow.inference import InferenceOptions
from hearflow.model import build_model
from hearflow.model.encoders import imagenet_weights_file
from hearflow.model.resnet import ResNetTrunk
from hearflow.model.saliency import fuse_object_saliency, object_saliency
from hearflow.synthetic.pretrain import save_encoder_weights


def test_the_blend_is_the_weighted_mean_of_min_max_normalised_maps():
    maps = np.array([[[0.0, 1.0], [2.0, 3.0]]], np.float32)
    saliency = np.array([[[30.0, 20.0], [10.0, 0.0]]], np.float32)
    fused = fuse_object_saliency(maps, saliency, 0.25)
    expected = 0.75 * np.array([0, 1 / 3, 2 / 3, 1]) + 0.25 * np.array([1, 2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(fused.reshape(-1), expected, rtol=1e-6)
    np.testing.assert_allclose(fuse_object_saliency(maps, saliency, 0.0).reshape(-1), [0, 1 / 3, 2 / 3, 1], rtol=1e-6)
    with pytest.raises(HearflowError, match="do not match"):
        fuse_object_saliency(maps, saliency[:, :1], 0.5)


def test_object_fusion_is_a_weight_in_zero_one():
    with pytest.raises(HearflowError, match=r"\[0, 1\]"):
        InferenceOptions(object_fusion=1.5).validate()


@pytest.fixture
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("the test allows no download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_imagenet_saliency_reads_the_cached_file_and_never_downloads(no_download):
    with pytest.raises(HearflowError, match="--object-weights") as error:
        object_saliency("imagenet", 64, 32)
    assert imagenet_weights_file() in str(error.value)
    torch.manual_seed(3)
    state = torchvision.models.resnet18(weights=None).state_dict()
    os.makedirs(os.path.dirname(imagenet_weights_file()), exist_ok=True)
    torch.save(state, imagenet_weights_file())
    saliency = object_saliency("imagenet", 64, 32)
    for name, value in saliency.trunk.state_dict().items():
        assert torch.equal(value, state[name]), name
    image = torch.randn(2, 3, 64, 64)
    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(state)
    reference.eval()
    with torch.no_grad():
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(image))))
        trunk = reference.layer4(reference.layer3(reference.layer2(reference.layer1(x))))
        torch.testing.assert_close(saliency(image), trunk.abs().mean(dim=1))


def saved_trunk(path, width=16, seed=4):
    torch.manual_seed(seed)
    trunk = ResNetTrunk(3, width, 8)
    save_encoder_weights(path, trunk.state_dict(), width)
    return trunk.eval()


def test_object_weights_file_gives_the_saliency_trunk(tmp_path):
    trunk = saved_trunk(tmp_path / "trunk.pt")
    saliency = object_saliency(str(tmp_path / "trunk.pt"), 16, 8)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(saliency(image), trunk(image).abs().mean(dim=1))
    with pytest.raises(HearflowError, match="width"):
        object_saliency(str(tmp_path / "trunk.pt"), 32, 8)
    with pytest.raises(HearflowError, match="object-weights"):
        object_saliency("imagenet", 16, 8)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_backend_with_object_fusion_blends_its_own_maps(tmp_path, backend):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    saved_trunk(tmp_path / "trunk.pt")
    torch.manual_seed(0)
    model = build_model(config=small_config()).eval()
    image, flow, spectrogram = (torch.randn_like(x) for x in example_inputs(model.config, batch=2).values())
    plain = make_backend(backend, model, torch.device("cpu")).maps(image, flow, spectrogram)
    fused = make_backend(backend, model, torch.device("cpu"), object_fusion=0.6,
                         object_weights=str(tmp_path / "trunk.pt")).maps(image, flow, spectrogram)
    with torch.no_grad():
        objects = object_saliency(str(tmp_path / "trunk.pt"), 16, 8)(image)
    np.testing.assert_allclose(fused.numpy(), fuse_object_saliency(plain.numpy(), objects.numpy(), 0.6), atol=1e-5)
    assert not np.allclose(fused.numpy(), fuse_object_saliency(plain.numpy(), objects.numpy(), 0.0), atol=1e-3)


def test_evaluate_says_whether_ogl_was_on_and_export_refuses_it(synth_set, tmp_path, capsys):  # noqa: F811
    saved_trunk(tmp_path / "trunk.pt")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model.pt", build_model(config=small_config()))
    common = dict(workers=0, progress=False, backend="torch")
    off = evaluate(tmp_path / "model.pt", synth_set.prepared, synth_set.annotations, **common)
    assert off["object_fusion"] == 0.0 and off["object_weights"] is None
    assert "object fusion (OGL)  off" in capsys.readouterr().out
    on = evaluate(tmp_path / "model.pt", synth_set.prepared, synth_set.annotations, object_fusion=0.6,
                  object_weights=str(tmp_path / "trunk.pt"), per_sample=tmp_path / "on.csv", **common)
    assert on["object_fusion"] == 0.6 and on["object_weights"] == str(tmp_path / "trunk.pt")
    assert "object fusion (OGL)  on, weight 0.6" in capsys.readouterr().out
    assert on["mean_ciou"] != off["mean_ciou"]
    record_inference(tmp_path / "model.pt", InferenceOptions(object_fusion=0.6), out=tmp_path / "ogl.pt")
    with pytest.raises(HearflowError, match="outside the model"):
        export_checkpoint(tmp_path / "ogl.pt", tmp_path / "ogl.onnx")


def test_the_cli_passes_object_fusion_to_evaluate(synth_set, tmp_path, capsys):  # noqa: F811
    import json

    from hearflow.cli import main

    saved_trunk(tmp_path / "trunk.pt")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model.pt", build_model(config=small_config()))
    assert main(["evaluate", "--checkpoint", str(tmp_path / "model.pt"), "--data", str(synth_set.prepared),
                 "--annotations", str(synth_set.annotations), "--workers", "0", "--quiet", "--backend", "torch",
                 "--object-fusion", "0.6", "--object-weights", str(tmp_path / "trunk.pt"),
                 "--out", str(tmp_path / "results.json")]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["object_fusion"], results["object_weights"]) == (0.6, str(tmp_path / "trunk.pt"))
    assert "object fusion (OGL)  on, weight 0.6" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(tmp_path / "model.pt"), "--data", str(synth_set.prepared),
                 "--annotations", str(synth_set.annotations), "--workers", "0", "--quiet",
                 "--object-fusion", "0.6"]) == 1  # ImageNet weights cannot fit model.width 16: one line
    assert "--object-weights" in capsys.readouterr().err
