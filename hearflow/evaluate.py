"""`hearflow evaluate`: score a checkpoint on an annotated, prepared test set.

The protocol is the papers' (`hearflow.metrics`): each sample's own-pair similarity
map is upsampled to 224 x 224, binarised at its median and compared with the
ground-truth map (cIoU); over the set, cIoU@0.5, AUC and mean cIoU, plus AP and
max-F1 (over the peak of each map, the sample's confidence) when the set holds
samples with no visible sound source. Those no-source samples enter AP / max-F1 only;
cIoU@0.5, AUC and mean cIoU are over the samples with a source (``n``).

Inputs are made exactly as for training's test transform (`PreparedDataset` with
``train=False``) and the model runs in eval mode. Annotated ids without a prepared
sample, and prepared samples without an annotation, are counted and reported.
Training's per-epoch validation calls the same `predict` and `score`.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from hearflow import distributed
from hearflow.config import Config
from hearflow.data.annotations import Annotations, load_annotations
from hearflow.data.dataset import PreparedDataset
from hearflow.data.prepared import PreparedFolder, write_atomic
from hearflow.errors import HearflowError
from hearflow.metrics import MAP_SIZE, ap_max_f1, ciou, summarize, upsample_maps
from hearflow.overlay import draw_box, overlay_heatmap

@dataclass
class Predictions:
    """The model's own-pair maps for a list of samples.

    ids: N sample ids; similarity: float32 N x h x w; confidence: float32 N, the
    peak of each map.
    """

    ids: list[str]
    similarity: np.ndarray
    confidence: np.ndarray

    @staticmethod
    def concatenate(parts: list["Predictions"]) -> "Predictions":
        parts = [part for part in parts if part.ids]
        if not parts:
            return Predictions([], np.zeros((0, 1, 1), np.float32), np.zeros(0, np.float32))
        return Predictions(
            [sample_id for part in parts for sample_id in part.ids],
            np.concatenate([part.similarity for part in parts]),
            np.concatenate([part.confidence for part in parts]),
        )


@dataclass
class Matching:
    """Which annotated ids have a prepared sample (``ids``, in annotation order), and which do not."""

    ids: list[str]
    annotated_without_sample: list[str]
    samples_without_annotation: list[str]


def match_ids(annotated: list[str], prepared: list[str]) -> Matching:
    """Pair annotation ids with prepared sample ids (both are file stems)."""
    prepared_set, annotated_set = set(prepared), set(annotated)
    return Matching(
        ids=[sample_id for sample_id in annotated if sample_id in prepared_set],
        annotated_without_sample=[sample_id for sample_id in annotated if sample_id not in prepared_set],
        samples_without_annotation=[sample_id for sample_id in prepared if sample_id not in annotated_set],
    )


def predict(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
    progress: bool = True,
) -> Predictions:
    """Run ``model`` in eval mode over ``dataset`` (items as `PreparedDataset` gives them)."""
    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    ids, maps = [], []
    with torch.inference_mode():
        for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress, leave=False):
            output = model(
                batch["image"].to(device, non_blocking=True),
                batch["flow"].to(device, non_blocking=True),
                batch["spectrogram"].to(device, non_blocking=True),
            )
            maps.append(output.similarity.float().cpu())
            ids.extend(batch["id"])
    if not maps:
        return Predictions.concatenate([])
    similarity = torch.cat(maps)
    return Predictions(ids, similarity.numpy(), similarity.flatten(1).amax(dim=1).numpy())


def score(predictions: Predictions, annotations: Annotations, chunk: int = 256) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-sample cIoU (NaN for no-source samples) and the set's metrics.

    Returns ``(cious N, results)`` with results ``n`` (samples with a source),
    ``ciou_at_0_5``, ``auc``, ``mean_ciou`` and, when the set holds no-source samples,
    ``n_no_source``, ``ap`` and ``max_f1``. Ground-truth maps are built ``chunk`` at a
    time, so memory stays flat on large sets.
    """
    ids = predictions.ids
    has_source = np.array([annotations.has_source(sample_id) for sample_id in ids], dtype=bool)
    cious = np.full(len(ids), np.nan)
    with_source = np.flatnonzero(has_source)
    for start in range(0, len(with_source), chunk):
        rows = with_source[start : start + chunk]
        gt_maps = np.stack([annotations.gt_map(ids[row]) for row in rows])
        cious[rows] = ciou(predictions.similarity[rows], gt_maps)
    if not len(with_source):
        raise HearflowError("no evaluated sample has a sound source to localise: cIoU is undefined")
    results: dict[str, Any] = {"n": int(len(with_source)), **summarize(cious[with_source])}
    if not has_source.all():
        results["n_no_source"] = int((~has_source).sum())
        results.update(ap_max_f1(predictions.confidence, has_source, np.nan_to_num(cious, nan=0.0)))
    return cious, {key: _plain(value) for key, value in results.items()}


class ValidationSet:
    """An annotated prepared folder scored after every training epoch.

    ``score(model, context, batch_size)`` returns ``val_ciou_at_0_5``, ``val_auc``
    and ``val_mean_ciou``; under torchrun each process predicts every
    ``world_size``-th sample and the predictions are gathered before scoring.
    """

    def __init__(self, folder: str | Path, annotations: str | Path, config: Config, skip_missing: bool = False):
        self.annotations = load_annotations(annotations)
        prepared = PreparedFolder(folder)
        self.matching = match_ids(list(self.annotations.ids), list(prepared.ids))
        if not self.matching.ids:
            raise HearflowError(
                f"no sample of {folder} is annotated in {annotations} "
                f"({len(prepared.ids)} samples, {len(self.annotations.ids)} annotations)"
            )
        self.dataset = PreparedDataset(prepared, config, train=False, ids=self.matching.ids, skip_missing=skip_missing)
        self.workers = config.train.workers

    def score(self, model: torch.nn.Module, context: distributed.Distributed, batch_size: int) -> dict[str, float]:
        shard = Subset(self.dataset, range(context.rank, len(self.dataset), context.world_size))
        local = predict(model, shard, batch_size, context.device, self.workers, progress=context.is_main)
        predictions = Predictions.concatenate(distributed.gather_objects(local))
        _, results = score(predictions, self.annotations)
        return {f"val_{key}": results[key] for key in ("ciou_at_0_5", "auc", "mean_ciou")}


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
) -> dict[str, Any]:
    """Score ``checkpoint`` (hearflow's or a released one) on a prepared, annotated test set.

    Prints a table and returns the results dict (the content of ``out``): ``n``,
    ``ciou_at_0_5``, ``auc``, ``mean_ciou`` (+ ``n_no_source``, ``ap``, ``max_f1`` when
    the set has no-source samples) and the counts of samples left out. per_sample:
    a CSV ``id,ciou,confidence``; save_maps: a folder for heatmap overlays of the
    ``num_maps`` best and worst samples; flow_fusion: ``model.flow_fusion`` (late fusion
    with the flow magnitude) for this evaluation.
    """
    from hearflow.checkpoint import load

    if benchmark not in ("auto", "flickr", "vggss"):
        raise HearflowError(f"--benchmark is {benchmark!r}; choose flickr, vggss or auto")
    if batch_size < 1 or num_maps < 0 or workers < 0:
        raise HearflowError("--batch-size must be positive, --num-maps and --workers not negative")
    torch_device = distributed.resolve_device(device)
    model = load(checkpoint, map_location=torch_device)
    if flow_fusion is not None:
        if not flow_fusion >= 0:
            raise HearflowError(f"--flow-fusion must be a non-negative weight, got {flow_fusion}")
        model.config.model.flow_fusion = float(flow_fusion)
    notes = load_annotations(annotations)
    if benchmark != "auto" and notes.benchmark != benchmark:
        raise HearflowError(
            f"{annotations} holds {notes.benchmark} annotations, not {benchmark} "
            "(VGG-SS: a JSON file; Flickr SoundNet: a folder of XML files)"
        )
    folder = PreparedFolder(data)
    matching = match_ids(list(notes.ids), list(folder.ids))
    if not matching.ids:
        raise HearflowError(
            f"no prepared sample of {data} is annotated in {annotations} "
            f"({len(folder.ids)} samples, {len(notes.ids)} annotations; ids are file stems)"
        )
    dataset = PreparedDataset(folder, model.config, train=False, ids=matching.ids, skip_missing=skip_missing)
    predictions = predict(model, dataset, batch_size, torch_device, workers)
    cious, results = score(predictions, notes)
    results.update(
        benchmark=notes.benchmark,
        checkpoint=str(checkpoint),
        data=str(data),
        flow_fusion=model.config.model.flow_fusion,
        annotated_without_sample=len(matching.annotated_without_sample),
        samples_without_annotation=len(matching.samples_without_annotation),
        skipped_missing_files=len(dataset.skipped),
    )
    print(format_table(results, matching, dataset.skipped))
    if out is not None:
        write_text(out, json.dumps(results, indent=2) + "\n")
    if per_sample is not None:
        write_text(per_sample, per_sample_csv(predictions, cious))
    if save_maps is not None and num_maps:
        save_overlays(Path(save_maps), predictions, cious, notes, dataset, num_maps)
    return results


def format_table(results: dict[str, Any], matching: Matching, skipped: list[tuple[str, str]]) -> str:
    """The printed summary: metrics, then what was left out and why."""
    rows = [("samples", str(results["n"]))]
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
        ("samples skipped for missing files", [sample_id for sample_id, _ in skipped]),
    )
    for label, ids in left_out:
        if ids:
            lines.append(f"not evaluated: {len(ids)} {label} (e.g. {', '.join(ids[:5])})")
    return "\n".join(lines)


def per_sample_csv(predictions: Predictions, cious: np.ndarray) -> str:
    """``id,ciou,confidence`` rows; ``ciou`` is empty for no-source samples."""
    text = io.StringIO()
    table = csv.writer(text, lineterminator="\n")
    table.writerow(["id", "ciou", "confidence"])
    for sample_id, value, confidence in zip(predictions.ids, cious, predictions.confidence):
        table.writerow([sample_id, "" if np.isnan(value) else f"{value:.6f}", f"{float(confidence):.6f}"])
    return text.getvalue()


def save_overlays(
    folder: Path,
    predictions: Predictions,
    cious: np.ndarray,
    annotations: Annotations,
    dataset: PreparedDataset,
    count: int,
) -> list[Path]:
    """Heatmap overlays of the ``count`` best and worst samples by cIoU, ground-truth boxes drawn.

    Written as ``{best|worst}-{rank:02d}-{id}.png`` at the protocol's 224 x 224: the
    key frame resized to 224 x 224, the map upsampled and min-max normalised exactly
    as the metric sees it, boxes in white.
    """
    scored = np.flatnonzero(~np.isnan(cious))
    order = scored[np.argsort(-cious[scored], kind="stable")]
    picks = [("best", order[:count]), ("worst", order[::-1][:count])]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for label, rows in picks:
        for rank, row in enumerate(rows, start=1):
            sample_id = predictions.ids[row]
            frame = dataset.folder.read(sample_id).frame
            frame = cv2.resize(frame, (MAP_SIZE, MAP_SIZE), interpolation=cv2.INTER_AREA)
            heatmap = _normalised_map(predictions.similarity[row])
            image = overlay_heatmap(frame, heatmap)
            for box in annotations.boxes(sample_id):
                image = draw_box(image, [MAP_SIZE * max(value, 0.0) for value in box])
            path = folder / f"{label}-{rank:02d}-{sample_id}.png"
            ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            if not ok:
                raise HearflowError(f"cannot encode the overlay for {sample_id}")
            write_atomic(path, encoded.tobytes())
            written.append(path)
    return written


def _normalised_map(similarity: np.ndarray) -> np.ndarray:
    """The map as the metric sees it: bicubic to 224 x 224, min-max normalised to [0, 1]."""
    resized = upsample_maps(similarity[None])[0]
    low, high = float(resized.min()), float(resized.max())
    return (resized - low) / (high - low) if high > low else np.zeros_like(resized)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, creating its folder."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text.encode())
    except OSError as error:
        raise HearflowError(f"cannot write {path}: {error}") from error


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, for JSON."""
    return value.item() if isinstance(value, np.generic) else value
