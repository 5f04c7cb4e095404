"""``ezvsl`` and ``fnac``: max-over-positions multiple-instance InfoNCE, and FNAC's regularisers.

EZ-VSL (Mo & Morgado, ECCV 2022): with ``S_ij`` the cosine map of image i and audio j
(``B x B x h x w``) and ``tau`` the temperature (``objective.temperature``, 0.03), the
logits are ``L_ij = max_p S_ij(p) / tau`` and the loss is the cross-entropy of each
image over the audios plus that of each audio over the images, both towards the own
pair (`ezvsl_loss`).

FNAC (Sun et al., CVPR 2023) adds, after ``objective.fnac_warmup`` epochs, three L1
distances between row-softmaxed B x B similarity matrices (`fnac_terms`): audio-audio
``A = a a^T / tau`` vs ``L`` (weight ``fnac_audio_weight``); ``A`` vs the foreground
image-image ``G = g g^T / tau``, g the mean visual feature over the cells whose
min-max normalised own map ``S_ii / tau`` exceeds ``fnac_threshold``
(``fnac_foreground_weight``); image-image ``I = v v^T / tau``, v the visual map's
mean over positions, vs ``L`` (``fnac_image_weight``). L1 is the mean absolute
difference over the B x B entries, as ``F.l1_loss``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from hearflow.config import ObjectiveConfig
from hearflow.objective.registry import at_least_float32, register_loss

if TYPE_CHECKING:
    from hearflow.model.htf import HTF, Features

# FNAC's normalisation of the own map: (S - min) / (max - min + 1e-5), in logits
FNAC_RANGE_EPS = 1e-5


def mil_logits(cross_similarity: torch.Tensor, temperature: float) -> torch.Tensor:
    """``B x B x h x w`` maps -> ``B x B`` logits: each map's maximum over positions / temperature."""
    return at_least_float32(cross_similarity).flatten(2).amax(dim=-1) / temperature


def ezvsl_loss(cross_similarity: torch.Tensor, temperature: float = 0.03) -> torch.Tensor:
    """EZ-VSL's loss, a scalar: image->audio plus audio->image cross-entropy of `mil_logits`."""
    logits = mil_logits(cross_similarity, temperature)
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)


def fnac_terms(visual: torch.Tensor, audio: torch.Tensor, cross_similarity: torch.Tensor, temperature: float,
               threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FNAC's (audio-audio, foreground, image-image) L1 terms, each a scalar.

    visual ``B x c x h x w`` and audio ``B x c``: L2-normalised features (the first
    head's); cross_similarity: their ``B x B x h x w`` cosine maps.
    """
    visual, audio = at_least_float32(visual), at_least_float32(audio)
    logits = mil_logits(cross_similarity, temperature)
    audio_audio = audio @ audio.T / temperature
    pooled = visual.mean(dim=(2, 3))
    image_image = pooled @ pooled.T / temperature
    own = torch.diagonal(at_least_float32(cross_similarity)).permute(2, 0, 1) / temperature  # B x h x w
    low, high = own.amin(dim=(1, 2), keepdim=True), own.amax(dim=(1, 2), keepdim=True)
    foreground_cells = ((own - low) / (high - low + FNAC_RANGE_EPS) > threshold).to(visual.dtype)
    foreground = (visual * foreground_cells[:, None]).flatten(2).mean(dim=-1)
    foreground_foreground = foreground @ foreground.T / temperature

    def distance(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(torch.softmax(first, dim=1), torch.softmax(second, dim=1))

    return (distance(audio_audio, logits), distance(audio_audio, foreground_foreground),
            distance(image_image, logits))


@register_loss("ezvsl")
def ezvsl(features: "Features", model: "HTF", objective: ObjectiveConfig, epoch: int) -> torch.Tensor:
    """EZ-VSL: `ezvsl_loss` of the batch's maps at ``objective.temperature``."""
    return ezvsl_loss(model.similarity(features).cross_similarity, objective.temperature)


@register_loss("fnac")
def fnac(features: "Features", model: "HTF", objective: ObjectiveConfig, epoch: int) -> torch.Tensor:
    """FNAC: EZ-VSL's loss, plus the weighted `fnac_terms` once ``epoch > objective.fnac_warmup``."""
    cross_similarity = model.similarity(features).cross_similarity
    loss = ezvsl_loss(cross_similarity, objective.temperature)
    if epoch <= objective.fnac_warmup:
        return loss
    audio_term, foreground_term, image_term = fnac_terms(features.visual, features.audio, cross_similarity,
                                                         objective.temperature, objective.fnac_threshold)
    return (loss + objective.fnac_audio_weight * audio_term + objective.fnac_foreground_weight * foreground_term
            + objective.fnac_image_weight * image_term)
