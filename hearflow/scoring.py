"""Predict and score an annotated, prepared set: shared by `hearflow evaluate` and training's validation.

The protocol is the papers' (`hearflow.metrics`): each sample's own-pair similarity
map is upsampled to 224 x 224, binarised at its median and compared with the
ground-truth map (cIoU); over the set, cIoU@0.5, AUC and mean cIoU, plus AP and
max-F1 (over each sample's confidence, one of `hearflow.metrics.CONFIDENCES`: by default
``slavc``, SLAVC's, the one its tables used) when the set holds samples with no visible
sound source. Those no-source samples enter AP / max-F1 only;
cIoU@0.5, AUC and mean cIoU are over the samples with a source (``n``).

Inputs are made by the test transform (`PreparedDataset` with ``train=False``) and
the model runs in eval mode. Annotated ids without a prepared sample, and prepared
samples without an annotation, are counted (`Matching`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from hearflow import distributed
from hearflow.config import Config
from hearflow.data.annotations import Annotations, load_annotations
from hearflow.data.dataset import PreparedDataset
from hearflow.data.shards import open_prepared
from hearflow.errors import HearflowError
from hearflow.data.negatives import NegativeAudioDataset, offscreen_partners, read_labels
from hearflow.metrics import ap_max_f1, ciou, confidence as named_confidence, map_max, summarize
from hearflow.negatives import NO_SOURCE

DEFAULT_CONFIDENCE = "slavc"  # AP / max-F1's confidence: SLAVC's, as the published AP tables


@dataclass
class Predictions:
    """The model's own-pair maps for a list of samples.

    ids: N sample ids; similarity: float32 N x h x w; confidence: float32 N, each
    map's `hearflow.metrics.map_max` (NaN for a map holding NaN); `confidence_of` gives
    any registered confidence.
    """

    ids: list[str]
    similarity: np.ndarray
    confidence: np.ndarray

    def select(self, ids: list[str]) -> "Predictions":
        """The predictions of ``ids``, in that order (KeyError for an id not predicted)."""
        rows = {sample_id: row for row, sample_id in enumerate(self.ids)}
        picked = np.array([rows[sample_id] for sample_id in ids], dtype=np.int64)
        return Predictions(list(ids), self.similarity[picked], self.confidence[picked])

    def confidence_of(self, name: str) -> np.ndarray:
        """The confidence ``name`` (`hearflow.metrics.CONFIDENCES`) of each map: float64 N, NaN
        for maps holding NaN or inf."""
        if name == "map_max":
            return self.confidence.astype(np.float64)
        values = np.full(len(self.ids), np.nan)
        finite = np.isfinite(self.similarity.reshape(len(self.ids), -1)).all(axis=1)
        values[finite] = named_confidence(name, self.similarity[finite])
        return values

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
class NegativeMaps:
    """Samples with a source (``ids``): their maps with their own audio (``positive``, N x h x w)
    and cIoU (``cious``, N), and ``negatives``: kind -> maps (rows paired with ``ids``; the
    set's own no-source samples under ``no_source``)."""

    ids: list[str]
    positive: np.ndarray
    cious: np.ndarray
    negatives: dict[str, np.ndarray]


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
    flow_fusion: float = 0.0,
) -> Predictions:
    """Run ``model`` in eval mode over ``dataset`` (items as `PreparedDataset` gives them).

    model: an HTF module, or a backend of `hearflow.backends` (whose ``maps`` runs each
    batch with the inference options it was made with; ``flow_fusion`` is then unused).
    flow_fusion: late fusion (an inference option of `hearflow.model.HTF.similarity`).
    """
    backend = model if hasattr(model, "maps") else None
    if backend is None:
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
            if backend is not None:
                maps.append(backend.maps(batch["image"], batch["flow"], batch["spectrogram"]))
                ids.extend(batch["id"])
                continue
            inputs = [batch[key].to(device, non_blocking=True) for key in ("image", "flow", "spectrogram")]
            output = model(*inputs, flow_fusion=flow_fusion)
            maps.append(output.similarity.float().cpu())
            ids.extend(batch["id"])
    if not maps:
        return Predictions.concatenate([])
    similarity = torch.cat(maps).numpy()
    confidence = np.full(len(ids), np.nan, np.float32)  # NaN maps stay NaN: `score` names their samples
    finite = np.isfinite(similarity.reshape(len(ids), -1)).all(axis=1)
    confidence[finite] = map_max(similarity[finite])
    return Predictions(ids, similarity, confidence)


def score(predictions: Predictions, annotations: Annotations, chunk: int = 256,
          confidence: str = DEFAULT_CONFIDENCE) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-sample cIoU (NaN for no-source samples) and the set's metrics.

    Returns ``(cious N, results)`` with results ``n`` (samples with a source),
    ``ciou_at_0_5``, ``auc``, ``mean_ciou`` and, when the set holds no-source samples,
    ``n_no_source``, ``ap`` and ``max_f1`` over the confidence named ``confidence``
    (`hearflow.metrics.CONFIDENCES`), recorded as ``confidence``. Ground-truth maps are built ``chunk`` at a
    time, so memory stays flat on large sets.
    """
    ids = predictions.ids
    finite = np.isfinite(predictions.similarity.reshape(len(ids), -1)).all(axis=1)
    if not finite.all():
        bad = [ids[row] for row in np.flatnonzero(~finite)]
        raise HearflowError(
            f"the model's maps of {len(bad)} sample(s) hold NaN or infinite values ({', '.join(map(repr, bad[:5]))}):"
            " the checkpoint is damaged, or these samples' prepared files hold NaN"
        )
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
        results.update(ap_max_f1(predictions.confidence_of(confidence), has_source, np.nan_to_num(cious, nan=0.0)),
                       confidence=confidence)
    return cious, {key: _plain(value) for key, value in results.items()}


class AnnotatedSet:
    """A prepared folder with its annotations, as a model is scored on it.

    ``annotations`` (`Annotations`), ``matching`` (which ids are scored, which are
    left out) and ``dataset`` (the matched samples through the test transform of
    ``config``'s data section). benchmark: ``auto`` or the benchmark the annotations
    must be (`hearflow.data.annotations.BENCHMARKS`). ``box_problems``: the matched
    samples' boxes that cannot be scored as given (inverted, zero-area, outside the
    image); ``strict`` refuses them instead (HearflowError).
    """

    def __init__(
        self,
        folder: str | Path,
        annotations: str | Path,
        config: Config,
        benchmark: str = "auto",
        skip_missing: bool = False,
        strict: bool = False,
    ) -> None:
        self.annotations = load_annotations(annotations, benchmark)
        prepared = open_prepared(folder)
        self.matching = match_ids(list(self.annotations.ids), list(prepared.ids))
        if not self.matching.ids:
            raise HearflowError(
                f"no prepared sample of {folder} is annotated in {annotations} "
                f"({len(prepared.ids)} samples, {len(self.annotations.ids)} annotations; ids are file stems)"
            )
        self.box_problems = self.annotations.box_problems(self.matching.ids)
        if strict and self.box_problems.line():
            raise HearflowError(f"{self.box_problems.line()}; refused (strict): fix them, or score them as given")
        self.dataset = PreparedDataset(prepared, config, train=False, ids=self.matching.ids, skip_missing=skip_missing)
        self._config = config

    def left_out(self) -> dict[str, int]:
        """How many samples and boxes the set's scores leave out, by reason (results.json's counts)."""
        return {
            "annotated_without_sample": len(self.matching.annotated_without_sample),
            "samples_without_annotation": len(self.matching.samples_without_annotation),
            "skipped_missing_files": len(self.dataset.skipped),
            "unusable_boxes": len(self.box_problems.problems),
        }

    def warning_lines(self) -> list[str]:
        """What a user must know about the set before trusting its scores: left-out samples, unusable boxes."""
        return [line for line in (self.dataset.left_out_line("annotated"), self.box_problems.line()) if line]

    def predict(
        self,
        model: torch.nn.Module,
        context: distributed.Distributed = distributed.Distributed(),
        batch_size: int = 32,
        workers: int = 0,
        flow_fusion: float = 0.0,
        progress: bool = True,
    ) -> Predictions:
        """`predict` over the set; under torchrun each process takes every ``world_size``-th
        sample and every process gets all predictions, in the set's order of ranks' shares."""
        shard = Subset(self.dataset, range(context.rank, len(self.dataset), context.world_size))
        local = predict(model, shard, batch_size, context.device, workers, progress and context.is_main, flow_fusion)
        return Predictions.concatenate(distributed.gather_objects(local))

    def negative_maps(
        self,
        model: torch.nn.Module,
        kinds: tuple[str, ...],
        predictions: Predictions,
        cious: np.ndarray,
        context: distributed.Distributed = distributed.Distributed(),
        batch_size: int = 32,
        workers: int = 0,
        flow_fusion: float = 0.0,
        progress: bool = True,
    ) -> "NegativeMaps":
        """The maps `hearflow.negatives.negative_results` scores: the samples with a source with
        their own audio (from ``predictions`` and ``cious``, `predict` and `score`'s results) and
        with the audio of each negative kind (`hearflow.data.negatives`), plus the set's
        no-source samples with their own audio (kind ``no_source``) when it has any."""
        has_source = [self.annotations.has_source(sample_id) for sample_id in predictions.ids]
        ids = [sample_id for sample_id, source in zip(predictions.ids, has_source) if source]
        base = PreparedDataset(self.dataset.folder, self._config, train=False, ids=ids)
        partners = None
        if "offscreen" in kinds:
            chosen = dict(zip(predictions.ids, offscreen_partners(predictions.ids, read_labels(self.annotations.path))))
            partners = [chosen[sample_id] for sample_id in ids]
        negatives = {}
        for kind in kinds:
            shard = Subset(NegativeAudioDataset(base, kind, partners), range(context.rank, len(ids), context.world_size))
            local = predict(model, shard, batch_size, context.device, workers, progress and context.is_main, flow_fusion)
            negatives[kind] = Predictions.concatenate(distributed.gather_objects(local)).select(ids).similarity
        no_source = [sample_id for sample_id, source in zip(predictions.ids, has_source) if not source]
        if no_source:
            negatives[NO_SOURCE] = predictions.select(no_source).similarity
        return NegativeMaps(ids, predictions.select(ids).similarity, cious[np.array(has_source, bool)], negatives)

    def score(self, predictions: Predictions, confidence: str = DEFAULT_CONFIDENCE) -> tuple[np.ndarray, dict[str, Any]]:
        """`score` of ``predictions`` against the set's annotations (AP / max-F1 over ``confidence``)."""
        return score(predictions, self.annotations, confidence=confidence)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, for JSON."""
    return value.item() if isinstance(value, np.generic) else value
