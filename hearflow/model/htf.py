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
    AudioEncoder,
    ImageEncoder,
    encoder_weights_state_dict,
    flow_encoder,
    imagenet_state_dict,
    load_trunk_weights,
    max_pool_flow,
)
from hearflow.model.priors import build_prior


class Localization(NamedTuple):
    """Cosine-similarity maps between visual positions and audio vectors.

    similarity: ``B x h x w``, image k with its own audio k.
    cross_similarity: ``B x B x h x w``, image i with audio j.
    Values lie in [-1, 1], except in eval mode with ``model.flow_fusion > 0``
    where they are scaled by ``1 + alpha * flow magnitude``.
    """

    similarity: torch.Tensor
    cross_similarity: torch.Tensor


class HTF(nn.Module):
    """Hear The Flow: ``model(image, flow, spectrogram) -> Localization``.

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
        self.audnet = AudioEncoder(m.width)
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
                raise HearflowError(
                    f"ImageNet weights exist only for model.width {IMAGENET_WIDTH}, not {m.width}; set "
                    "model.vision_pretrained=false and model.flow_pretrained=false (or --no-pretrained)"
                )
            weights = imagenet_state_dict()
        else:
            weights = encoder_weights_state_dict(m.pretrained_weights, m.width)
        if m.vision_pretrained:
            load_trunk_weights(self.imgnet, weights)
        if m.flow_pretrained and self.flownet is not None:
            load_trunk_weights(self.flownet, weights, conv1_init=m.flow_conv1_init)

    def visual_map(self, image: torch.Tensor, flow: torch.Tensor | None) -> torch.Tensor:
        """The visual map plus the flow prior, L2-normalised per position: ``B x 8w x h x w``."""
        visual = self.imgnet(image)
        if self.flowatt is not None:
            if self.flownet is not None:
                flow_features = self.flownet(flow)
            else:
                flow_features = max_pool_flow(flow, visual.shape[-2:])
            visual = visual + self.flowatt(visual, flow_features)
        return F.normalize(visual, dim=1)

    def forward(self, image: torch.Tensor, flow: torch.Tensor | None, spectrogram: torch.Tensor) -> Localization:
        visual = self.visual_map(image, flow)
        audio = self.audnet(spectrogram)
        cross_similarity = torch.einsum("ichw,jc->ijhw", visual, audio)
        alpha = self.config.model.flow_fusion
        if alpha > 0 and not self.training:
            motion = flow_motion(flow, visual.shape[-2:])
            cross_similarity = cross_similarity * (1 + alpha * motion[:, None])
        similarity = torch.diagonal(cross_similarity).permute(2, 0, 1)
        return Localization(similarity, cross_similarity)


def flow_motion(flow: torch.Tensor, map_size: tuple[int, int]) -> torch.Tensor:
    """Per-sample flow magnitude max-pooled to ``map_size`` and scaled to [0, 1]: ``B x h x w``.

    A sample whose flow is all zero gets zeros.
    """
    magnitude = flow.float().norm(dim=1, keepdim=True)
    pooled = F.adaptive_max_pool2d(magnitude, map_size)[:, 0]
    peak = pooled.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, pooled / peak.clamp_min(torch.finfo(pooled.dtype).tiny), torch.zeros_like(pooled))
