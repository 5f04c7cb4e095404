"""The training losses, their registry, and the loss of a global batch.

A loss is a function ``loss(features, model, objective) -> scalar``: ``features`` are
the global batch's `hearflow.model.htf.Features` (what ``model.embed`` returned on
every process, gathered), ``model`` gives the second half (``model.similarity``) and
``objective`` is the run's `ObjectiveConfig`. `register_loss` adds one under a name;
``objective.loss: NAME`` selects it. Training reaches the model only through
``embed`` (inside `global_batch_loss`) and whatever the loss calls, so nothing a
method adds to the model is skipped.

Registered here: ``lvs``, the trimap contrastive loss (LVS / HTF Eq. 4-6, as
released, made numerically safe), `lvs_loss`.

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
from hearflow.errors import HearflowError

if TYPE_CHECKING:
    from hearflow.model.htf import HTF, Features

LossFunction = Callable[["Features", "HTF", ObjectiveConfig], torch.Tensor]
LOSSES: dict[str, LossFunction] = {}


def register_loss(name: str) -> Callable[[LossFunction], LossFunction]:
    """Decorator: ``@register_loss("mine")`` makes ``objective.loss: mine`` train with the function."""

    def register(function: LossFunction) -> LossFunction:
        LOSSES[name] = function
        return function

    return register


def get_loss(name: str) -> LossFunction:
    """The registered loss ``name``; HearflowError naming the registered ones otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        raise HearflowError(f"objective.loss is {name!r}; registered losses: {', '.join(LOSSES)}") from None


def gather_features(features: "Features") -> "Features":
    """Every field of ``features`` concatenated over all processes in rank order, with gradients
    flowing back to their owner (`hearflow.distributed.gather_with_grad`), in float32 at least."""
    return type(features)(*(
        distributed.gather_with_grad(value.to(torch.promote_types(value.dtype, torch.float32)))
        for value in features
    ))


def global_batch_loss(
    embed: Callable[..., "Features"],
    model: "HTF",
    inputs: tuple[torch.Tensor, ...],
    objective: ObjectiveConfig,
    amp_dtype: torch.dtype | None = None,
    negative_spectrogram: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of the global batch, the same scalar on every process.

    embed: ``model.embed`` itself, or a module whose forward calls it (what
    DistributedDataParallel wraps in training); inputs: this process's share of the
    batch, ``(image, flow, spectrogram)``. The encoders run under autocast with
    ``amp_dtype`` (None: the inputs' dtype); the features of all processes are gathered
    (`gather_features`) and the registered loss ``objective.loss`` is computed on them
    in float32 (float64 for float64 features).

    negative_spectrogram: ``B x 1 x F x T``, negative audio for each sample of the share
    (``objective.audio_negatives``): one ``embed`` call takes the images twice, with
    their own and with this audio (one forward, as DistributedDataParallel needs; the
    visual BatchNorm statistics of a doubled batch are the batch's own); the second
    half's own-pair maps add ``objective.negatives_weight * negative_map_loss``.
    """
    loss = get_loss(objective.loss)
    image, flow, spectrogram = inputs
    with torch.autocast(image.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        if negative_spectrogram is None:
            features = embed(image, flow, spectrogram)
        else:
            both = embed(torch.cat([image, image]), torch.cat([flow, flow]),
                         torch.cat([spectrogram, negative_spectrogram.to(spectrogram.dtype)]))
            features, negatives = (type(both)(*(value[rows] for value in both))
                                   for rows in (slice(None, len(image)), slice(len(image), None)))
    value = loss(gather_features(features), model, objective)
    if negative_spectrogram is not None:
        maps = model.similarity(gather_features(negatives)).similarity
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


def soft_masked_mean(values: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """``sum(w * values) / sum(w)`` over the last two axes, with ``w = exp(log_weights)``.

    Computed as a softmax over positions, which divides by ``sum(w) / max(w) >= 1``:
    the same value as the plain ratio, but its denominator never underflows to 0
    (the plain ratio does when every weight is tiny, e.g. all similarities far
    below the threshold, or in half precision).
    """
    weights = torch.softmax(log_weights.flatten(-2), dim=-1)
    return (weights * values.flatten(-2)).sum(dim=-1)


def lvs_loss(
    cross_similarity: torch.Tensor,
    eps_p: float = ObjectiveConfig.eps_p,
    eps_n: float = ObjectiveConfig.eps_n,
    tau: float = ObjectiveConfig.tau,
    temperature: float = ObjectiveConfig.temperature,
) -> torch.Tensor:
    """Trimap contrastive loss of a batch, a scalar (mean over the B samples).

    ``cross_similarity``: ``B x B x h x w``, entry (k, j) the similarity map of image k
    with audio j. For sample k, with S = cross_similarity[k, k] and sigma the sigmoid:

    - pos_k: S averaged with weights sigma((S - eps_p) / tau) (the positive region);
    - hard_neg_k: S averaged with weights 1 - sigma((S - eps_n) / tau) (the background);
    - neg_kj, j != k: S_kj averaged with weights sigma((S_kj - eps_p) / tau);
    - loss_k = cross-entropy of logits [pos_k, neg_kj (j != k), hard_neg_k] / temperature
      with target 0.

    The own pair is removed from the negatives by masking (not scaled), and the
    weighted means cannot divide by zero; computed in float32 whatever the input dtype.
    """
    similarity = cross_similarity.float()
    batch = similarity.shape[0]
    own = torch.diagonal(similarity).permute(2, 0, 1)  # B x h x w
    positive = soft_masked_mean(own, F.logsigmoid((own - eps_p) / tau))
    hard_negative = soft_masked_mean(own, F.logsigmoid(-(own - eps_n) / tau))
    negatives = soft_masked_mean(similarity, F.logsigmoid((similarity - eps_p) / tau))  # B x B
    others = ~torch.eye(batch, dtype=torch.bool, device=similarity.device)
    logits = torch.cat(
        [positive[:, None], negatives[others].view(batch, batch - 1), hard_negative[:, None]], dim=1
    )
    target = torch.zeros(batch, dtype=torch.long, device=similarity.device)
    return F.cross_entropy(logits / temperature, target)


@register_loss("lvs")
def trimap_contrastive(features: "Features", model: "HTF", objective: ObjectiveConfig) -> torch.Tensor:
    """LVS / HTF's loss: `lvs_loss` of the global batch's cross-similarity maps."""
    cross_similarity = model.similarity(features).cross_similarity
    return lvs_loss(cross_similarity, objective.eps_p, objective.eps_n, objective.tau, objective.temperature)
