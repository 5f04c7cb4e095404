"""hearflow.media.flow: working size, flow sign and scale on known motion, aggregation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hearflow.config import preset_config
from hearflow.errors import HearflowError
from hearflow.media.flow import aggregate_flow, compute_flow, flow_between, pair_window, working_size

HEIGHT, WIDTH = 240, 320
SQUARE = (90, 150, 100, 160)  # rows, columns of the square in the first frame


def moving_square(shift_px: int) -> np.ndarray:
    """A textured square shifted right by `shift_px` on a static textured background (RGB)."""
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(60, 200, (HEIGHT, WIDTH, 3), dtype=np.uint8), (0, 0), 3)
    square = cv2.GaussianBlur(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8), (0, 0), 1.5)
    frame = background.copy()
    top, bottom, left, right = SQUARE
    frame[top:bottom, left + shift_px : right + shift_px] = square
    return frame


def regions(flow: np.ndarray, scale: float):
    """(inside the square, far from it) parts of a flow field at `scale` of the original."""
    top, bottom, left, right = (int(round(v * scale)) for v in SQUARE)
    margin = int(round(12 * scale))
    inside = flow[top + margin : bottom - margin, left + margin : right - margin]
    outside = flow[:, int(round(230 * scale)) :]
    return inside, outside


def test_working_size():
    assert working_size(640, 360, 256) == (455, 256)
    assert working_size(360, 640, 256) == (256, 455)
    assert working_size(3840, 2160, 256) == (455, 256)
    assert working_size(4000, 2000, 256) == (512, 256)
    assert working_size(200, 100, 256) == (200, 100)  # never enlarged
    assert working_size(640, 360, None) == working_size(640, 360, 0) == (640, 360)


@pytest.mark.parametrize("method", ["farneback", "dis"])
@pytest.mark.parametrize("short_side", [None, 120])
def test_square_moving_right_gives_positive_dx_inside_only(method, short_side):
    frame, flow = compute_flow(moving_square(0), moving_square(3), method, short_side)
    scale = 1.0 if short_side is None else short_side / HEIGHT
    assert frame.shape[:2] == flow.shape[:2] == (round(HEIGHT * scale), round(WIDTH * scale))
    assert flow.dtype == np.float32
    inside, outside = regions(flow, scale)
    assert np.median(inside[..., 0]) == pytest.approx(3 * scale, abs=0.25 * scale)
    assert abs(np.median(inside[..., 1])) < 0.2 * scale
    assert np.abs(outside).mean() < 0.15
    # and moving left is the mirror image
    _, backwards = compute_flow(moving_square(3), moving_square(0), method, short_side)
    assert np.median(regions(backwards, scale)[0][..., 0]) == pytest.approx(-3 * scale, abs=0.25 * scale)


def test_stored_frame_is_the_resized_key_frame():
    first = moving_square(0)
    frame, _ = compute_flow(first, moving_square(3), "farneback", 120)
    assert np.array_equal(frame, cv2.resize(first, (160, 120), interpolation=cv2.INTER_AREA))
    full, _ = compute_flow(first, moving_square(3), "farneback", None)
    assert full is first or np.array_equal(full, first)


def test_aggregate_is_the_mean_of_the_pair_flows():
    frames = [moving_square(s) for s in (0, 2, 6)]  # steps of +2 then +4 px
    key_frame, mean = aggregate_flow(frames, "farneback", None, key=1)
    assert np.array_equal(key_frame, frames[1])
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    expected = (flow_between(gray[0], gray[1]) + flow_between(gray[1], gray[2])) / 2
    assert np.allclose(mean, expected, atol=1e-5)
    top, bottom, left, right = SQUARE
    inside = mean[top + 15 : bottom - 15, left + 18 : right - 10, 0]
    assert np.median(inside) == pytest.approx(3.0, abs=0.3)


def test_pair_window_keeps_the_pairs_inside_the_video():
    assert pair_window(10, 1, 100) == 10  # the key frame and the next one
    assert pair_window(10, 3, 100) == 9  # pairs (9,10) (10,11) (11,12)
    assert pair_window(10, 4, 100) == 9  # pairs (9,10) .. (12,13)
    assert pair_window(0, 3, 100) == 0
    assert pair_window(98, 3, 100) == 96  # frames 96..99
    assert pair_window(1, 5, 4) == 0  # fewer frames than asked for: start at 0


def test_unknown_method_and_single_frame_are_errors():
    with pytest.raises(HearflowError, match="unknown flow method"):
        compute_flow(moving_square(0), moving_square(1), "lucas-kanade")
    with pytest.raises(HearflowError, match="two frames"):
        aggregate_flow([moving_square(0)])


@pytest.mark.parametrize("negates", [True, False])
def test_horizontal_flip_in_the_data_pipeline_negates_dx(negates):
    from hearflow.data.transforms import image_flow_tensors

    frame, flow = compute_flow(moving_square(0), moving_square(3), "farneback", None)
    frame = frame.copy()
    frame[:, : WIDTH // 2] = 0  # dark left half: tells whether the image was flipped
    config = preset_config("htf", flip_negates_flow=negates).data
    seen = set()
    for seed in range(16):
        image, flow_tensor = image_flow_tensors(frame, flow, config, True, np.random.default_rng(seed))
        half = image.shape[-1] // 2
        flipped = bool(image[:, :, :half].mean() > image[:, :, half:].mean())
        dx = flow_tensor[0].numpy()
        moving = np.abs(dx) > 0.5 * np.abs(dx).max()
        assert moving.any()
        sign = np.sign(np.median(dx[moving]))
        assert sign == (-1 if flipped and negates else 1), f"seed {seed}, flipped {flipped}"
        seen.add(flipped)
    assert seen == {True, False}
