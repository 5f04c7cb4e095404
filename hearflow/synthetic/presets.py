"""The demo's CPU-sized configurations (not paper rows, so not in `hearflow.config.PRESETS`).

- ``cpu-small``: quarter-width ResNet-18 blocks on 64 x 64 inputs with an 8 x 8 map,
  nothing pre-trained, vision trained, the audio map max-pooled (as released); the
  tests' model;
- ``demo-lvs``: cpu-small without a flow prior, with an 8 kHz audio front end (the
  synthetic sounds lie below 3.2 kHz; it halves the audio encoder's work) and flow at
  the videos' own size;
- ``demo-htf``: demo-lvs with the flow prior the flow-prior study recommends
  (``docs/flow-prior-study.md``): the released ``spatial`` prior with the gate, on the
  ResNet-18 flow encoder.

Each is the fields that differ from the ``htf`` preset; a run's ``config.yaml`` (or
`demo_config(...).to_yaml()`) gives the whole configuration to
``hearflow train --config``.
"""

from __future__ import annotations

from typing import Any

from hearflow.config import Config, apply_overrides, with_overrides
from hearflow.errors import HearflowError

_CPU_SMALL = {
    "model.width": 16,
    "model.map_stride": 8,
    "model.prior_dim": 32,
    "model.vision_pretrained": False,
    "model.vision_frozen": False,
    "model.flow_pretrained": False,
    "model.flow_conv1_init": "random",
    "data.image_size": 64,
    "data.train_resize": 70,
    "train.batch_size": 64,
    "train.epochs": 10,
    # The released max pool (the ``htf`` preset follows Eq. 2's average): the pooling every
    # documented demo and study result was made with (docs/released-recipe.md compares both).
    "model.audio_pool": "max",
}
_DEMO_LVS = {**_CPU_SMALL, "model.prior": "none", "data.sample_rate": 8000, "data.flow_size": 0}
DEMO_PRESETS: dict[str, dict[str, Any]] = {
    "cpu-small": _CPU_SMALL,
    "demo-lvs": _DEMO_LVS,
    "demo-htf": {**_DEMO_LVS, "model.prior": "spatial", "model.flow_encoder": "resnet18", "model.prior_gate": True},
}


def demo_config(name: str, **overrides: Any) -> Config:
    """The demo configuration ``name`` with dotted or bare field overrides (as `preset_config`)."""
    if name not in DEMO_PRESETS:
        raise HearflowError(f"unknown demo configuration {name!r}; choose one of {', '.join(DEMO_PRESETS)}")
    config = Config(preset=name)
    apply_overrides(config, dict(DEMO_PRESETS[name]))
    return with_overrides(config, **overrides)
