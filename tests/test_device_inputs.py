"""train.gpu_inputs: loader workers read bytes, the device makes the inputs; run here on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_train import small_config, synth_set  # noqa: F401

from hearflow.config import preset_config
from hearflow.data.dataset import PreparedDataset
from hearflow.data.device_inputs import collate_encoded, device_inputs
from hearflow.data.prepared import write_sample
from hearflow.data.transforms import IMAGENET_STD
from hearflow.errors import HearflowError
from hearflow.pack import pack
from hearflow.train import train

ONE_LEVEL = 1 / 255 / float(IMAGENET_STD.min())  # one grey level, normalised


def _compare(folder, config, epoch=2, count=8):
    """(image, flow, spectrogram) of the CPU training transform and of the device path, same crops."""
    cpu = PreparedDataset(folder, config, train=True)
    encoded = PreparedDataset(folder, config, train=True, encoded=True)
    cpu.set_epoch(epoch)
    encoded.set_epoch(epoch)
    indices = range(min(count, len(cpu)))
    expected = [cpu[i] for i in indices]
    batch = collate_encoded([encoded[i] for i in indices])
    assert batch["id"] == [item["id"] for item in expected]
    made = device_inputs(batch, config.data, torch.device("cpu"))
    reference = [torch.stack([item[key] for item in expected]) for key in ("image", "flow", "spectrogram")]
    return made, reference


def _check(made, reference, flow_tolerance):
    image, flow, spec = made
    assert image.shape == reference[0].shape and flow.shape == reference[1].shape and spec.shape == reference[2].shape
    difference = (image - reference[0]).abs()
    assert float(difference.max()) <= 2 * ONE_LEVEL + 1e-5  # each pass may round the other way
    assert float((difference > 1e-5).float().mean()) < 0.01
    assert float((flow - reference[1]).abs().max()) <= flow_tolerance
    torch.testing.assert_close(spec, reference[2], rtol=0, atol=1e-5)
    return float(difference.mean() / ONE_LEVEL)


def test_device_inputs_match_the_cpu_training_transform(synth_set):
    made, reference = _compare(synth_set.prepared, small_config())
    assert _check(made, reference, 1e-3 * float(reference[1].abs().max()) + 1e-5) < 0.01


def test_device_inputs_at_the_working_size_and_released_encoding(tmp_path):
    """455 x 256 frames (the default working size), signed and official flow."""
    rng = np.random.default_rng(4)
    import cv2

    for i in range(4):
        frame = cv2.GaussianBlur(rng.integers(0, 256, (256, 455, 3), dtype=np.uint8), (0, 0), 1.2)
        flow = cv2.GaussianBlur(rng.normal(0, 6, (256, 455, 2)).astype(np.float32), (0, 0), 3) * 10
        write_sample(tmp_path, f"s{i}", frame, np.abs(flow) if i % 2 else flow, rng.uniform(-0.5, 0.5, 48000), 16000)
    (tmp_path / "manifest.csv").write_text("id\n" + "".join(f"s{i}\n" for i in range(4)))
    for preset in ("htf", "htf-released"):
        config = preset_config(preset, **{"data.sample_rate": 16000})
        made, reference = _compare(tmp_path, config, count=4)
        tolerance = 1.5 / 255 if preset == "htf-released" else 1e-3 * float(reference[1].abs().max())
        _check(made, reference, tolerance)


def test_training_with_gpu_inputs_runs_on_folders_and_shards(synth_set, tmp_path):
    shards = tmp_path / "shards"
    pack(synth_set.prepared, shards, progress=False)
    config = small_config(**{"train.gpu_inputs": True, "train.workers": 2})
    for data in (synth_set.prepared, shards):
        model = train(config, data, tmp_path / f"run-{data.name}", pretrained=False, progress=False)
        assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(HearflowError, match="for training"):
        PreparedDataset(synth_set.prepared, small_config(), train=False, encoded=True)
