"""The registry of training losses: `register_loss` adds one under a name, `get_loss` finds it.

A loss is a function ``loss(features, model, objective, epoch) -> scalar``:
``features`` are the batch's `hearflow.model.htf.Features` (the global batch's, or
this process's share with ``objective.loss_batch: per-process``), ``model`` gives
the second half (``model.similarity``), ``objective`` is the run's `ObjectiveConfig`
and ``epoch`` the training epoch, counted from 1 (for warm-ups such as FNAC's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from hearflow.config import ObjectiveConfig
from hearflow.errors import HearflowError

if TYPE_CHECKING:
    from hearflow.model.htf import HTF, Features

LossFunction = Callable[["Features", "HTF", ObjectiveConfig, int], torch.Tensor]
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
        raise HearflowError(f"objective.loss is {name!r}; registered losses: {', '.join(sorted(LOSSES))}") from None


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32, or float64 when it is float64: the precision losses compute in."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))
