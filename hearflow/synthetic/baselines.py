"""Training-free localization baselines that look like models to `hearflow.scoring.predict`.

Each is an ``nn.Module`` called like `hearflow.model.HTF`, ``module(image, flow,
spectrogram, flow_fusion=0.0) -> Localization`` (inference options do not apply to
them and are ignored), so the demo and the study score them with exactly the code
that scores a trained checkpoint. Neither listens to the audio:

- `CenterBox`: the same centred map for every clip (what "sources sit in the
  middle" predicts); the protocol's median threshold turns it into a centred square
  covering half the frame;
- `FlowMagnitude`: the optical-flow magnitude max-pooled to the map grid and scaled
  to [0, 1] per clip (`hearflow.model.htf.flow_motion`): "whatever moves sounds".

Late fusion (a model's map times ``1 + alpha * flow magnitude``) is not here: it is
the inference option ``flow_fusion`` of every model (`hearflow.model.HTF.similarity`).
"""

from __future__ import annotations

import torch
from torch import nn

from hearflow.model.htf import Localization, flow_motion


class CenterBox(nn.Module):
    """Maps ``B x h x w`` equal to 1 minus the Chebyshev distance to the centre (in half-sizes)."""

    def __init__(self, map_size: int) -> None:
        super().__init__()
        centres = (torch.arange(map_size, dtype=torch.float32) + 0.5) / map_size * 2.0 - 1.0
        distance = torch.maximum(centres.abs()[:, None], centres.abs()[None, :])
        self.register_buffer("single", 1.0 - distance)

    def forward(self, image: torch.Tensor, flow: torch.Tensor, spectrogram: torch.Tensor,
                flow_fusion: float = 0.0) -> Localization:
        return _audio_blind(self.single.expand(image.shape[0], -1, -1))


class FlowMagnitude(nn.Module):
    """Maps ``B x h x w``: the flow magnitude max-pooled to ``map_size`` and scaled to [0, 1]."""

    def __init__(self, map_size: int) -> None:
        super().__init__()
        self.map_size = map_size

    def forward(self, image: torch.Tensor, flow: torch.Tensor, spectrogram: torch.Tensor,
                flow_fusion: float = 0.0) -> Localization:
        return _audio_blind(flow_motion(flow, (self.map_size, self.map_size)))


def _audio_blind(similarity: torch.Tensor) -> Localization:
    """A map that ignores the audio: image i scores the same with every audio j."""
    batch = similarity.shape[0]
    return Localization(similarity, similarity[:, None].expand(batch, batch, *similarity.shape[1:]))
