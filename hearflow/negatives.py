"""Knowing when nothing sounds: the confidence, the negative-audio metrics and the calibrated decision.

Pure array functions (maps in, numbers out), shared by ``hearflow evaluate
--negatives``, ``hearflow calibrate``, the demo and ``hearflow localize``.

**Confidence** (`map_max`, named `CONFIDENCE`, defined in `hearflow.metrics` beside the other
confidences): the highest value of a sample's raw
similarity map as the metric sees it, i.e. upsampled to 224 x 224 with OpenCV's
bicubic (`hearflow.metrics.upsample_maps`) but not min-max normalised. It is a cosine
(times ``1 + alpha * motion`` with late fusion; the bicubic may overshoot the cells'
range a little), on the same scale for every sample, so one threshold means the same
everywhere; and it is the lowest universal threshold at which the map lights nothing:
``pIA(t) > 0`` exactly when ``confidence > t``. It replaces the peak of the h x w
cells, from which it differs only by the interpolation's over- and undershoot.

**The decision**: a visible object makes the sound when ``confidence > t`` with the
threshold ``t`` that `calibration_threshold` chooses on a validation set (the largest
detection F1 over positives and negatives), stored in a checkpoint as
`hearflow.config.InferenceOptions.sounding_threshold`. The same ``t`` is the universal
threshold of pIA.

**Negative-audio metrics** (`negative_results`), after Juanola, Haro and Fuentes,
"A critical assessment of visual sound source localization models including negative
audio" (ICASSP 2025); per kind of negative (`hearflow.data.negatives`) and over all:

- ``pia``: the proportion of the image activated, the share of the 224 x 224 raw map
  above the universal threshold (strictly), averaged over the samples;
- ``pia_auc``: the area (trapezoids) under y(x) = the share of negative samples whose
  pIA is at most x, for x = 0, 0.05, ..., 1: 1 when every negative map is dark, 0
  when every one is lit all over (the assessment's area under the pIA curve);
- ``map_max``: the distribution of the confidence: mean and the quantiles `QUANTILES`;
- ``iou_median`` / ``iou_at_threshold``: the IoU of the positive and the negative map
  of the same image, both binarised by the protocol (above their own median,
  `hearflow.metrics.predicted_masks`) or above the universal threshold; two empty
  masks have IoU 1, one empty mask 0 (the assessment's convention);
- ``auroc``: the area under the ROC curve of the confidence separating positives (with
  their own audio) from negatives: the chance that a random positive scores above a
  random negative, ties counting half;
- ``ap`` / ``max_f1``: SLAVC's localisation-aware AP and max-F1 over positives +
  negatives (`hearflow.metrics.ap_max_f1`: a detection is right only on a positive
  with cIoU >= 0.5): a score that needs both, positives localised and negatives
  rejected;
- ``detection_f1``: the F1 of the decision ``confidence > t`` (is there a visible
  source?) at the universal threshold.
"""

from __future__ import annotations


import numpy as np

from hearflow.config import NEGATIVE_KINDS
from hearflow.errors import HearflowError
from hearflow.metrics import AUC_THRESHOLDS, ap_max_f1, map_max, predicted_masks, upsampled_chunks

CONFIDENCE = "map_max"  # the name of the confidence this module defines
NO_SOURCE = "no_source"  # the set's own samples without a visible source, with their own audio
QUANTILES = {"q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95}


def pia(similarity_maps, threshold: float) -> np.ndarray:
    """Proportion of the image activated: per map, the share of its 224 x 224 upsampled raw
    values strictly above ``threshold`` (float64 N)."""
    maps = np.asarray(similarity_maps, np.float32)
    result = np.empty(len(maps), np.float64)
    for rows, values in upsampled_chunks(maps):
        result[rows] = np.count_nonzero(values > np.float64(threshold), axis=1) / values.shape[1]
    return result


def pia_auc(pias) -> float:
    """Area under y(x) = share of samples with pIA <= x, x = 0, 0.05, ..., 1 (trapezoids)."""
    values = np.asarray(pias, np.float64).ravel()
    if values.size == 0:
        raise ValueError("pia_auc needs at least one value")
    shares = (values[:, None] <= AUC_THRESHOLDS).mean(axis=0)
    return float(np.sum(np.diff(AUC_THRESHOLDS) * (shares[1:] + shares[:-1]) / 2))


def mask_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """IoU per row of two boolean ``N x P`` masks; 1 when both rows are empty, 0 when one is."""
    first, second = np.asarray(first, bool), np.asarray(second, bool)
    union = np.count_nonzero(first | second, axis=1)
    inter = np.count_nonzero(first & second, axis=1)
    return np.divide(inter, union, out=np.ones(len(first)), where=union > 0)


def pair_ious(positive, negative, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """IoU of each positive map with the negative map of the same row: both binarised by the
    protocol (median), and above ``threshold`` (None: not computed)."""
    positive, negative = np.asarray(positive, np.float32), np.asarray(negative, np.float32)
    if positive.shape != negative.shape:
        raise ValueError(f"paired maps must have one shape, got {positive.shape} and {negative.shape}")
    median = np.empty(len(positive))
    fixed = None if threshold is None else np.empty(len(positive))
    for (rows, pos), (_, neg) in zip(upsampled_chunks(positive), upsampled_chunks(negative)):
        median[rows] = mask_iou(predicted_masks(pos), predicted_masks(neg))
        if fixed is not None:
            level = np.float64(threshold)
            fixed[rows] = mask_iou(pos > level, neg > level)
    return median, fixed


def auroc(positive_scores, negative_scores) -> float:
    """P(a positive's score > a negative's) + P(equal) / 2: the Mann-Whitney form of the ROC area."""
    positive = np.asarray(positive_scores, np.float64).ravel()
    negative = np.asarray(negative_scores, np.float64).ravel()
    if not len(positive) or not len(negative):
        raise ValueError("auroc needs at least one positive and one negative score")
    ordered = np.sort(negative)
    below = np.searchsorted(ordered, positive, side="left")
    equal = np.searchsorted(ordered, positive, side="right") - below
    return float((below.sum() + 0.5 * equal.sum()) / (len(positive) * len(negative)))


def detection_f1(scores, is_positive, threshold: float) -> float:
    """F1 of the decision ``score > threshold`` against ``is_positive`` (0 with no true positive)."""
    scores, is_positive = np.asarray(scores, np.float64), np.asarray(is_positive, bool)
    accepted = scores > threshold
    true = np.count_nonzero(accepted & is_positive)
    denominator = np.count_nonzero(accepted) + np.count_nonzero(is_positive)
    return float(2 * true / denominator) if true else 0.0


def calibration_threshold(scores, is_positive) -> tuple[float, float]:
    """(threshold, F1): the decision ``score > threshold`` with the largest detection F1.

    Every cut between two distinct scores is tried; the threshold is the midpoint
    between the lowest accepted score and the highest rejected one (when every score is
    accepted: the lowest score minus half the scores' spread, or minus 0.5 when they
    are all equal). Ties in F1 go to the highest threshold (the fewest acceptances).
    """
    scores, is_positive = np.asarray(scores, np.float64).ravel(), np.asarray(is_positive, bool).ravel()
    if len(scores) != len(is_positive) or not is_positive.any():
        raise HearflowError("calibration needs scores with labels and at least one positive sample")
    order = np.argsort(-scores, kind="stable")
    ranked, labels = scores[order], is_positive[order]
    ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))  # last index of each distinct score
    true = np.cumsum(labels)[ends]
    accepted = ends + 1
    f1 = 2 * true / (accepted + np.count_nonzero(labels))
    best = int(np.argmax(f1))  # the first maximum: the highest threshold
    lowest = ranked[ends[best]]
    if best + 1 < len(ends):
        threshold = (lowest + ranked[ends[best] + 1]) / 2
    else:
        spread = ranked[0] - ranked[-1]
        threshold = lowest - (spread / 2 if spread > 0 else 0.5)
    return float(threshold), float(f1[best])


def distribution(values) -> dict[str, float]:
    """``{"mean", "q05", "q25", "median", "q75", "q95"}`` of the values (linear quantiles)."""
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), **{name: float(np.quantile(values, q)) for name, q in QUANTILES.items()}}


def negative_results(
    positive: np.ndarray, cious: np.ndarray, negatives: dict[str, np.ndarray], threshold: float | None
) -> dict[str, dict]:
    """The ``negatives`` section: ``{"positive": {...}, KIND: {...}, ..., "all": {...}}``.

    positive: the maps ``N x h x w`` of the samples with a source, with their own audio;
    cious: their cIoU (N); negatives: kind -> maps, rows paired with ``positive`` for
    the kinds of `NEGATIVE_KINDS`, any number for `NO_SOURCE`; threshold: the
    universal threshold (None: the metrics that need it are left out). See the module
    docstring for each metric.
    """
    if not negatives:
        raise ValueError("negative_results needs at least one kind of negative")
    positive_confidence = map_max(positive)
    section: dict[str, dict] = {"positive": _kind_entry(positive, positive_confidence, threshold)}
    pooled = []
    for kind, maps in negatives.items():
        confidence = map_max(maps)
        entry = _kind_entry(maps, confidence, threshold)
        if threshold is not None:
            entry["pia_auc"] = pia_auc(pia(maps, threshold))
        if kind in NEGATIVE_KINDS:
            median, fixed = pair_ious(positive, maps, threshold)
            entry["iou_median"] = float(median.mean())
            if fixed is not None:
                entry["iou_at_threshold"] = float(fixed.mean())
        entry.update(_detection(positive_confidence, cious, confidence, threshold))
        section[kind] = entry
        pooled.append(confidence)
    everything = np.concatenate(pooled)
    section["all"] = {"n": int(len(everything)), **_detection(positive_confidence, cious, everything, threshold)}
    return section


def _kind_entry(maps: np.ndarray, confidence: np.ndarray, threshold: float | None) -> dict:
    entry = {"n": int(len(maps)), "map_max": distribution(confidence)}
    if threshold is not None:
        entry["pia"] = float(pia(maps, threshold).mean())
    return entry


def _detection(positive: np.ndarray, cious: np.ndarray, negative: np.ndarray, threshold: float | None) -> dict:
    """AUROC, SLAVC's AP / max-F1, and the detection F1 at ``threshold``, over positives + negatives."""
    scores = np.concatenate([positive, negative])
    has_source = np.concatenate([np.ones(len(positive), bool), np.zeros(len(negative), bool)])
    localised = ap_max_f1(scores, has_source, np.concatenate([cious, np.zeros(len(negative))]))
    result = {"auroc": auroc(positive, negative), **localised}
    if threshold is not None:
        result["detection_f1"] = detection_f1(scores, has_source, threshold)
    return result


def format_negatives(section: dict[str, dict], threshold_note: str) -> str:
    """The printed table of a ``negatives`` section, one row per kind (`negative_results`)."""
    header = (f"{'audio':<10} {'n':>5} {'map max: mean [q25, q75]':>26} {'pIA':>6} {'pIA AUC':>7} "
              f"{'IoU pos':>7} {'AUROC':>6} {'max-F1':>6} {'F1@t':>6}")
    lines = [f"negative audio ({threshold_note}; confidence: {CONFIDENCE})", header, "-" * len(header)]
    for kind, entry in section.items():
        if kind == "all":
            continue
        spread = entry["map_max"]
        cells = [f"{spread['mean']:.3f} [{spread['q25']:.3f}, {spread['q75']:.3f}]"]
        cells += [_cell(entry.get(key)) for key in ("pia", "pia_auc", "iou_median", "auroc", "max_f1", "detection_f1")]
        lines.append(f"{kind:<10} {entry['n']:>5} {cells[0]:>26} {cells[1]:>6} {cells[2]:>7} {cells[3]:>7} "
                     f"{cells[4]:>6} {cells[5]:>6} {cells[6]:>6}")
    pooled = section["all"]
    lines.append(f"{'all':<10} {pooled['n']:>5} {'':>26} {'':>6} {'':>7} {'':>7} {_cell(pooled['auroc']):>6} "
                 f"{_cell(pooled['max_f1']):>6} {_cell(pooled.get('detection_f1')):>6}")
    lines.append("IoU pos: IoU of the positive and the negative map of the same image, each binarised at its median; "
                 "max-F1: SLAVC's (a detection counts only where cIoU >= 0.5)")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
