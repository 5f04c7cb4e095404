"""``slavc``: SLAVC's two-head loss against momentum targets (Mo & Morgado, NeurIPS 2022).

With the online heads' features (v1, a1), (v2, a2), the momentum copies' (v1', a1'),
(v2', a2'), ``S[x, y]`` the ``B x B x h x w`` cosine maps of images x with audios y
and ``tau`` = ``objective.temperature``:

- image->audio: ``P1 = softmax over audios j of S[v1, a1'] / tau`` (per position),
  ``P2 = softmax over positions of S[v2, a2'] / tau``, ``IA_ij = log sum_p P1 P2``;
- audio->image: the same with (v1', a1) and (v2', a2): ``AI_ij``;
- loss = cross-entropy of the rows of ``AI`` plus of ``IA``, towards the own pair.

``log sum_p P1 P2`` is computed as a log-sum-exp of log-softmaxes (same value, no
underflow). Needs a model with two heads and momentum encoders (the ``slavc`` preset).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from hearflow.config import ObjectiveConfig
from hearflow.errors import HearflowError
from hearflow.objective.registry import at_least_float32, register_loss

if TYPE_CHECKING:
    from hearflow.model.htf import HTF, Features


def slavc_logits(localisation: torch.Tensor, correspondence: torch.Tensor, temperature: float) -> torch.Tensor:
    """``B x B`` log-probabilities from head 1's maps (softmax over audios, axis 1) and head 2's
    (softmax over positions); both ``B x B x h x w``."""
    over_audio = F.log_softmax(at_least_float32(localisation).flatten(2) / temperature, dim=1)
    over_positions = F.log_softmax(at_least_float32(correspondence).flatten(2) / temperature, dim=2)
    return torch.logsumexp(over_audio + over_positions, dim=2)


def slavc_loss(image_to_audio: torch.Tensor, audio_to_image: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of both ``B x B`` logit matrices' rows towards the diagonal."""
    target = torch.arange(image_to_audio.shape[0], device=image_to_audio.device)
    return F.cross_entropy(audio_to_image, target) + F.cross_entropy(image_to_audio, target)


@register_loss("slavc")
def slavc(features: "Features", model: "HTF", objective: ObjectiveConfig, epoch: int) -> torch.Tensor:
    """SLAVC's loss of the batch (module docstring); maps made by ``model.similarity``."""
    if features.second_visual is None or features.momentum_visual is None:
        raise HearflowError("objective.loss slavc needs two heads and momentum encoders in training mode "
                            "(--set model.heads=2 model.momentum=0.999 and model.projection > 0, as the slavc "
                            "preset has)")
    kind = type(features)

    def maps(visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return model.similarity(kind(visual, audio)).cross_similarity

    target_visual, target_audio = features.momentum_visual, features.momentum_audio
    image_to_audio = slavc_logits(maps(features.visual, target_audio[:, 0]),
                                  maps(features.second_visual, target_audio[:, 1]), objective.temperature)
    audio_to_image = slavc_logits(maps(target_visual[:, 0], features.audio),
                                  maps(target_visual[:, 1], features.second_audio), objective.temperature)
    return slavc_loss(image_to_audio, audio_to_image)
