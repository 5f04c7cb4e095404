"""The HTF network: `build_model` is the one way to make one."""

from __future__ import annotations

from typing import Any

from hearflow.config import Config, preset_config, with_overrides
from hearflow.model.htf import HTF, Localization

__all__ = ["HTF", "Localization", "build_model"]


def build_model(preset: str = "htf", pretrained: bool = False, config: Config | None = None, **overrides: Any) -> HTF:
    """A fresh HTF model for a named preset (or an explicit ``config``) with field overrides.

    ``build_model("htf", prior="spatial")`` or ``build_model(config=cfg, **{"model.width": 32})``
    (``preset`` is ignored when ``config`` is given; ``config`` itself is not modified).
    ``pretrained=True`` loads pre-trained weights (``model.pretrained_weights``:
    torchvision's ImageNet ResNet-18 by default) into the encoders the config asks
    for (``model.vision_pretrained``, ``model.flow_pretrained``); without
    it every encoder is randomly initialised. The model starts in training mode
    and keeps its Config at ``model.config``.
    """
    config = preset_config(preset, **overrides) if config is None else with_overrides(config, **overrides)
    return HTF(config, pretrained=pretrained)
