"""hearflow.data.transforms: the released spectrogram, paired image/flow geometry and flow encodings."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from hearflow.config import preset_config
from hearflow.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    audio_window_length,
    image_flow_tensors,
    spectrogram,
)
from hearflow.errors import HearflowError
from hearflow.synthetic.presets import demo_config

HEIGHT, WIDTH = 200, 300  # frame size of these tests; train resize: 246 x 369, scale 1.23


def data_config(preset="htf", **overrides):
    return preset_config(preset, **overrides).data


# ---------------------------------------------------------------------------------------
# Audio


@pytest.mark.parametrize("preset, rate, frames", [("htf", 16000, 200), ("htf-released", 22050, 276)])
def test_spectrogram_is_the_released_front_end(preset, rate, frames):
    config = data_config(preset)
    assert config.sample_rate == rate
    length = audio_window_length(config)
    assert length == 3 * rate
    audio = np.random.default_rng(0).uniform(-1, 1, length).astype(np.float32)
    spec = spectrogram(audio, config)
    assert spec.shape == (1, 257, frames) and spec.dtype == np.float32
    _, _, power = scipy.signal.spectrogram(audio.astype(np.float64), rate, nperseg=512, noverlap=274)
    np.testing.assert_allclose(spec[0], (np.log(power + 1e-7) - 0.0) / 12.0, rtol=0, atol=1e-5)


def test_spectrogram_peak_of_a_tone():
    config = data_config()
    t = np.arange(audio_window_length(config)) / config.sample_rate
    spec = spectrogram(np.sin(2 * np.pi * 1000 * t).astype(np.float32), config)
    assert np.argmax(spec[0].mean(axis=1)) == 32  # 1000 Hz / (16000 Hz / 512) = bin 32


def test_spectrogram_rejects_short_or_stereo_audio():
    with pytest.raises(HearflowError, match="at least 512 samples"):
        spectrogram(np.zeros(100, np.float32), data_config())
    with pytest.raises(HearflowError, match="mono"):
        spectrogram(np.zeros((48000, 2), np.float32), data_config())


# ---------------------------------------------------------------------------------------
# Image and flow


def coordinate_frame():
    """Red encodes x, green encodes y, blue marks the moving square (rows 80..139, cols 100..179)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    frame[..., 0] = np.round(x * 255 / (WIDTH - 1))
    frame[..., 1] = np.round(y * 255 / (HEIGHT - 1))
    frame[80:140, 100:180, 2] = 255
    return frame


def square_flow():
    """The square moves 3 px to the right; the background is still."""
    flow = np.zeros((HEIGHT, WIDTH, 2), np.float32)
    flow[80:140, 100:180, 0] = 3.0
    return flow


def coordinate_flow():
    """A flow whose components are the pixel's own coordinates (a tag to follow crops)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    return np.stack([x, y], axis=-1)


def unnormalise(image: torch.Tensor) -> np.ndarray:
    return (image.numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN) * 255


def is_flipped(image: torch.Tensor) -> bool:
    red = unnormalise(image)[..., 0]
    return red[:, -1].mean() < red[:, 0].mean()


def test_test_transform_shapes_normalisation_and_flow_scaling():
    config = data_config()
    frame = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    flow = np.zeros((HEIGHT, WIDTH, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -2.0
    image, flow_tensor = image_flow_tensors(frame, flow, config, train=False)
    assert image.shape == (3, 224, 224) and flow_tensor.shape == (2, 224, 224)
    assert image.dtype == torch.float32 and flow_tensor.dtype == torch.float32
    expected = (128 / 255 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(image.numpy()[:, 100, 100], expected, rtol=1e-6)
    # 300 x 200 -> 224 x 224: dx scales by 224 / 300, dy by 224 / 200
    np.testing.assert_allclose(flow_tensor[0].numpy(), 3.0 * 224 / 300, rtol=1e-5)
    np.testing.assert_allclose(flow_tensor[1].numpy(), -2.0 * 224 / 200, rtol=1e-5)


def test_flow_at_another_resolution_is_resized_to_the_frame_geometry():
    config = data_config()
    half = np.zeros((HEIGHT // 2, WIDTH // 2, 2), np.float32)
    half[..., 0] = 1.5  # pixels of the half-size flow: 3 px at full size
    _, flow_tensor = image_flow_tensors(coordinate_frame(), half, config, train=False)
    np.testing.assert_allclose(flow_tensor[0].numpy(), 1.5 * 224 / 150, rtol=1e-5)


def _train_runs(config, flow, seeds=range(12)):
    runs = [image_flow_tensors(coordinate_frame(), flow, config, True, np.random.default_rng(seed)) for seed in seeds]
    flips = [is_flipped(image) for image, _ in runs]
    assert any(flips) and not all(flips), "the seeds should give flipped and unflipped samples"
    return runs, flips


def _square_dx(image, flow):
    inside = unnormalise(image)[..., 2] > 250
    inside[:, :3] = inside[:, -3:] = False
    return flow[0].numpy()[inside]


def test_flip_negates_dx_of_signed_flow():
    runs, flips = _train_runs(data_config(), square_flow())
    for (image, flow), flipped in zip(runs, flips):
        dx = _square_dx(image, flow)
        assert dx.size > 1000
        np.testing.assert_allclose(np.median(dx), (-3.0 if flipped else 3.0) * 1.23, rtol=1e-4)
        assert np.all(flow[1].numpy() == 0)


def test_released_flip_keeps_dx():
    runs, flips = _train_runs(data_config(flip_negates_flow=False), square_flow())
    for (image, flow), flipped in zip(runs, flips):
        np.testing.assert_allclose(np.median(_square_dx(image, flow)), 3.0 * 1.23, rtol=1e-4)


@pytest.mark.parametrize("negates", [True, False])
def test_image_and_flow_crops_line_up(negates):
    runs, flips = _train_runs(data_config(flip_negates_flow=negates), coordinate_flow())
    offsets = set()
    for (image, flow), flipped in zip(runs, flips):
        pixels = unnormalise(image)[4:-4, 4:-4]
        x_image = pixels[..., 0] * (WIDTH - 1) / 255
        y_image = pixels[..., 1] * (HEIGHT - 1) / 255
        # flow components: the original coordinates in pixels of the 369 x 246 resize
        x_flow = np.abs(flow[0].numpy()[4:-4, 4:-4]) / 1.23
        y_flow = flow[1].numpy()[4:-4, 4:-4] / 1.23
        assert np.abs(x_image - x_flow).max() < 1.5 and np.abs(y_image - y_flow).max() < 1.5
        if negates and flipped:
            assert flow[0].numpy().max() <= 0
        else:
            assert flow[0].numpy().min() >= 0
        offsets.add((round(float(x_flow[0, 0])), round(float(y_flow[0, 0]))))
    assert len(offsets) > 3, "crops should vary with the seed"


def test_train_output_shapes_and_determinism():
    config = data_config()
    first = image_flow_tensors(coordinate_frame(), square_flow(), config, True, np.random.default_rng(5))
    again = image_flow_tensors(coordinate_frame(), square_flow(), config, True, np.random.default_rng(5))
    assert first[0].shape == (3, 224, 224) and first[1].shape == (2, 224, 224)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_small_preset_geometry():
    config = demo_config("cpu-small").data
    image, flow = image_flow_tensors(coordinate_frame(), square_flow(), config, True, np.random.default_rng(0))
    assert image.shape == (3, 64, 64) and flow.shape == (2, 64, 64)


def test_official_encoding_clips_and_never_scales_or_negates():
    config = data_config("htf-released", flip_negates_flow=True)
    assert config.flow_encoding == "official"
    flow = np.zeros((HEIGHT, WIDTH, 2), np.float32)
    flow[..., 0], flow[..., 1] = 300.0, -5.0
    _, test_flow = image_flow_tensors(coordinate_frame(), flow, config, train=False)
    assert torch.all(test_flow[0] == 1.0) and torch.all(test_flow[1] == 0.0)
    flow[..., 0] = 128.0  # a released-layout flow image value
    for seed in range(6):
        _, train_flow = image_flow_tensors(coordinate_frame(), flow, config, True, np.random.default_rng(seed))
        np.testing.assert_allclose(train_flow[0].numpy(), 128 / 255, rtol=1e-6)


def test_bad_arrays_are_clear_errors():
    config = data_config()
    with pytest.raises(HearflowError, match="RGB uint8"):
        image_flow_tensors(coordinate_frame().astype(np.float32), square_flow(), config, train=False)
    with pytest.raises(HearflowError, match="h x w x 2"):
        image_flow_tensors(coordinate_frame(), np.zeros((HEIGHT, WIDTH, 3), np.float32), config, train=False)
