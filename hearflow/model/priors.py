"""Flow priors: cross-attention from flow features onto the visual map.

One interface, ``prior(visual B x c x h x w, flow_features B x c_f x h x w) -> E_p
B x c x h x w``, which the model adds to the visual map:

- ``channel``: the paper's Eq. 7-8, a d x d channel attention at every position;
- ``spatial``: the released code's SAGAN-style attention across the h*w positions,
  with the released module names (``query_conv``, ``key_conv``, ``value_conv``).

With ``gate=True`` the prior is scaled by a learnable scalar ``gamma`` that starts
at 0, so training starts from the plain visual map.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FlowPrior(nn.Module):
    """Common part of the priors: the optional learnable gate ``gamma`` (starts at 0)."""

    def __init__(self, gate: bool) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(())) if gate else None

    def gated(self, prior: torch.Tensor) -> torch.Tensor:
        return prior if self.gamma is None else self.gamma * prior


class ChannelPrior(FlowPrior):
    """Paper Eq. 7-8: per position, beta = softmax_last((K_v outer Q_f) / sqrt(d)), E = V_v beta.

    K_v and V_v are 1x1 convolutions of the visual map (c -> d), Q_f of the flow
    features (c_f -> d); E (d channels) is projected back to c channels by a 1x1 conv.
    """

    def __init__(self, visual_channels: int, flow_channels: int, dim: int, gate: bool = False) -> None:
        super().__init__(gate)
        self.dim = dim
        self.key_conv = nn.Conv2d(visual_channels, dim, 1)
        self.query_conv = nn.Conv2d(flow_channels, dim, 1)
        self.value_conv = nn.Conv2d(visual_channels, dim, 1)
        self.out_conv = nn.Conv2d(dim, visual_channels, 1)

    def forward(self, visual: torch.Tensor, flow_features: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = visual.shape
        key = self.key_conv(visual).flatten(2)  # B x d x N
        query = self.query_conv(flow_features).flatten(2)  # B x d x N
        value = self.value_conv(visual).flatten(2)  # B x d x N
        beta = torch.einsum("bin,bjn->bnij", key, query).div(math.sqrt(self.dim)).softmax(dim=-1)
        enhanced = torch.einsum("bin,bnij->bjn", value, beta)  # row vector V times matrix beta
        return self.gated(self.out_conv(enhanced.reshape(batch, self.dim, height, width)))


class SpatialPrior(FlowPrior):
    """The released attention: N x N over positions, query/value from visual, key from flow.

    energy = q^T k / sqrt(d) (queries: visual positions, keys: flow positions),
    softmax over keys, out = value x attention^T; no output projection.
    """

    def __init__(self, visual_channels: int, flow_channels: int, dim: int, gate: bool = False) -> None:
        super().__init__(gate)
        self.dim = dim
        self.query_conv = nn.Conv2d(visual_channels, dim, 1)
        self.key_conv = nn.Conv2d(flow_channels, dim, 1)
        self.value_conv = nn.Conv2d(visual_channels, visual_channels, 1)

    def forward(self, visual: torch.Tensor, flow_features: torch.Tensor) -> torch.Tensor:
        query = self.query_conv(visual).flatten(2)  # B x d x N
        key = self.key_conv(flow_features).flatten(2)  # B x d x N
        value = self.value_conv(visual).flatten(2)  # B x c x N
        attention = (query.transpose(1, 2) @ key).div(math.sqrt(self.dim)).softmax(dim=-1)  # B x N x N
        return self.gated((value @ attention.transpose(1, 2)).view_as(visual))


PRIOR_TYPES = {"channel": ChannelPrior, "spatial": SpatialPrior}


def build_prior(kind: str, visual_channels: int, flow_channels: int, dim: int, gate: bool) -> FlowPrior:
    """The prior named ``kind`` (``channel`` or ``spatial``)."""
    return PRIOR_TYPES[kind](visual_channels, flow_channels, dim, gate)
