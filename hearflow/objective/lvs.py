"""``lvs``: the trimap contrastive loss (LVS / HTF Eq. 4-6, as released, made numerically safe)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from hearflow.config import ObjectiveConfig
from hearflow.objective.registry import register_loss

if TYPE_CHECKING:
    from hearflow.model.htf import HTF, Features


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
def trimap_contrastive(features: "Features", model: "HTF", objective: ObjectiveConfig, epoch: int) -> torch.Tensor:
    """LVS / HTF's loss: `lvs_loss` of the batch's cross-similarity maps."""
    cross_similarity = model.similarity(features).cross_similarity
    return lvs_loss(cross_similarity, objective.eps_p, objective.eps_n, objective.tau, objective.temperature)
