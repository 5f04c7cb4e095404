"""One localization step: the model's map for one frame, and what is read off it.

``heatmap``: the map upsampled to the frame's size and min-max normalised exactly as
the benchmark metric sees it (`hearflow.metrics.heatmap`); ``peak_xy``: the centre of
the map's highest cell; ``box``: the connected region around the peak at or above
`BOX_THRESHOLD`; ``confidence``: the raw map's peak as the metric sees it
(`hearflow.negatives.map_max`); ``sounding``: ``confidence > sounding_threshold`` (None
without a calibrated threshold). See `hearflow.localize` for the exact rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from hearflow.errors import HearflowError, option
from hearflow.metrics import heatmap
from hearflow.negatives import map_max

# Heatmap level (after min-max normalisation) that bounds the box: of 0.5 to 0.9, the
# level whose box best overlapped the sounding object's on the demo's test clips, for
# HTF and LVS alike (bench/localize_peaks.py); 0.5 gave boxes of over half the frame.
BOX_THRESHOLD = 0.6


@dataclass
class LocalizationStep:
    """The model's answer for one frame. Coordinates are video pixels, display orientation.

    time_s: the frame's timestamp (seconds from the start of the file); frame: its
    index (0-based, presentation order); both None for `Localizer.localize_arrays`.
    similarity: float32 h x w raw cosine map; heatmap: float32 H x W in [0, 1] at the
    frame's size; peak_xy: (x, y); box: (x0, y0, x1, y1) pixel edges; confidence:
    `hearflow.negatives.map_max` of ``similarity``; sounding: whether a visible object
    makes the sound (``confidence > sounding_threshold``), None when uncalibrated. See
    the module docstring for the exact rules.
    """

    time_s: float | None
    frame: int | None
    similarity: np.ndarray
    heatmap: np.ndarray
    peak_xy: tuple[int, int]
    box: tuple[int, int, int, int]
    confidence: float
    sounding: bool | None = None

    def to_dict(self) -> dict:
        """The step as written in ``{stem}.json``: time_s, frame, peak_xy, box, confidence, sounding."""
        return {
            "time_s": None if self.time_s is None else round(float(self.time_s), 6),
            "frame": self.frame,
            "peak_xy": [int(v) for v in self.peak_xy],
            "box": [int(v) for v in self.box],
            "confidence": round(float(self.confidence), 6),
            "sounding": self.sounding,
        }


def map_peak(similarity: np.ndarray, width: int, height: int) -> tuple[int, int]:
    """The centre, in pixels of a ``width x height`` frame, of the ``h x w`` map's highest cell
    (first in raster order on ties): ``(floor((c + 0.5) W / w), floor((r + 0.5) H / h))``.

    The model's own answer. The upsampled heatmap's highest pixel can lie up to a cell
    away (bicubic interpolation between cells moves it), and on the demo's test clips it
    fell inside the sounding object less often (bench/localize_peaks.py).
    """
    rows, columns = similarity.shape
    row, column = np.unravel_index(int(np.argmax(similarity)), similarity.shape)
    return int((column + 0.5) * width / columns), int((row + 0.5) * height / rows)


def region_box(heatmap: np.ndarray, seed_xy: tuple[int, int], threshold: float = BOX_THRESHOLD) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` (pixel edges: it covers ``x0 <= x < x1``, ``y0 <= y < y1``) of the
    8-connected region of heatmap pixels >= ``threshold`` that holds ``seed_xy``; when that
    pixel is below the threshold, the level is lowered to its value (the whole frame for an
    all-zero heatmap)."""
    x, y = seed_xy
    mask = (heatmap >= min(threshold, float(heatmap[y, x]))).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    left, top, width, height = (int(v) for v in stats[labels[y, x], :4])
    return left, top, left + width, top + height


def peak_and_box(heatmap: np.ndarray, threshold: float = BOX_THRESHOLD) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """The heatmap's highest pixel (x, y) (first in raster order on ties) and `region_box` around it."""
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return (int(x), int(y)), region_box(heatmap, (int(x), int(y)), threshold)


def make_step(similarity: np.ndarray, width: int, height: int, time_s: float | None, frame: int | None,
              sounding_threshold: float | None = None) -> LocalizationStep:
    """A `LocalizationStep` from one h x w similarity map, for a frame of ``width x height`` pixels:
    peak_xy from `map_peak`, box from `region_box` around it; sounding_threshold: the calibrated
    decision's threshold (None: ``sounding`` is None)."""
    if not np.isfinite(similarity).all():
        where = "" if frame is None else f" at frame {frame} ({time_s:.3f} s)"
        raise HearflowError(f"the model's map{where} holds NaN or infinite values: the checkpoint is damaged or "
                            "the input is one the model cannot handle")
    full = heatmap(similarity, width, height)
    peak_xy = map_peak(similarity, width, height)
    confidence = float(map_max(similarity[None])[0])
    sounding = None if sounding_threshold is None else bool(confidence > sounding_threshold)
    return LocalizationStep(time_s, frame, similarity, full, peak_xy, region_box(full, peak_xy), confidence, sounding)


def check_step_options(every: float | None, key_frame_only: bool) -> None:
    """HearflowError unless the step options make sense: `every` > 0, not with `key_frame_only`."""
    if every is not None and key_frame_only:
        raise HearflowError(f"choose either {option('--every SECONDS', 'every=SECONDS')} or "
                            f"{option('--key-frame', 'key_frame_only=True')}, not both")
    if every is not None and not every > 0:
        raise HearflowError(f"{option('--every', 'every')} must be a positive number of seconds, got {every}")
