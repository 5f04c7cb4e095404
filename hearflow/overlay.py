"""Drawing heatmaps onto frames: the one colormap and blend used by every figure and video.

`hearflow localize` (overlay videos and stills), `hearflow evaluate --save-maps` and
the demo's figure all call `overlay_heatmap`, so a heatmap looks the same everywhere;
`hearflow.metrics.heatmap` turns a model's similarity map into such a heatmap at any
size. Images are RGB uint8 H x W x 3 (numpy), heatmaps float H x W in [0, 1].
"""

from __future__ import annotations

import cv2
import numpy as np

DEFAULT_ALPHA = 0.5  # weight of the heatmap colours in the blend
FADED_ALPHA = 0.12  # the weight where the calibrated decision says no visible object sounds


def step_alpha(sounding: bool | None) -> float:
    """The blend weight of a heatmap whose decision is ``sounding``: faded when it is False
    (nothing visible makes the sound), the usual weight when True or uncalibrated (None)."""
    return FADED_ALPHA if sounding is False else DEFAULT_ALPHA


def heatmap_colors(heatmap: np.ndarray) -> np.ndarray:
    """Colour a float H x W heatmap in [0, 1] with the jet colormap: RGB uint8 H x W x 3.

    0 is dark blue, 1 dark red; values outside [0, 1] are clipped.
    """
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be H x W, got shape {heatmap.shape}")
    levels = np.clip(heatmap.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def heatmap_scale(width: int, height: int) -> np.ndarray:
    """The colour scale of `heatmap_colors`: RGB uint8 ``height x width``, 0 at the left, 1 at the right."""
    return heatmap_colors(np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1)))


def overlay_heatmap(frame: np.ndarray, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Blend a heatmap onto a frame: ``(1 - alpha) * frame + alpha * heatmap_colors(heatmap)``.

    frame: RGB uint8 H x W x 3; heatmap: float H x W in [0, 1] (same H x W as the frame);
    alpha in [0, 1]. Returns a new RGB uint8 H x W x 3 image (rounded to nearest).
    """
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be RGB uint8 H x W x 3, got {frame.dtype} {frame.shape}")
    if np.shape(heatmap) != frame.shape[:2]:
        raise ValueError(f"heatmap shape {np.shape(heatmap)} does not match frame size {frame.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return cv2.addWeighted(frame, 1.0 - alpha, heatmap_colors(heatmap), alpha, 0.0)


def draw_box(
    image: np.ndarray,
    box: tuple[int, int, int, int],
    color: tuple[int, int, int] = (255, 255, 255),
    thickness: int = 2,
) -> np.ndarray:
    """A copy of RGB ``image`` with the rectangle ``box = (x0, y0, x1, y1)`` (pixels, inclusive) drawn."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return cv2.rectangle(np.ascontiguousarray(image).copy(), (x0, y0), (x1, y1), color, thickness)


def draw_marker(
    image: np.ndarray,
    point_xy: tuple[int, int],
    color: tuple[int, int, int] = (255, 255, 255),
    size: int | None = None,
) -> np.ndarray:
    """A copy of RGB ``image`` with a cross marker at ``point_xy = (x, y)`` (pixels).

    size: the marker's width in pixels; default 1/20 of the image's short side (at least 8).
    """
    image = np.ascontiguousarray(image).copy()
    size = size or max(8, min(image.shape[:2]) // 20)
    x, y = (int(round(v)) for v in point_xy)
    thickness = max(1, size // 8)
    return cv2.drawMarker(image, (x, y), color, cv2.MARKER_CROSS, size, thickness)
