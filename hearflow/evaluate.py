"""`hearflow evaluate`: score a checkpoint on an annotated, prepared test set.

The predictions and the protocol are `hearflow.scoring`'s (the same code scores
training's validation); this stage loads the checkpoint, prints the table and writes
what was asked for: ``results.json``, a per-sample CSV, overlays of the best and worst
maps, and with ``negatives`` the negative-audio section (`hearflow.negatives`).
Annotated ids without a prepared sample, prepared samples without an annotation,
and samples skipped for missing files are counted and reported.

Object-guided localization (``object_fusion``, ``object_weights``:
`hearflow.inference.InferenceOptions`; None takes the checkpoint's default, off) blends
each map with an object-saliency trunk's before scoring; the table and ``results``
always say whether it was on. Its maps are min-max normalised blends, so AP / max-F1
over their peaks are not comparable with OGL off, and the negative-audio section
scores the raw maps.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hearflow import distributed
from hearflow.backends import make_backend
from hearflow.hub import load_model
from hearflow.config import negative_kinds
from hearflow.data.annotations import Annotations
from hearflow.data.dataset import PreparedDataset
from hearflow.data.prepared import recipe_differences
from hearflow.errors import HearflowError, option
from hearflow.io import csv_text, write_json, write_png, write_text
from hearflow.metrics import CONFIDENCES, MAP_SIZE, heatmap
from hearflow.negatives import format_negatives, negative_results
from hearflow.overlay import draw_box, overlay_heatmap
from hearflow.scoring import DEFAULT_CONFIDENCE, AnnotatedSet, Matching, Predictions


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    annotations: str | Path,
    *,
    benchmark: str = "auto",
    out: str | Path | None = None,
    per_sample: str | Path | None = None,
    save_maps: str | Path | None = None,
    num_maps: int = 8,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "auto",
    skip_missing: bool = False,
    flow_fusion: float | None = None,
    negatives: str | tuple[str, ...] = (),
    sounding_threshold: float | None = None,
    strict: bool = False,
    progress: bool = True,
    backend: str = "auto",
    precision: str = "float32",
    object_fusion: float | None = None,
    object_weights: str | None = None,
    confidence: str = DEFAULT_CONFIDENCE,
) -> dict[str, Any]:
    """Score ``checkpoint`` (hearflow's or a released one) on a prepared, annotated test set.

    Prints a table and returns the results dict (``out``): ``n``, ``ciou_at_0_5``, ``auc``,
    ``mean_ciou`` (+ ``n_no_source``, ``ap``, ``max_f1`` with no-source samples), the options
    used and the counts of samples left out. per_sample: ``id,ciou,confidence`` CSV;
    save_maps: overlays of the ``num_maps`` best and worst; flow_fusion: late fusion (None:
    the checkpoint's default); negatives: kinds of negative audio (``"silence,noise,offscreen"``)
    scored too (``results["negatives"]``); sounding_threshold: pIA's universal threshold
    (None: the checkpoint's calibrated one); backend, precision: `hearflow.backends.make_backend`;
    strict: refuse annotations with boxes that cannot be scored as given (inverted, zero-area,
    outside the image), otherwise counted, warned about and scored as they are.
    object_fusion, object_weights: object-guided localization (module docstring).
    confidence: AP / max-F1's and the CSV's, in `hearflow.metrics.CONFIDENCES`, recorded. A folder
    of another recipe than the checkpoint's is scored with a warning (`warn_recipe`).
    """
    kinds = negative_kinds(negatives)
    _check_arguments(batch_size, num_maps, workers, confidence)
    torch_device = distributed.resolve_device(device)
    model, recorded = load_model(checkpoint, map_location=torch_device)
    options = recorded.with_arguments(flow_fusion=flow_fusion, sounding_threshold=sounding_threshold,
                                      object_fusion=object_fusion, object_weights=object_weights)
    runner = make_backend(backend, model, torch_device, options.flow_fusion, precision, options.object_fusion,
                          options.object_weights)
    annotated = _annotated_set(data, annotations, model.config, benchmark, skip_missing, strict)
    context = distributed.Distributed(device=torch_device)
    predictions = annotated.predict(runner, context, batch_size, workers, options.flow_fusion, progress)
    cious, results = annotated.score(predictions, confidence)
    results.update(confidence=confidence, benchmark=annotated.annotations.benchmark, checkpoint=str(checkpoint),
                   data=str(data), **_options_used(options, runner), **annotated.left_out())
    table = format_table(results, annotated.matching, annotated.dataset.skipped)
    if kinds:
        maps = annotated.negative_maps(model, kinds, predictions, cious, context, batch_size, workers,
                                       options.flow_fusion, progress)
        results["negatives"] = negative_results(maps.positive, maps.cious, maps.negatives, options.sounding_threshold)
        table += "\n" + format_negatives(results["negatives"],
                                         threshold_note(options.sounding_threshold, sounding_threshold))
    print(table)
    _write_outputs(results, predictions, cious, annotated, out=out, per_sample=per_sample, save_maps=save_maps,
                   num_maps=num_maps)
    return results


def _annotated_set(data, annotations, model_config, benchmark: str, skip_missing: bool, strict: bool) -> AnnotatedSet:
    """The test set, with a warning when its recipe differs from the checkpoint's and one for
    boxes that cannot be scored as given."""
    annotated = AnnotatedSet(data, annotations, model_config, benchmark=benchmark, skip_missing=skip_missing,
                             strict=strict)
    warn_recipe(annotated.dataset.folder, model_config, data)
    if annotated.box_problems.line():
        print(f"hearflow: warning: {annotated.box_problems.line()} (--strict refuses them)", file=sys.stderr)
    return annotated


def _options_used(options, runner) -> dict[str, Any]:
    """The inference options and backend of a run, as ``results`` records them."""
    return {"flow_fusion": options.flow_fusion, "object_fusion": options.object_fusion,
            "object_weights": options.object_weights if options.object_fusion else None,
            "backend": runner.name, "precision": getattr(runner, "precision", "float32"),
            "sounding_threshold": options.sounding_threshold}


def _write_outputs(results, predictions, cious, annotated, *, out, per_sample, save_maps, num_maps) -> None:
    """results.json, the per-sample CSV and the overlays, those asked for."""
    if out is not None:
        write_json(out, results)
    if per_sample is not None:
        write_text(per_sample, per_sample_csv(predictions, cious, results["confidence"]))
    if save_maps is not None and num_maps:
        save_overlays(Path(save_maps), predictions, cious, annotated.annotations, annotated.dataset, num_maps)


def _check_arguments(batch_size: int, num_maps: int, workers: int, confidence: str = DEFAULT_CONFIDENCE) -> None:
    if confidence not in CONFIDENCES:
        raise HearflowError(f"{option('--confidence', 'confidence')}: unknown confidence {confidence!r}; "
                            f"choose one of {', '.join(CONFIDENCES)}")
    if batch_size < 1 or num_maps < 0 or workers < 0:
        raise HearflowError(f"{option('--batch-size', 'batch_size')} must be positive, "
                            f"{option('--num-maps', 'num_maps')} and {option('--workers', 'workers')} not negative; "
                            f"got {batch_size}, {num_maps} and {workers}")


def threshold_note(threshold: float | None, given: float | None) -> str:
    """How the universal threshold was chosen, for the negatives table."""
    if threshold is None:
        return "uncalibrated: no universal threshold (run `hearflow calibrate`, or pass --sounding-threshold)"
    return f"universal threshold t = {threshold:.4f}, {'given' if given is not None else 'the checkpoint calibration'}"


def format_table(results: dict[str, Any], matching: Matching, skipped: list[tuple[str, str]]) -> str:
    """The printed summary: metrics, then what was left out and why."""
    ogl = results.get("object_fusion", 0.0)
    rows = [("samples", str(results["n"])),
            ("object fusion (OGL)", f"on, weight {ogl:g} ({results.get('object_weights')})" if ogl else "off")]
    rows += [(label, f"{results[key]:.4f}") for key, label in
             (("ciou_at_0_5", "cIoU@0.5"), ("auc", "AUC"), ("mean_ciou", "mean cIoU"))]
    if "ap" in results:
        rows += [("no-source samples", str(results["n_no_source"])),
                 ("AP", f"{results['ap']:.4f}"), ("max-F1", f"{results['max_f1']:.4f}")]
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    left_out = (
        ("annotated ids without a prepared sample", matching.annotated_without_sample),
        ("prepared samples without an annotation", matching.samples_without_annotation),
        ("samples skipped for missing or damaged files", [sample_id for sample_id, _ in skipped]),
    )
    for label, ids in left_out:
        if ids:
            lines.append(f"not evaluated: {len(ids)} {label} (e.g. {', '.join(ids[:5])})")
    return "\n".join(lines)


def per_sample_csv(predictions: Predictions, cious: np.ndarray, confidence: str = DEFAULT_CONFIDENCE) -> str:
    """``id,ciou,confidence`` rows (the confidence named ``confidence``); ``ciou`` is empty for
    no-source samples."""
    return csv_text(("id", "ciou", "confidence"), (
        (sample_id, "" if np.isnan(value) else f"{value:.6f}", f"{float(value_of):.6f}")
        for sample_id, value, value_of in zip(predictions.ids, cious, predictions.confidence_of(confidence))
    ))


def warn_recipe(folder, config, data) -> list[str]:
    """Warn (stderr, one line) when the folder was prepared otherwise than the checkpoint's
    config says (`recipe_differences`); returns the differences."""
    found = recipe_differences(folder.recipe, folder.layout, config.data)
    if found:
        print(f"hearflow: warning: {data} was prepared with another recipe than the checkpoint's "
              f"({'; '.join(found)}): the model sees other inputs than its own; prepare it again with "
              f"--preset {config.preset} (or the checkpoint's data settings) to score it as trained", file=sys.stderr)
    return found


def save_overlays(
    folder: Path,
    predictions: Predictions,
    cious: np.ndarray,
    annotations: Annotations,
    dataset: PreparedDataset,
    count: int,
) -> list[Path]:
    """Heatmap overlays of the ``count`` best and worst samples by cIoU, ground-truth boxes drawn.

    No sample is both: with fewer than ``2 * count`` scored samples, the better half
    (the middle one included) are the best and the others the worst. Written as
    ``{best|worst}-{rank:02d}-{id}.png`` at the protocol's 224 x 224: the key frame
    resized to 224 x 224, the map upsampled and min-max normalised exactly as the
    metric sees it (`hearflow.metrics.heatmap`), boxes in white.
    """
    scored = np.flatnonzero(~np.isnan(cious))
    order = scored[np.argsort(-cious[scored], kind="stable")]
    worst = min(count, len(order) // 2)
    picks = [("best", order[: min(count, len(order) - worst)]), ("worst", order[::-1][:worst])]
    written = []
    for label, rows in picks:
        for rank, row in enumerate(rows, start=1):
            sample_id = predictions.ids[row]
            frame = dataset.folder.read(sample_id).frame
            frame = cv2.resize(frame, (MAP_SIZE, MAP_SIZE), interpolation=cv2.INTER_AREA)
            image = overlay_heatmap(frame, heatmap(predictions.similarity[row], MAP_SIZE, MAP_SIZE))
            for box in annotations.boxes(sample_id):
                image = draw_box(image, [MAP_SIZE * max(value, 0.0) for value in box])
            path = folder / f"{label}-{rank:02d}-{sample_id}.png"
            write_png(path, image)
            written.append(path)
    return written
