"""The study's rows: what a row is (`StudyRow`) and the method axis of the flow-prior study.

The method axis trains LVS, EZ-VSL, FNAC, SLAVC and HTF on the same synthetic data and
seeds as the flow-prior rows, each without flow, with the learned prior (the one the
demo's HTF uses: spatial, ResNet-18 flow encoder, gated) and with late fusion, and
with object-guided localization's analog (OGL: the seed's synthetic pre-trained trunk,
`hearflow.synthetic.pretrain`, as the object-saliency trunk, weight
`hearflow.inference.PUBLISHED_OBJECT_FUSION`). LVS without flow is the study's ``lvs``
row and with the prior its ``spatial-resnet18-gated`` row (= HTF).

Every method row is ``demo-lvs`` (the demo's CPU model, its recipe: epochs, lr, batch)
plus the method preset's model and loss fields (`hearflow.methods`), with two
changes for the tiny model and short runs, said here once: the projections map to
the trunk's 128 channels (not 512), and SLAVC's momentum is 0.99 (its 0.999 would
leave the momentum encoders at their random start over a run of a few hundred steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hearflow.methods import METHOD_PRESETS

CENTER, FLOW_ONLY, LATE_FUSION = "center", "flow_only", "lvs_flow_fusion"
OBJECT_FUSION = "object_fusion"  # training-free on a trained row: its maps blended with object saliency


@dataclass(frozen=True)
class StudyRow:
    """One row of the study: a trained preset with overrides, or a training-free method.

    base: for a training-free ``method``, the trained row whose checkpoint it runs on
    (None: ``lvs``); pretrain: start from (or, for OGL, blend with) the seed's
    synthetic classifier, Table 4's ImageNet.
    """

    name: str
    description: str
    preset: str | None = None  # trained rows: the preset and its overrides
    overrides: tuple[tuple[str, Any], ...] = ()
    method: str | None = None  # training-free rows: a method of `lab.TRAINING_FREE`
    pretrain: bool = False
    base: str | None = None


LEARNED_PRIOR = (("model.prior", "spatial"), ("model.flow_encoder", "resnet18"), ("model.prior_gate", True))
STUDY_PROJECTION = 128  # the demo trunk's channels (8 x model.width 16)
STUDY_MOMENTUM = 0.99
METHOD_NAMES = {"ezvsl": "EZ-VSL", "fnac": "FNAC", "slavc": "SLAVC"}


def method_fields(method: str) -> tuple[tuple[str, Any], ...]:
    """The model and loss fields of a method preset for the study's model (module docstring)."""
    _, fields, _ = METHOD_PRESETS[method]
    chosen = {key: value for key, value in fields.items() if not key.startswith("train.") and key != "model.prior"}
    chosen["model.projection"] = STUDY_PROJECTION
    if chosen.get("model.momentum"):
        chosen["model.momentum"] = STUDY_MOMENTUM
    return tuple(chosen.items())


def method_rows() -> tuple[StudyRow, ...]:
    """The method axis: per method, no flow / learned prior / vision pre-trained / late fusion / OGL;
    and OGL for LVS and HTF."""
    rows = [StudyRow("lvs-ogl", "LVS + object-guided localization (synthetic trunk), no training",
                     method=OBJECT_FUSION, pretrain=True, base="lvs"),
            StudyRow("htf-ogl", "HTF (spatial-resnet18-gated) + object-guided localization, no training",
                     method=OBJECT_FUSION, pretrain=True, base="spatial-resnet18-gated")]
    for method, label in METHOD_NAMES.items():
        fields = method_fields(method)
        rows += [
            StudyRow(method, f"{label}, no flow", "demo-lvs", fields),
            StudyRow(f"{method}-prior", f"{label} + the learned flow prior (spatial, gated)", "demo-lvs",
                     fields + LEARNED_PRIOR),
            StudyRow(f"{method}-pretrained", f"{label}, vision started from the synthetic pre-trained trunk "
                     "(the published method's ImageNet start)", "demo-lvs",
                     fields + (("model.vision_pretrained", True),), pretrain=True),
            StudyRow(f"{method}-late-fusion", f"{label} map x (1 + flow magnitude), no training",
                     method=LATE_FUSION, base=method),
            StudyRow(f"{method}-ogl", f"{label} + object-guided localization (synthetic trunk), no training",
                     method=OBJECT_FUSION, pretrain=True, base=method),
        ]
    return tuple(rows + fnac_diagnosis_rows())


def fnac_diagnosis_rows() -> list[StudyRow]:
    """Why FNAC did not localize from the pre-trained trunk where EZ-VSL did: FNAC differs
    from EZ-VSL in the study by its regularisers and its image dropout, and each row
    removes one of the two (docs/methods-study.md). Diagnosis, not a method."""
    pretrained = method_fields("fnac") + (("model.vision_pretrained", True),)
    unregularised = tuple((f"objective.fnac_{term}_weight", 0.0) for term in ("audio", "foreground", "image"))
    return [
        StudyRow("fnac-pretrained-no-regularisers", "FNAC from the pre-trained trunk, its three regularisers "
                 "weighted 0 (EZ-VSL + FNAC's image dropout)", "demo-lvs", pretrained + unregularised,
                 pretrain=True),
        StudyRow("fnac-pretrained-no-dropout", "FNAC from the pre-trained trunk without its image dropout",
                 "demo-lvs", pretrained + (("model.dropout_image", 0.0),), pretrain=True),
    ]
