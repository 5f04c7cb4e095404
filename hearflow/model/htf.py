"""The HTF model: image, audio and flow encoders, a flow prior, cosine-similarity maps.

Submodule names follow the released code (``imgnet``, ``audnet``, ``flownet``,
``flowatt``) so that a released state dict loads with ``strict=True``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hearflow.config import Config
from hearflow.errors import HearflowError
from hearflow.model.encoders import (
    IMAGENET_WIDTH,
    WITHOUT_PRETRAINED_WEIGHTS,
    AudioEncoder,
    ImageEncoder,
    encoder_weights_state_dict,
    flow_encoder,
    imagenet_state_dict,
    load_trunk_weights,
    max_pool_flow,
)
from hearflow.model.priors import build_prior


class Features(NamedTuple):
    """What `HTF.embed` returns: everything the similarity and the losses are made from.

    visual: ``B x c x h x w``, the visual map plus the flow prior, L2-normalised per
    position; audio: ``B x c``, L2-normalised. Every field is a tensor whose first axis
    is the batch, so training can gather a global batch field by field.
    """

    visual: torch.Tensor
    audio: torch.Tensor


class Localization(NamedTuple):
    """Cosine-similarity maps between visual positions and audio vectors.

    similarity: ``B x h x w``, image k with its own audio k.
    cross_similarity: ``B x B x h x w``, image i with audio j.
    Values lie in [-1, 1], except with late fusion (``flow_fusion > 0``), which scales
    them by ``1 + alpha * flow magnitude``.
    """

    similarity: torch.Tensor
    cross_similarity: torch.Tensor


class HTF(nn.Module):
    """Hear The Flow: ``model(image, flow, spectrogram) -> Localization``.

    Two halves, composed by ``forward`` and used as they are by training:

    - ``embed(image, flow, spectrogram) -> Features``: the encoders and the flow prior
      (every learnable part of the model);
    - ``similarity(features, flow=None, flow_fusion=0.0) -> Localization``: the cosine
      maps of every image with every audio clip (no parameters).

    image ``B x 3 x S x S`` (ImageNet-normalised), flow ``B x 2 x S x S`` (in the
    config's flow encoding; unused, may be None, when ``model.prior`` is ``none`` and
    there is no flow fusion), spectrogram ``B x 1 x F x T``. Maps are
    ``h = w = S / model.map_stride``. Build it with `hearflow.build_model`.
    """

    def __init__(self, config: Config, pretrained: bool = False) -> None:
        super().__init__()
        self.config = config
        m = config.model
        channels = 8 * m.width
        self.imgnet = ImageEncoder(m.width, m.map_stride, frozen=m.vision_frozen, bn_drift=m.vision_bn_drift)
        self.audnet = AudioEncoder(m.width, m.audio_pool)
        uses_flow_trunk = m.prior != "none" and m.flow_encoder == "resnet18"
        self.flownet = flow_encoder(m.width, m.map_stride, m.flow_conv1_init) if uses_flow_trunk else None
        flow_channels = channels if uses_flow_trunk else 2
        self.flowatt = None
        if m.prior != "none":
            self.flowatt = build_prior(m.prior, channels, flow_channels, m.prior_dim, m.prior_gate)
        if pretrained:
            self._load_pretrained()

    def _load_pretrained(self) -> None:
        """Pre-trained weights (``model.pretrained_weights``) into the encoders the config names."""
        m = self.config.model
        if not (m.vision_pretrained or (m.flow_pretrained and self.flownet is not None)):
            return
        if m.pretrained_weights == "imagenet":
            if m.width != IMAGENET_WIDTH:
                raise HearflowError(f"ImageNet weights exist only for model.width {IMAGENET_WIDTH}, not {m.width}; "
                                    f"start without them: {WITHOUT_PRETRAINED_WEIGHTS}")
            weights = imagenet_state_dict()
        else:
            weights = encoder_weights_state_dict(m.pretrained_weights, m.width)
        if m.vision_pretrained:
            load_trunk_weights(self.imgnet, weights)
        if m.flow_pretrained and self.flownet is not None:
            load_trunk_weights(self.flownet, weights, conv1_init=m.flow_conv1_init)

    def embed(self, image: torch.Tensor, flow: torch.Tensor | None, spectrogram: torch.Tensor) -> Features:
        """The first half: visual maps (with the flow prior) and audio vectors, both L2-normalised."""
        visual = self.imgnet(image)
        if self.flowatt is not None:
            if self.flownet is not None:
                flow_features = self.flownet(flow)
            else:
                flow_features = max_pool_flow(flow, _map_size(visual), self.config.model.flow_pool)
            visual = visual + self.flowatt(visual, flow_features)
        return Features(F.normalize(visual, dim=1), self.audnet(spectrogram))

    def similarity(
        self, features: Features, flow: torch.Tensor | None = None, flow_fusion: float = 0.0
    ) -> Localization:
        """The second half: every image's map with every audio vector, in float32 (float64 for float64 features).

        flow_fusion: late fusion, maps scaled by ``1 + flow_fusion * flow_motion(flow)``
        (an inference option; needs ``flow``). 0 leaves the cosines as they are.
        """
        precision = torch.promote_types(features.visual.dtype, torch.float32)
        visual, audio = features.visual.to(precision), features.audio.to(precision)
        cross_similarity = torch.einsum("ichw,jc->ijhw", visual, audio)
        if flow_fusion < 0:
            raise HearflowError(f"flow fusion must be a non-negative weight, got {flow_fusion}")
        if flow_fusion > 0:
            if flow is None:
                raise HearflowError("flow fusion needs the flow")
            motion = flow_motion(flow, _map_size(visual)).to(precision)
            cross_similarity = cross_similarity * (1 + flow_fusion * motion[:, None])
        similarity = torch.diagonal(cross_similarity).permute(2, 0, 1)
        return Localization(similarity, cross_similarity)

    def forward(
        self, image: torch.Tensor, flow: torch.Tensor | None, spectrogram: torch.Tensor, flow_fusion: float = 0.0
    ) -> Localization:
        return self.similarity(self.embed(image, flow, spectrogram), flow=flow, flow_fusion=flow_fusion)


def _map_size(visual: torch.Tensor) -> tuple[int, int]:
    """(h, w) of a visual map as plain ints: a constant, not a traced shape, when the model is exported."""
    return int(visual.shape[-2]), int(visual.shape[-1])


def flow_motion(flow: torch.Tensor, map_size: tuple[int, int]) -> torch.Tensor:
    """Per-sample flow magnitude max-pooled to ``map_size`` and scaled to [0, 1]: ``B x h x w``.

    A sample whose flow is all zero gets zeros.
    """
    magnitude = flow.float().norm(dim=1, keepdim=True)
    pooled = F.adaptive_max_pool2d(magnitude, map_size)[:, 0]
    peak = pooled.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, pooled / peak.clamp_min(torch.finfo(pooled.dtype).tiny), torch.zeros_like(pooled))
