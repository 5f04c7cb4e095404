"""The benchmark metrics of sound-source localization, as the published tables computed them.

The protocol (``../shared/notes/method-and-protocol.md``, the released HTF/LVS code):

1. the similarity map of a pair (``h x w``, float32) is resized to 224 x 224 with
   OpenCV's bicubic interpolation and min-max normalised (left as is when max == min);
2. threshold ``t`` = the value at index 224*224/2 of the ascending sorted map;
   predicted pixels are those above ``t`` (see `_binarize` for the released edge cases);
3. the ground truth is a 224 x 224 map, made by its benchmark
   (`hearflow.data.annotations`: the Flickr annotators' consensus, the VGG-SS union);
4. cIoU = sum(pred * gt) / (sum(gt) + sum(pred * (gt == 0))).

Over a set: cIoU@0.5 (fraction of samples with cIoU >= 0.5), AUC (trapezoidal area
under the fraction of samples with cIoU >= x for x = 0, 0.05, ..., 1) and mean cIoU
(`summarize`); AP and max-F1 over a per-sample confidence on sets with no-source
samples (`ap_max_f1`), the confidence one of the registry `CONFIDENCES`
(`register_confidence`): ``slavc`` (SLAVC's, for its tables), ``peak`` (the largest
cell of the h x w map) and ``map_max`` (the largest value of the raw map upsampled as
the metric sees it: the negative-audio metrics', calibration's and localize's).

`heatmap` is the same upsampling and normalisation at any size, for display (overlays,
figures, `hearflow localize`): what a user sees is what the metric scores.

Everything but the resize (one OpenCV call per map, `upsample_maps`) is vectorised
over the samples, and every per-sample cIoU equals the released loop's bit for bit
(tests/test_metrics.py). The resize takes OpenCV's own float32 code path, the one
OpenCV 4.x took when the published numbers were made: newer wheels (>= 4.11, 5.x) may
route float resizes through Intel IPP, whose results differ by up to a float32 ulp,
which moves a pixel across the threshold in about one sample per thousand (a cIoU
change of ~4e-6 there), never the published three digits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import cv2
import numpy as np

from hearflow.errors import HearflowError

MAP_SIZE = 224  # side of the ground-truth and the resized prediction maps (pixels)
THRESHOLD_INDEX = MAP_SIZE * MAP_SIZE // 2  # position of t in the ascending sorted map
AUC_THRESHOLDS = 0.05 * np.arange(21)  # 0, 0.05, ..., 1.0, the same float64 values as 0.05 * i
_CHUNK = 8  # samples per vectorised step of `ciou`: keeps its working set in the CPU cache


# ----------------------------------------------------------------------------------------
# Predictions


def upsample_maps(similarity_maps, size: int | tuple[int, int] = MAP_SIZE) -> np.ndarray:
    """Resize ``N x h x w`` maps to ``N x size x size`` (or ``size = (width, height)``)
    float32 with OpenCV's bicubic.

    One ``cv2.resize(..., INTER_CUBIC)`` per map (a multi-channel resize rounds
    differently), on OpenCV's own code path: Intel IPP, which newer OpenCV wheels use
    for float resizes and OpenCV 4.x (the released code's) did not, is switched off for
    these calls on this thread (the switch is thread-local) and restored afterwards.
    """
    maps = np.ascontiguousarray(similarity_maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"similarity maps must be N x h x w, got shape {maps.shape}")
    width, height = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    out = np.empty((len(maps), height, width), np.float32)
    ipp = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    try:
        for similarity, resized in zip(maps, out):
            cv2.resize(similarity, (width, height), dst=resized, interpolation=cv2.INTER_CUBIC)
    finally:
        cv2.ipp.setUseIPP(ipp)
    return out


def heatmap(similarity: np.ndarray, width: int, height: int) -> np.ndarray:
    """One ``h x w`` map as the metric sees it, at ``height x width``: float32 in [0, 1].

    Upsampled as `upsample_maps` does and min-max normalised as `ciou` does
    (`normalise_maps`), except that a flat map (all cells equal) gives zeros rather
    than its interpolation's rounding noise stretched to [0, 1].
    """
    similarity = np.asarray(similarity, np.float32)
    if similarity.max() == similarity.min():
        return np.zeros((int(height), int(width)), np.float32)
    resized = upsample_maps(similarity[None], (width, height))
    return normalise_maps(resized.reshape(1, -1)).reshape(resized.shape[1:])


def _binarize(normalised_maps: np.ndarray) -> np.ndarray:
    """Boolean prediction of min-max-normalised maps ``N x P`` (float32), as released.

    The released code sets pixels above t to 1, then pixels below 1 to 0, then keeps
    pixels >= 0.5: prediction = (m > t) or (m >= 1). The second term matters only when
    t >= 1 (the upper half of a map flat at its maximum, or a constant map >= 1, which
    normalisation leaves as is); then the prediction is m >= 1.

    t is selected on the float32 bit patterns read as int32 (about 2x faster than a
    float selection): for the normalised maps (no value below zero) their order is the
    values' order, -0.0 coming first with +0.0; a constant map's elements are all equal.
    """
    kth = np.partition(normalised_maps.view(np.int32), THRESHOLD_INDEX, axis=1)[:, THRESHOLD_INDEX]
    threshold = kth.view(np.float32)
    below_one = np.nextafter(np.float32(1), np.float32(0))
    threshold = np.where(threshold >= 1, below_one, threshold)
    return normalised_maps > threshold[:, None]


def predicted_masks(upsampled_maps: np.ndarray) -> np.ndarray:
    """The protocol's prediction of ``N x 224 x 224`` float32 maps (`upsample_maps`'s output):
    boolean ``N x 224*224``, each map min-max normalised and binarised above its median
    exactly as `ciou` does. The input is not modified."""
    values = np.array(upsampled_maps, dtype=np.float32).reshape(len(upsampled_maps), -1)
    return _binarize(normalise_maps(values))


def ciou(similarity_maps, gt_maps) -> np.ndarray:
    """Per-sample cIoU (float64, N) of similarity maps ``N x h x w`` against ground-truth
    maps ``N x 224 x 224``, following the protocol step by step (module docstring).

    Maps are taken as float32 (the released code resized the model's float32 output);
    ground truth may be any float array (summed in its own precision, exactly for the
    benchmarks' values 0, 0.5 and 1). A sample whose ground truth and prediction are
    both empty (only possible for a constant map below 1) has a zero denominator: its
    cIoU is defined as 0 (the released code produced NaN, which its ``>=`` tests also
    count as a miss). An empty ground truth with a non-empty prediction gives 0 too.
    """
    maps = np.asarray(similarity_maps, dtype=np.float32)
    gt = np.asarray(gt_maps)
    if maps.ndim != 3 or gt.shape != (len(maps), MAP_SIZE, MAP_SIZE):
        raise ValueError(
            f"ciou needs similarity maps N x h x w and ground truth N x {MAP_SIZE} x {MAP_SIZE}, "
            f"got {maps.shape} and {gt.shape}"
        )
    if not np.isfinite(maps).all():
        bad = np.flatnonzero(~np.isfinite(maps).reshape(len(maps), -1).all(axis=1))
        raise HearflowError(f"similarity maps hold NaN or inf (samples {bad[:10].tolist()})")
    gt = gt.reshape(len(maps), MAP_SIZE * MAP_SIZE)
    result = np.empty(len(maps), np.float64)
    for start in range(0, len(maps), _CHUNK):
        chunk = slice(start, start + _CHUNK)
        values = upsample_maps(maps[chunk]).reshape(len(result[chunk]), -1)
        result[chunk] = _ciou_of_predictions(_binarize(normalise_maps(values)), gt[chunk])
    return result


def normalise_maps(values: np.ndarray) -> np.ndarray:
    """Min-max normalised ``N x P`` float32 maps, in place (returned), constant maps left as they are."""
    low = values.min(axis=1, keepdims=True)
    span = values.max(axis=1, keepdims=True) - low
    constant = span[:, 0] == 0
    kept = values[constant]
    values -= low
    values /= np.where(constant[:, None], np.float32(1), span)
    values[constant] = kept
    return values


def _ciou_of_predictions(predicted: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """sum(pred * gt) / (sum(gt) + sum(pred * (gt == 0))) per row, 0 where the denominator is 0.

    Sums accumulate in gt's precision: exact in float32 for the benchmarks' maps (values
    0, 0.5, 1: every partial sum is a multiple of 0.5 below 2**24).
    """
    intersection = np.einsum("ij,ij->i", predicted, gt).astype(np.float64)
    outside = _count(predicted & (gt == 0))
    denominator = np.einsum("ij->i", gt).astype(np.float64) + outside
    return np.divide(intersection, denominator, out=np.zeros(len(gt)), where=denominator > 0)


def _count(mask: np.ndarray) -> np.ndarray:
    """True values per row of a 2-D boolean array (a byte sum: ~2x faster than count_nonzero)."""
    return np.add.reduce(mask.view(np.uint8), axis=1, dtype=np.int64)


# ----------------------------------------------------------------------------------------
# Set-level metrics


def summarize(cious) -> dict[str, float]:
    """``{"ciou_at_0_5", "auc", "mean_ciou"}`` of per-sample cIoUs.

    cIoU@0.5 = fraction of samples with cIoU >= 0.5; AUC = trapezoidal area (as
    ``sklearn.metrics.auc``) of y(x) = fraction with cIoU >= x at x = 0, 0.05, ..., 1.0;
    mean_ciou = the mean. Computed with the released code's float64 operations.
    """
    values = np.asarray(cious, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("summarize needs at least one cIoU")
    fractions = (values[:, None] >= AUC_THRESHOLDS).sum(axis=0) / values.size
    widths = np.diff(AUC_THRESHOLDS)
    auc = (widths * (fractions[1:] + fractions[:-1]) / 2.0).sum()
    return {
        "ciou_at_0_5": float(np.sum(values >= 0.5) / values.size),
        "auc": float(auc),
        "mean_ciou": float(np.mean(values)),
    }


def ap_max_f1(confidence, has_source, cious, iou_threshold: float = 0.5) -> dict[str, float]:
    """AP and max-F1 of localisation on a set that contains no-source samples.

    Follows SLAVC (Mo & Morgado, "A closer look at weakly-supervised audio-visual source
    localization", NeurIPS 2022; stoneMo/SLAVC ``utils.EvaluatorFull``), the source of
    these numbers on the "plus silent" test lists. At a confidence threshold c, the
    samples with confidence >= c are detections:

    - true positive: a detection on a sample with a source and cIoU >= iou_threshold;
    - false positive: a detection on a no-source sample, or on a source sample with
      cIoU < iou_threshold (a detection in the wrong place);
    - false negative: a sample with a source and confidence < c;
    - precision = tp / (tp + fp) (1 with no detection), recall = tp / (tp + fn)
      (1 when tp + fn = 0). A mislocalised detection is a false positive, not a miss.

    AP: thresholds = the ascending sorted confidences without the largest, taken from
    the top every max(1, N // 200)-th; precision made monotone (max over the lower
    thresholds); AP = sum_i precision_i * (recall_{i+1} - recall_i).
    max-F1: the largest 2PR / (P + R) (0 when P + R = 0) over the thresholds every
    max(1, N // 10)-th ascending sorted confidence from the smallest.
    The cIoU of a no-source sample is not used.
    """
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    has_source = np.asarray(has_source, dtype=bool).ravel()
    cious = np.asarray(cious, dtype=np.float64).ravel()
    if not (len(confidence) == len(has_source) == len(cious)) or len(confidence) == 0:
        raise ValueError(
            f"ap_max_f1 needs equal, non-zero lengths, got {len(confidence)}, {len(has_source)}, {len(cious)}"
        )
    correct = has_source & (cious >= iou_threshold)
    ranked = np.sort(confidence)
    n = len(ranked)

    ap_thresholds = ranked[:-1][:: -max(1, n // 200)]
    precision, recall = _precision_recall(confidence, has_source, correct, ap_thresholds)
    best_precision = np.maximum.accumulate(precision[::-1])[::-1]
    ap = float(np.sum(best_precision[:-1] * np.diff(recall)))

    precision, recall = _precision_recall(confidence, has_source, correct, ranked[:: max(1, n // 10)])
    total = precision + recall
    f1 = np.divide(2 * recall * precision, total, out=np.zeros_like(total), where=total > 0)
    return {"ap": ap, "max_f1": float(f1.max())}


def _precision_recall(confidence, has_source, correct, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """SLAVC's precision and recall at each confidence threshold (detections: conf >= c)."""

    def detected(mask):  # per threshold, how many samples of `mask` have confidence >= c
        values = np.sort(confidence[mask])
        return len(values) - np.searchsorted(values, thresholds, side="left")

    true_positive = detected(correct)
    false_positive = detected(~correct)
    false_negative = np.count_nonzero(has_source) - detected(has_source)
    detections = true_positive + false_positive
    relevant = true_positive + false_negative
    precision = np.divide(true_positive, detections, out=np.ones(len(thresholds)), where=detections > 0)
    recall = np.divide(true_positive, relevant, out=np.ones(len(thresholds)), where=relevant > 0)
    return precision, recall


# ----------------------------------------------------------------------------------------
# Confidences: a number per sample, how sure the model is that something in view sounds

CONFIDENCES: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
UPSAMPLE_CHUNK = 64  # maps upsampled at a time (224 x 224 float32 each)


def register_confidence(name: str) -> Callable:
    """Decorator: register ``function(maps N x h x w) -> float64 N`` as the confidence ``name``."""

    def register(function: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        if name in CONFIDENCES:
            raise ValueError(f"confidence {name!r} is already registered")
        CONFIDENCES[name] = function
        return function

    return register


def confidence(name: str, similarity_maps) -> np.ndarray:
    """The confidence ``name`` (a key of `CONFIDENCES`) of each raw ``N x h x w`` map: float64 N."""
    if name not in CONFIDENCES:
        raise HearflowError(f"unknown confidence {name!r}; choose one of {', '.join(CONFIDENCES)}")
    return CONFIDENCES[name](np.asarray(similarity_maps, np.float32))


def upsampled_chunks(maps: np.ndarray, chunk: int = UPSAMPLE_CHUNK) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows, their maps upsampled to 224 x 224 by `upsample_maps`, flattened: float32 n x 50176),
    chunk by chunk; HearflowError when a map holds NaN or inf."""
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3:
        raise ValueError(f"similarity maps must be N x h x w, got shape {maps.shape}")
    if not np.isfinite(maps).all():
        raise HearflowError("similarity maps hold NaN or inf")
    for start in range(0, len(maps), chunk):
        rows = slice(start, min(start + chunk, len(maps)))
        yield rows, upsample_maps(maps[rows]).reshape(rows.stop - start, -1)


@register_confidence("map_max")
def map_max(similarity_maps) -> np.ndarray:
    """The largest value of each raw ``N x h x w`` map upsampled to 224 x 224 (OpenCV's bicubic,
    `upsample_maps`), not normalised: a cosine on one scale for every sample (float64 N)."""
    maps = np.asarray(similarity_maps, np.float32)
    result = np.empty(len(maps), np.float64)
    for rows, values in upsampled_chunks(maps):
        result[rows] = values.max(axis=1)
    return result


@register_confidence("peak")
def peak(similarity_maps) -> np.ndarray:
    """The largest cell of each raw ``N x h x w`` map (float64 N)."""
    maps = np.asarray(similarity_maps, np.float64)
    return maps.reshape(len(maps), -1).max(axis=1)


@register_confidence("slavc")
def slavc_confidence(similarity_maps) -> np.ndarray:
    """SLAVC's confidence (Mo and Morgado, NeurIPS 2022), as its evaluation computes it (float64 N).

    Each map is upsampled to 224 x 224 by bicubic interpolation with aligned corners
    (PyTorch's ``interpolate(mode="bicubic", align_corners=True)``, `bicubic_aligned`),
    scaled with fixed bounds to [0, 1] (SLAVC's map is a cosine / tau scaled from
    [-1/tau, 1/tau]; a cosine map is scaled from [-1, 1], the same numbers), and the
    confidence is the mean of its largest quarter (224 * 224 // 4 values).
    """
    maps = np.asarray(similarity_maps, np.float64)
    upsampled = bicubic_aligned(maps, MAP_SIZE)
    scaled = (upsampled.reshape(len(maps), -1) + 1.0) / 2.0
    count = scaled.shape[1] // 4
    return np.partition(scaled, scaled.shape[1] - count, axis=1)[:, -count:].mean(axis=1)


def bicubic_aligned(maps: np.ndarray, size: int) -> np.ndarray:
    """``N x h x w`` -> ``N x size x size`` float64, bicubic with aligned corners (the cubic
    convolution kernel with a = -0.75, source x = i * (w - 1) / (size - 1), taps outside the
    map clamped to its border): PyTorch's ``interpolate(mode="bicubic", align_corners=True)``."""
    maps = np.asarray(maps, np.float64)
    rows, cols = _bicubic_weights(maps.shape[1], size), _bicubic_weights(maps.shape[2], size)
    return np.einsum("ih,nhw,jw->nij", rows, maps, cols)


def _bicubic_weights(length: int, size: int, a: float = -0.75) -> np.ndarray:
    """``size x length`` matrix of `bicubic_aligned`'s weights along one axis."""
    weights = np.zeros((size, length))
    scale = (length - 1) / (size - 1) if size > 1 else 0.0
    for i in range(size):
        x = i * scale
        base = int(np.floor(x))
        t = x - base
        for offset, distance in zip((-1, 0, 1, 2), (1 + t, t, 1 - t, 2 - t)):
            d = abs(distance)
            kernel = ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
            weights[i, min(max(base + offset, 0), length - 1)] += kernel
    return weights
