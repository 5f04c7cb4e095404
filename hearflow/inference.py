"""Inference options: how a trained model's maps are made, never part of its Config.

They are arguments of `HTF.similarity` (``flow_fusion``), of the backends
(`hearflow.backends`), ``evaluate`` and the ``Localizer``; a checkpoint may record
defaults for them (``"inference"`` beside its config) and an explicit argument wins.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from hearflow.errors import HearflowError

# What EZ-VSL's test.py and FNAC's test scripts evaluate with: their alpha 0.4 weighs the
# audio-visual map, so the object map's weight, hearflow's ``object_fusion``, is 0.6.
# SLAVC's README tests with alpha 0.9: ``object_fusion`` 0.1.
PUBLISHED_OBJECT_FUSION = 0.6
SLAVC_OBJECT_FUSION = 0.1


@dataclass(frozen=True)
class InferenceOptions:
    """Options of a trained model at inference.

    flow_fusion: late fusion, maps scaled by ``1 + alpha * flow magnitude``
    (`hearflow.model.htf.flow_motion`); 0 = off. object_fusion: object-guided
    localization (OGL, `hearflow.model.saliency.fuse_object_saliency`): the map becomes
    ``(1 - w) * norm(map) + w * norm(object saliency)``, each min-max normalised per
    sample, so values lie in [0, 1]; 0 = off, 0.6 = EZ-VSL's and FNAC's alpha 0.4
    (`PUBLISHED_OBJECT_FUSION`), 0.1 = SLAVC's alpha 0.9. object_weights: the saliency trunk's weights,
    ``"imagenet"`` (torchvision's ResNet-18, from its cache) or a file of
    `hearflow.synthetic.pretrain.save_encoder_weights`. sounding_threshold: the
    decision "a visible object makes this sound" is ``confidence > sounding_threshold``
    (`hearflow.negatives.map_max`; set by ``hearflow calibrate``); None = uncalibrated.
    """

    flow_fusion: float = 0.0
    sounding_threshold: float | None = None
    object_fusion: float = 0.0
    object_weights: str = "imagenet"

    def validate(self) -> "InferenceOptions":
        if not self.flow_fusion >= 0:
            raise HearflowError(f"flow fusion must be a non-negative weight, got {self.flow_fusion}")
        if not 0 <= self.object_fusion <= 1:
            raise HearflowError(f"object fusion is a weight in [0, 1] (0 = off, 0.6 = EZ-VSL / FNAC, 0.1 = SLAVC), "
                                f"got {self.object_fusion}")
        if self.sounding_threshold is not None and not math.isfinite(self.sounding_threshold):
            raise HearflowError(f"the sounding threshold must be a finite number, got {self.sounding_threshold}")
        return self

    def with_arguments(self, **arguments: Any) -> "InferenceOptions":
        """A copy with the arguments that are not None set (a caller's explicit choices)."""
        chosen = {name: str(value) if name == "object_weights" else float(value)
                  for name, value in arguments.items() if value is not None}
        return dataclasses.replace(self, **chosen).validate()

    def recorded(self) -> dict[str, Any]:
        """What a checkpoint records: every option (`dataclasses.asdict`)."""
        return dataclasses.asdict(self)
