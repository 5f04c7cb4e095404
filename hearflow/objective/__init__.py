"""The training losses, their registry, and the loss of a batch.

A loss is a function ``loss(features, model, objective, epoch) -> scalar``
(`hearflow.objective.registry`); `register_loss` adds one under a name and
``objective.loss: NAME`` selects it. Training reaches the model only through
``embed`` (inside `global_batch_loss`) and whatever the loss calls (``model.similarity``),
so nothing a method adds to the model is skipped: a method is a model configuration
plus a registered loss.

Registered: ``lvs`` (LVS / HTF's trimap contrastive loss, `hearflow.objective.lvs`),
``ezvsl`` and ``fnac`` (`hearflow.objective.ezvsl`), ``slavc``
(`hearflow.objective.slavc`).

Which batch a loss sees (``objective.loss_batch``): ``global`` (default) gathers every
process's features, so every process computes the loss of the global batch (the one
a single process would compute); ``per-process`` gathers nothing, each process's loss
is of its own share (and BatchNorm is not synchronised, `hearflow.train`), as the
EZ-VSL / FNAC / SLAVC code trains: DistributedDataParallel then averages the N
sub-batch losses' gradients.

Negative audio (``objective.audio_negatives``) is added here, once, around whichever
loss is registered: the batch's images are embedded a second time with negative
audio (`hearflow.data.negatives.TrainingNegatives`) in the same ``embed`` call, and
``negatives_weight`` times `negative_map_loss` of those pairs' maps joins the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from hearflow import distributed
from hearflow.config import ObjectiveConfig
from hearflow.objective import ezvsl, lvs, slavc  # noqa: F401  (each registers its losses)
from hearflow.objective.ezvsl import ezvsl_loss, fnac_terms, mil_logits
from hearflow.objective.lvs import lvs_loss, soft_masked_mean
from hearflow.objective.registry import LOSSES, LossFunction, get_loss, register_loss
from hearflow.objective.slavc import slavc_logits, slavc_loss

if TYPE_CHECKING:
    from hearflow.model.htf import HTF, Features

__all__ = ["LOSSES", "LossFunction", "ezvsl_loss", "fnac_terms", "gather_features", "get_loss", "global_batch_loss",
           "lvs_loss", "mil_logits", "negative_map_loss", "register_loss", "slavc_logits", "slavc_loss",
           "soft_masked_mean"]


def gather_features(features: "Features") -> "Features":
    """Every field of ``features`` concatenated over all processes in rank order, with gradients
    flowing back to their owner (`hearflow.distributed.gather_with_grad`), in float32 at least;
    absent (None) fields stay None."""
    return type(features)(*(
        None if value is None else
        distributed.gather_with_grad(value.to(torch.promote_types(value.dtype, torch.float32)))
        for value in features
    ))


def _at_least_float32(features: "Features") -> "Features":
    """Every field of ``features`` in at least float32, nothing gathered (``loss_batch: per-process``)."""
    return type(features)(*(None if value is None else value.to(torch.promote_types(value.dtype, torch.float32))
                            for value in features))


def global_batch_loss(
    embed: Callable[..., "Features"],
    model: "HTF",
    inputs: tuple[torch.Tensor, ...],
    objective: ObjectiveConfig,
    amp_dtype: torch.dtype | None = None,
    negative_spectrogram: torch.Tensor | None = None,
    epoch: int = 1,
) -> torch.Tensor:
    """The loss of the batch ``objective.loss_batch`` names: the global one (the same scalar
    on every process) or, with ``per-process``, this process's share.

    embed: ``model.embed`` itself, or a module whose forward calls it (what
    DistributedDataParallel wraps in training); inputs: this process's share of the
    batch, ``(image, flow, spectrogram)``. The encoders run under autocast with
    ``amp_dtype`` (None: the inputs' dtype); the features of all processes are gathered
    (`gather_features`, unless per-process) and the registered loss ``objective.loss``
    is computed on them in float32 (float64 for float64 features) at ``epoch`` (from 1).

    negative_spectrogram: ``B x 1 x F x T``, negative audio for each sample of the share
    (``objective.audio_negatives``): one ``embed`` call takes the images twice, with
    their own and with this audio (one forward, as DistributedDataParallel needs; the
    visual BatchNorm statistics of a doubled batch are the batch's own); the second
    half's own-pair maps add ``objective.negatives_weight * negative_map_loss``.
    """
    loss = get_loss(objective.loss)
    collect = gather_features if objective.loss_batch == "global" else _at_least_float32
    image, flow, spectrogram = inputs
    with torch.autocast(image.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        if negative_spectrogram is None:
            features = embed(image, flow, spectrogram)
        else:
            both = embed(torch.cat([image, image]), torch.cat([flow, flow]),
                         torch.cat([spectrogram, negative_spectrogram.to(spectrogram.dtype)]))
            features, negatives = both.rows(slice(None, len(image))), both.rows(slice(len(image), None))
    value = loss(collect(features), model, objective, epoch)
    if negative_spectrogram is not None:
        maps = model.similarity(collect(negatives)).similarity
        value = value + objective.negatives_weight * negative_map_loss(maps, objective.negatives_margin, objective.tau)
    return value


def negative_map_loss(maps: torch.Tensor, margin: float, tau: float) -> torch.Tensor:
    """How lit the maps of pairs whose audio no visible object makes are: a scalar.

    maps: ``B x h x w`` own-pair similarity maps of negative pairs. The mean over every
    cell of ``tau * softplus((S - margin) / tau)``, a smooth ``max(S - margin, 0)``:
    the whole map is pushed below ``margin`` (LVS's background level, 0.4), cells far
    above it with a constant pull, cells below it hardly at all. In float32.
    """
    return (tau * F.softplus((maps.float() - margin) / tau)).mean()
