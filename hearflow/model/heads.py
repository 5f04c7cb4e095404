"""What the field's methods add to HTF's encoders: projection heads and momentum (EMA) copies.

- EZ-VSL / FNAC: one head, a 1x1 convolution of the visual map (``img_proj``:
  ``B x C x h x w -> B x D x h x w``) and a linear map of the audio vector
  (``aud_proj``: ``B x C -> B x D``), each output L2-normalised;
- SLAVC: two such heads (``img_proj1``, ``img_proj2``, ``aud_proj1``, ``aud_proj2``),
  and momentum copies of every learnable part (``momentum_<name>``), updated after
  each training-mode ``embed`` by `ema_update`.

The names are the authors' (their state dicts load as they are,
`hearflow.checkpoint`). Initialisation as theirs: Kaiming normal (fan_out)
convolutions, truncated normal (std 0.01) linear weights, zero biases of neither kind
touched (PyTorch's defaults).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def head_names(heads: int) -> list[tuple[str, str]]:
    """``[(image head, audio head), ...]``: ``img_proj``/``aud_proj`` for one head, numbered for two."""
    if heads == 1:
        return [("img_proj", "aud_proj")]
    return [(f"img_proj{index}", f"aud_proj{index}") for index in range(1, heads + 1)]


def projection_heads(channels: int, dim: int, heads: int) -> dict[str, nn.Module]:
    """The heads' modules by name: for each head a ``channels -> dim`` 1x1 conv and linear map."""
    modules: dict[str, nn.Module] = {}
    for image_name, audio_name in head_names(heads):
        image, audio = nn.Conv2d(channels, dim, kernel_size=1), nn.Linear(channels, dim)
        nn.init.kaiming_normal_(image.weight, mode="fan_out", nonlinearity="relu")
        nn.init.trunc_normal_(audio.weight, mean=0.0, std=0.01)
        modules[image_name], modules[audio_name] = image, audio
    return modules


def momentum_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that gradients never reach: the start of its momentum encoder."""
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(momentum: nn.Module, online: nn.Module, m: float) -> None:
    """One momentum step, in place: every parameter ``p_m <- m * p_m + (1 - m) * p_online``.

    Buffers (BatchNorm statistics) are not averaged: the momentum module keeps its own,
    from running in training mode, as SLAVC's do.
    """
    for target, source in zip(momentum.parameters(), online.parameters(), strict=True):
        target.mul_(m).add_(source.detach().to(target.dtype), alpha=1 - m)
