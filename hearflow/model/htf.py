"""The HTF model: image, audio and flow encoders, a flow prior, cosine-similarity maps.

Submodule names follow the released code (``imgnet``, ``audnet``, ``flownet``,
``flowatt``) so that a released state dict loads with ``strict=True``; the heads and
momentum copies of the field's methods (`hearflow.model.heads`) follow EZ-VSL's and
SLAVC's names in the same way.
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
from hearflow.model.heads import ema_update, head_names, momentum_copy, projection_heads
from hearflow.model.priors import build_prior


class Features(NamedTuple):
    """What `HTF.embed` returns: everything the similarity and the losses are made from.

    visual: ``B x c x h x w``, the visual map plus the flow prior (through the first
    projection head, if any), L2-normalised per position; audio: ``B x c``,
    L2-normalised. With two heads (SLAVC) ``second_visual`` / ``second_audio`` are the
    second head's, same shapes; with momentum encoders (training mode only)
    ``momentum_visual`` ``B x H x c x h x w`` and ``momentum_audio`` ``B x H x c`` are
    the momentum copies' outputs for the H heads (no gradient). Absent fields are None.
    Every tensor's first axis is the batch, so training gathers and splits a global
    batch field by field (skipping None).
    """

    visual: torch.Tensor
    audio: torch.Tensor
    second_visual: torch.Tensor | None = None
    second_audio: torch.Tensor | None = None
    momentum_visual: torch.Tensor | None = None
    momentum_audio: torch.Tensor | None = None

    def rows(self, rows: slice) -> "Features":
        """The same fields for a slice of the batch (None stays None)."""
        return Features(*(None if value is None else value[rows] for value in self))


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
        self.audnet = AudioEncoder(m.width, m.audio_pool, normalize=not m.projection)
        uses_flow_trunk = m.prior != "none" and m.flow_encoder == "resnet18"
        self.flownet = flow_encoder(m.width, m.map_stride, m.flow_conv1_init) if uses_flow_trunk else None
        flow_channels = channels if uses_flow_trunk else 2
        self.flowatt = None
        if m.prior != "none":
            self.flowatt = build_prior(m.prior, channels, flow_channels, m.prior_dim, m.prior_gate)
        self.heads = head_names(m.heads) if m.projection else []
        for name, module in (projection_heads(channels, m.projection, m.heads) if m.projection else {}).items():
            self.add_module(name, module)
        if pretrained:
            self._load_pretrained()
        self.momentum_names = []
        if m.momentum > 0:  # after the pre-trained weights: the copies start equal to the online modules
            self.momentum_names = [name for name, _ in self._online_modules()]
            for name, module in self._online_modules():
                self.add_module(f"momentum_{name}", momentum_copy(module))

    def _online_modules(self) -> list[tuple[str, nn.Module]]:
        names = ["imgnet", "audnet", "flownet", "flowatt"] + [name for pair in self.heads for name in pair]
        return [(name, getattr(self, name)) for name in names if getattr(self, name, None) is not None]

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
        """The first half: visual maps (with the flow prior) and audio vectors, both L2-normalised.

        With momentum encoders, each call in training mode first moves them one EMA
        step towards the online modules (`hearflow.model.heads.ema_update`) and then adds
        their outputs as targets; in eval mode with ``model.momentum_eval`` the maps
        come from the momentum copies instead of the online modules (SLAVC's test).
        """
        if not self.momentum_names:
            return self._branch("", image, flow, spectrogram)
        if not self.training:
            return self._branch("momentum_" if self.config.model.momentum_eval else "", image, flow, spectrogram)
        for name in self.momentum_names:
            ema_update(getattr(self, f"momentum_{name}"), getattr(self, name), self.config.model.momentum)
        online = self._branch("", image, flow, spectrogram)
        with torch.no_grad():
            target = self._branch("momentum_", image, flow, spectrogram)
        visuals = [target.visual] + ([] if target.second_visual is None else [target.second_visual])
        audios = [target.audio] + ([] if target.second_audio is None else [target.second_audio])
        return online._replace(momentum_visual=torch.stack(visuals, 1), momentum_audio=torch.stack(audios, 1))

    def _branch(self, prefix: str, image: torch.Tensor, flow: torch.Tensor | None,
                spectrogram: torch.Tensor) -> Features:
        """The encoders, prior and heads whose names start with ``prefix`` ("" online, "momentum_")."""
        def module(name: str) -> nn.Module:
            return getattr(self, prefix + name)

        visual = module("imgnet")(image)
        if self.flowatt is not None:
            if self.flownet is not None:
                flow_features = module("flownet")(flow)
            else:
                flow_features = max_pool_flow(flow, _map_size(visual), self.config.model.flow_pool)
            visual = visual + module("flowatt")(visual, flow_features)
        audio = module("audnet")(spectrogram)
        if not self.heads:
            return Features(F.normalize(visual, dim=1), audio)
        m = self.config.model
        visual = F.dropout(visual, m.dropout_image, self.training)
        audio = F.dropout(audio, m.dropout_audio, self.training)
        outputs = [(F.normalize(module(image_head)(visual), dim=1), F.normalize(module(audio_head)(audio), dim=1))
                   for image_head, audio_head in self.heads]
        second = outputs[1] if len(outputs) > 1 else (None, None)
        return Features(*outputs[0], *second)

    def similarity(
        self, features: Features, flow: torch.Tensor | None = None, flow_fusion: float = 0.0
    ) -> Localization:
        """The second half: every image's map with every audio vector, in float32 (float64 for float64 features).

        With two heads the maps are the mean of the two heads' cosines (SLAVC's test map).
        flow_fusion: late fusion, maps scaled by ``1 + flow_fusion * flow_motion(flow)``
        (an inference option; needs ``flow``). 0 leaves the cosines as they are.
        """
        precision = torch.promote_types(features.visual.dtype, torch.float32)
        visual, audio = features.visual.to(precision), features.audio.to(precision)
        cross_similarity = torch.einsum("ichw,jc->ijhw", visual, audio)
        if features.second_visual is not None:
            second = torch.einsum("ichw,jc->ijhw", features.second_visual.to(precision),
                                  features.second_audio.to(precision))
            cross_similarity = (cross_similarity + second) / 2
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
