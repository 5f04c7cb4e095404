"""`hearflow calibrate`: choose a checkpoint's "a visible object sounds" threshold on a validation set.

The positives are the annotated samples with a source, with their own audio; the
negatives are the same images with each kind of negative audio asked for
(`hearflow.data.negatives`: silence, noise, an off-screen sound) and the set's own
samples without a visible source. The threshold on the confidence
(`hearflow.negatives.map_max`) with the largest detection F1 over both
(`hearflow.negatives.calibration_threshold`) is stored in the checkpoint as its
``sounding_threshold`` inference option, with the flow fusion it was chosen under and
a ``calibration`` record (set, kinds, counts, F1, AUROC); `hearflow localize` then
writes ``"sounding"`` per step and `hearflow evaluate --negatives` uses it as the
universal threshold of pIA. Calibrate on a validation set, never on the test set the
numbers are reported on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hearflow import distributed
from hearflow.checkpoint import load_model, record_inference
from hearflow.config import NEGATIVE_KINDS, negative_kinds
from hearflow.errors import HearflowError
from hearflow.negatives import CONFIDENCE, auroc, calibration_threshold, map_max
from hearflow.scoring import AnnotatedSet


def calibrate(
    checkpoint: str | Path,
    data: str | Path,
    annotations: str | Path,
    *,
    negatives: str | tuple[str, ...] = NEGATIVE_KINDS,
    out: str | Path | None = None,
    benchmark: str = "auto",
    batch_size: int = 32,
    workers: int = 2,
    device: str = "auto",
    skip_missing: bool = False,
    flow_fusion: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Calibrate ``checkpoint`` on a prepared, annotated validation set and store the threshold.

    Writes ``out`` (None: the checkpoint itself, rewritten atomically; a released
    checkpoint needs ``out`` and is written in hearflow's format) and returns the
    calibration record: ``threshold``, ``f1``, ``auroc``, ``n_positive``,
    ``n_negative`` per kind, ``kinds``, ``confidence``, ``flow_fusion``, ``data``,
    ``annotations``. flow_fusion: the late fusion the threshold is for (None: the
    checkpoint's default), recorded with it.
    """
    kinds = negative_kinds(negatives)
    if batch_size < 1 or workers < 0:
        raise HearflowError("--batch-size must be positive and --workers not negative")
    torch_device = distributed.resolve_device(device)
    model, recorded = load_model(checkpoint, map_location=torch_device)
    options = recorded.with_arguments(flow_fusion=flow_fusion)
    annotated = AnnotatedSet(data, annotations, model.config, benchmark=benchmark, skip_missing=skip_missing)
    context = distributed.Distributed(device=torch_device)
    predictions = annotated.predict(model, context, batch_size, workers, options.flow_fusion, progress)
    cious, _ = annotated.score(predictions)
    maps = annotated.negative_maps(model, kinds, predictions, cious, context, batch_size, workers,
                                   options.flow_fusion, progress)
    if not maps.negatives:
        raise HearflowError(f"nothing to calibrate against: no --negatives and no sample of {annotations} "
                            "is annotated without a visible source")
    positive = map_max(maps.positive)
    negative = {kind: map_max(values) for kind, values in maps.negatives.items()}
    pooled = np.concatenate(list(negative.values()))
    scores = np.concatenate([positive, pooled])
    threshold, f1 = calibration_threshold(scores, np.arange(len(scores)) < len(positive))
    record = {
        "threshold": threshold, "f1": f1, "auroc": auroc(positive, pooled), "confidence": CONFIDENCE,
        "flow_fusion": options.flow_fusion, "kinds": list(negative), "n_positive": int(len(positive)),
        "n_negative": {kind: int(len(values)) for kind, values in negative.items()},
        "data": str(data), "annotations": str(annotations),
    }
    written = record_inference(checkpoint, options.with_arguments(sounding_threshold=threshold), out,
                               calibration=record)
    print(f"calibrated {written}: sounding when {CONFIDENCE} > {threshold:.4f} (detection F1 {f1:.4f}, "
          f"AUROC {record['auroc']:.4f}; {len(positive)} positives, {len(pooled)} negatives: "
          + ", ".join(f"{kind} {count}" for kind, count in record["n_negative"].items()) + ")")
    return record
