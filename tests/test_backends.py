"""hearflow.backends: ONNX Runtime and torch's fast paths against the eager float32 model.

The accuracy bound of the backends (issue 19): on the same inputs, the peak of every
map (its highest cell) is the eager float32 model's in >= 99 % of the steps, and the
normalised heatmap (as localize and the metric see it) moves by at most 0.02. Tests
that need ONNX Runtime skip, saying so, when the optional extra is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hearflow import backends, build_model
from hearflow.backends import TorchBackend, make_backend
from hearflow.checkpoint import save_checkpoint
from hearflow.cli import main
from hearflow.errors import HearflowError
from hearflow.localize import map_peak
from hearflow.metrics import heatmap
from hearflow.synthetic.presets import demo_config

needs_onnx = pytest.mark.skipif(not backends.onnx_available(),
                                reason="ONNX Runtime is not installed (pip install 'hearflow[onnx]')")
needs_openvino = pytest.mark.skipif(not backends.openvino_available(),
                                    reason="OpenVINO is not installed (pip install 'hearflow[openvino]')")
EXPORTED = [pytest.param("onnx", marks=needs_onnx), pytest.param("openvino", marks=needs_openvino)]
WIDTH, HEIGHT = 160, 96  # the frame the heatmaps are compared at


def small_model(seed: int, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(config=demo_config("cpu-small"), width=8, **overrides).eval()
    with torch.no_grad():  # trained-looking BatchNorm statistics, so maps are not flat
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


def inputs(model, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random inputs of the model's shapes: images, signed flows (pixels), spectrograms."""
    generator = torch.Generator().manual_seed(seed)
    shapes = backends.example_inputs(model.config, batch)
    return tuple(torch.randn(shapes[name].shape, generator=generator) * scale
                 for name, scale in (("image", 1.0), ("flow", 3.0), ("spectrogram", 1.0)))


def eager(model, image, flow, spectrogram, flow_fusion=0.0) -> np.ndarray:
    """The reference: the model as trained, contiguous float32, no backend."""
    model.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        return model(image.contiguous(), flow.contiguous(), spectrogram.contiguous(),
                     flow_fusion=flow_fusion).similarity.numpy()


def agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(share of maps whose peak cell is the same, largest |heatmap difference|) at the test frame's size."""
    same = [map_peak(a, WIDTH, HEIGHT) == map_peak(b, WIDTH, HEIGHT) for a, b in zip(reference, other)]
    diffs = [np.abs(heatmap(a, WIDTH, HEIGHT) - heatmap(b, WIDTH, HEIGHT)).max() for a, b in zip(reference, other)]
    return float(np.mean(same)), float(np.max(diffs))


@pytest.mark.parametrize("name", EXPORTED)
@pytest.mark.parametrize("prior, flow_fusion", [("spatial", 0.0), ("channel", 0.0), ("none", 0.0), ("none", 1.0)])
def test_exported_backends_keep_the_eager_maps(name, prior, flow_fusion):
    model = small_model(1, prior=prior)
    backend = make_backend(name, model, torch.device("cpu"), flow_fusion)
    assert backend.name == name
    references, outputs = [], []
    for seed in range(5):  # 5 batches of 24, the last one of another size: the batch axis is free
        batch = inputs(model, 24 if seed < 4 else 7, seed)
        references.append(eager(model, *batch, flow_fusion=flow_fusion))
        outputs.append(backend.maps(*batch).numpy())
    same, largest = agreement(np.concatenate(references), np.concatenate(outputs))
    assert same >= 0.99 and largest <= 0.02, (same, largest)
    assert np.abs(np.concatenate(references) - np.concatenate(outputs)).max() < 1e-4  # in fact float32 rounding


def test_torch_backend_keeps_the_eager_maps():
    model = small_model(2)
    batch = inputs(model, 32, 0)
    reference = eager(model, *batch)
    fast = make_backend("torch", model, torch.device("cpu"))
    assert isinstance(fast, TorchBackend) and fast.channels_last
    same, largest = agreement(reference, fast.maps(*batch).numpy())
    assert same >= 0.99 and largest <= 0.02
    assert np.array_equal(eager(model, *batch), reference)  # the backend leaves the model's values as they were


def test_unavailable_choices_fall_back_to_torch_with_a_warning(monkeypatch, capsys):
    model = small_model(3)
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.setattr(backends, "onnx_available", lambda: False)
    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    assert make_backend("auto", model, torch.device("cpu")).name == "torch"
    assert capsys.readouterr().err == ""  # auto says nothing: torch is what it picks without the extras
    assert make_backend("onnx", model, torch.device("cpu")).name == "torch"
    assert "hearflow[onnx]" in capsys.readouterr().err
    assert make_backend("openvino", model, torch.device("cpu")).name == "torch"
    assert "hearflow[openvino]" in capsys.readouterr().err
    monkeypatch.setattr(backends, "bfloat16_supported", lambda: False)
    backend = make_backend("torch", model, torch.device("cpu"), precision="bfloat16")
    assert backend.precision == "float32" and "no native bfloat16" in capsys.readouterr().err
    with pytest.raises(HearflowError, match="unknown backend"):
        make_backend("tensorrt", model, torch.device("cpu"))
    with pytest.raises(HearflowError, match="unknown precision"):
        make_backend("torch", model, torch.device("cpu"), precision="int4")


@needs_onnx
@needs_openvino
def test_auto_takes_the_first_installed_exported_backend_on_the_cpu_in_float32(monkeypatch):
    model = small_model(5)
    assert make_backend("auto", model, torch.device("cpu")).name == "onnx"
    assert make_backend("auto", model, torch.device("cpu"), precision="bfloat16").name == "torch"
    monkeypatch.setattr(backends, "onnx_available", lambda: False)
    assert make_backend("auto", model, torch.device("cpu")).name == "openvino"


def test_the_cli_offers_every_backend():
    import argparse

    from hearflow.cli.models import backend_options

    parser = argparse.ArgumentParser()
    backend_options(parser)
    choices = next(action.choices for action in parser._actions if action.dest == "backend")
    assert tuple(choices) == backends.BACKENDS


def test_bfloat16_runs_and_stays_near_float32():
    """Reduced precision is an option with a looser promise (bench/README.md gives the figures)."""
    model = small_model(4)
    batch = inputs(model, 16, 0)
    backend = make_backend("torch", model, torch.device("cpu"), precision="bfloat16")
    maps = backend.maps(*batch)
    assert maps.dtype == torch.float32 and maps.shape == (16, 8, 8)
    assert np.abs(maps.numpy() - eager(model, *batch)).max() < 0.05  # cosines in [-1, 1]


@needs_onnx
def test_export_writes_a_file_that_runs_alone(tmp_path, capsys):
    import onnx
    import onnxruntime

    model = small_model(5)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, model)
    out = tmp_path / "model.onnx"
    assert main(["export", str(checkpoint), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    metadata = {entry.key: entry.value for entry in onnx.load(str(out)).metadata_props}
    assert '"image_size": 64' in metadata["hearflow_config"] and metadata["hearflow_inference"] == '{"flow_fusion": 0.0}'
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [entry.name for entry in session.get_inputs()] == ["image", "flow", "spectrogram"]
    batch = inputs(model, 3, 9)
    (maps,) = session.run(None, {name: tensor.numpy() for name, tensor in zip(("image", "flow", "spectrogram"), batch)})
    np.testing.assert_allclose(maps, eager(model, *batch), atol=1e-4)
    assert main(["export", str(tmp_path / "missing.pt"), str(tmp_path / "x.onnx")]) == 1
    assert "cannot read checkpoint" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("name", EXPORTED)
def test_exported_backends_give_each_thread_its_own_maps(name):
    """`hearflow serve` calls one backend from several threads: each call gets its inputs' maps."""
    from concurrent.futures import ThreadPoolExecutor

    model = small_model(6)
    backend = make_backend(name, model, torch.device("cpu"))
    batches = [inputs(model, 3 + seed, seed) for seed in range(6)]
    alone = [backend.maps(*batch).numpy() for batch in batches]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda batch: backend.maps(*batch).numpy(), batches))
    for one, other in zip(alone, together):
        np.testing.assert_array_equal(one, other)
