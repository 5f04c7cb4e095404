"""Dense optical flow between consecutive frames (OpenCV): Farnebäck (paper) or DIS (fast).

Frames are converted to grayscale and resized to a working size (short side
`short_side`, aspect kept, never enlarged), and the flow is computed between them, so
flow vectors are in pixels of the resized frame, which is also the frame that gets
stored. ``flow[y, x] = (dx, dy)``: the pixel at (x, y) in the first frame moves to
(x + dx, y + dy) in the second.
"""

from __future__ import annotations

import cv2
import numpy as np

from hearflow.config import FLOW_METHODS
from hearflow.errors import HearflowError

# The paper's Farnebäck parameters.
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)

# DIS: OpenCV's ULTRAFAST preset (8 px patches, no variational refinement) stopped
# at pyramid scale 1 (half the working size) instead of 2. About 4x faster than
# Farnebäck at 256 px; the presets that stop at scale 2 miss most of the motion of
# objects a few dozen pixels wide.
DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST
DIS_FINEST_SCALE = 1
_dis = None  # one DIS object per process, created on first use


def working_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(w, h) with the short side scaled to `short_side`, aspect kept; None or 0 keeps the size.

    Frames smaller than `short_side` keep their size (enlarging adds no motion detail).
    """
    if not short_side or min(width, height) <= short_side:
        return int(width), int(height)
    scale = short_side / min(width, height)
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def resize_frame(frame: np.ndarray, short_side: int | None) -> np.ndarray:
    """`frame` (H x W or H x W x C uint8) resized to `working_size` with area averaging."""
    height, width = frame.shape[:2]
    size = working_size(width, height, short_side)
    if size == (width, height):
        return frame
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame


def flow_between(first_gray: np.ndarray, second_gray: np.ndarray, method: str = "farneback") -> np.ndarray:
    """Flow (float32 H x W x 2, dx dy in pixels) from one grayscale uint8 frame to the next."""
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(first_gray, second_gray, None, **FARNEBACK)
    if method == "dis":
        global _dis
        if _dis is None:
            _dis = cv2.DISOpticalFlow_create(DIS_PRESET)
            _dis.setFinestScale(DIS_FINEST_SCALE)
        return _dis.calc(first_gray, second_gray, None)
    raise HearflowError(f"unknown flow method {method!r}; choose one of {', '.join(FLOW_METHODS)}")


def compute_flow(
    frame: np.ndarray, next_frame: np.ndarray, method: str = "farneback", short_side: int | None = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(frame resized to the working size, uint8 H x W x 3; flow float32 H x W x 2 in its pixels)."""
    resized, flow = aggregate_flow([frame, next_frame], method, short_side)
    return resized, flow


def aggregate_flow(
    frames: list[np.ndarray], method: str = "farneback", short_side: int | None = 256, key: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Mean flow over the consecutive pairs of `frames` (k + 1 frames give k pairs).

    Each pair's flow is computed at the working size and the k fields are averaged
    per pixel (the average motion per frame step around the key frame; the fields
    are not chained). Returns (frames[key] resized, mean flow float32 H x W x 2).
    """
    if len(frames) < 2:
        raise HearflowError("flow needs at least two frames")
    if any(frame.shape != frames[0].shape for frame in frames):
        raise HearflowError(f"frames of different sizes: {sorted({frame.shape for frame in frames})}")
    grays = [resize_frame(_gray(frame), short_side) for frame in frames]  # one channel to resize, not three
    flow = flow_between(grays[0], grays[1], method)
    if len(grays) > 2:
        for first, second in zip(grays[1:-1], grays[2:]):
            flow += flow_between(first, second, method)
        flow /= np.float32(len(grays) - 1)
    return resize_frame(frames[key], short_side), flow


def pair_window(key: int, pairs: int, n_frames: int) -> int:
    """First frame index of the `pairs` + 1 frames around `key` used by `aggregate_flow`.

    The pairs are (key - (k-1)//2, ...) .. (key + k//2, key + k//2 + 1), shifted to
    stay inside the video; k = 1 is the key frame and the next one.
    """
    first = key - (pairs - 1) // 2
    return int(min(max(first, 0), max(n_frames - pairs - 1, 0)))
