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


# ---------------------------------------------------------------------------------------
# The fast paths against the obvious ones


def _reference_image_flow(frame, flow, config, train, rng=None):
    """The transform as first written: whole resizes with Pillow, then the crop and flip,
    arithmetic normalisation; the reference of the faster code (bit for bit at test time)."""
    from PIL import Image

    size = config.image_size
    height, width = frame.shape[:2]
    if train:
        target = (int(config.train_resize * width / height), config.train_resize) if width > height else \
            (config.train_resize, int(config.train_resize * height / width))
    else:
        target = (size, size)
    image = np.asarray(Image.fromarray(frame).resize(target, Image.BICUBIC))
    if config.flow_encoding == "signed":
        scale = (target[0] / flow.shape[1], target[1] / flow.shape[0])
        flow = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(flow[..., c])).resize(target, Image.BILINEAR))
                         * scale[c] for c in range(2)], axis=-1).astype(np.float32)
    else:
        levels = np.clip(np.rint(flow), 0, 255).astype(np.uint8)
        flow = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(levels[..., c])).resize(target, Image.BICUBIC))
                         for c in range(2)], axis=-1).astype(np.float32) / 255
    if train:
        top = int(rng.integers(0, target[1] - size + 1))
        left = int(rng.integers(0, target[0] - size + 1))
        image, flow = image[top : top + size, left : left + size], flow[top : top + size, left : left + size]
        if rng.random() < 0.5:
            image, flow = image[:, ::-1], flow[:, ::-1]
            if config.flow_encoding == "signed" and config.flip_negates_flow:
                flow = flow * np.array([-1, 1], dtype=np.float32)
    image = (image.astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    return image.transpose(2, 0, 1), flow.transpose(2, 0, 1)


def _random_pair(rng, height, width, flow_size=None):
    import cv2

    frame = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 1.0)
    flow_height, flow_width = flow_size or (height, width)
    flow = cv2.GaussianBlur(rng.normal(0, 4, (flow_height, flow_width, 2)).astype(np.float32), (0, 0), 2.0)
    return frame, flow.astype(np.float32) * 20


@pytest.mark.parametrize("preset", ["htf", "htf-released"])
def test_the_test_transform_is_bit_identical_to_the_reference(preset):
    rng = np.random.default_rng(11)
    config = data_config(preset)
    for height, width, flow_size in [(256, 455, None), (256, 341, None), (300, 256, None), (256, 455, (128, 227))]:
        frame, flow = _random_pair(rng, height, width, flow_size)
        if preset == "htf-released":
            flow = np.abs(flow) * 4
        image, flow_tensor = image_flow_tensors(frame, flow, config, train=False)
        ref_image, ref_flow = _reference_image_flow(frame, flow, config, train=False)
        np.testing.assert_array_equal(image.numpy(), ref_image)
        np.testing.assert_array_equal(flow_tensor.numpy(), ref_flow)


@pytest.mark.parametrize("preset", ["htf", "htf-released"])
def test_the_train_transform_equals_the_reference_within_rounding(preset):
    """torch's fixed-point port of Pillow's antialiased bicubic moves under 1 % of the pixels
    by one grey level (rarely two), with no bias; resizing only the crop's region of the
    flow moves it by float rounding; the crop and flip drawn from the same generator are
    the same."""
    rng = np.random.default_rng(12)
    config = data_config(preset)
    one_level = 1 / 255 / IMAGENET_STD.min()
    changed, total, signed_sum = 0, 0, 0.0
    for seed in range(8):
        frame, flow = _random_pair(rng, 256, 455, (128, 227) if seed % 4 == 3 else None)
        if preset == "htf-released":
            flow = np.abs(flow) * 4
        image, flow_tensor = image_flow_tensors(frame, flow, config, True, np.random.default_rng(seed))
        ref_image, ref_flow = _reference_image_flow(frame, flow, config, True, np.random.default_rng(seed))
        signed = (image.numpy() - ref_image) * 255 * IMAGENET_STD[:, None, None]  # grey levels
        difference = np.abs(image.numpy() - ref_image)
        assert difference.max() <= 2 * one_level * 1.0001
        changed += int((difference > 1e-6).sum())
        total += difference.size
        signed_sum += float(signed.sum())
        tolerance = 1 / 255 + 1e-6 if preset == "htf-released" else 1e-4 * np.abs(ref_flow).max()
        assert np.abs(flow_tensor.numpy() - ref_flow).max() <= tolerance
    assert 0 < changed / total < 0.01  # not bit-identical: this test knows the other kernel is used
    assert abs(signed_sum / total) < 0.002  # mean shift in grey levels


@pytest.mark.parametrize("preset", ["htf", "htf-released"])
def test_torch_spectrogram_equals_scipys_to_1e_5(preset):
    from hearflow.data.transforms import torch_spectrogram

    config = data_config(preset)
    rng = np.random.default_rng(13)
    length = audio_window_length(config)
    t = np.arange(length) / config.sample_rate
    windows = np.stack([
        rng.uniform(-1, 1, length),
        0.3 + 0.01 * rng.standard_normal(length),  # a DC offset: what the detrending removes
        0.5 * np.sin(2 * np.pi * 440 * t) * (t > 1.0),  # silence, then a tone
        np.zeros(length),
    ]).astype(np.float32)
    fast = torch_spectrogram(torch.from_numpy(windows), config)
    assert fast.shape == (4, 1, 257, spectrogram(windows[0], config).shape[2]) and fast.dtype == torch.float32
    for row, window in enumerate(windows):
        np.testing.assert_allclose(fast[row].numpy(), spectrogram(window, config), rtol=0, atol=1e-5)
    with pytest.raises(HearflowError, match="at least 512"):
        torch_spectrogram(torch.zeros(1, 100), config)
