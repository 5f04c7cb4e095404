"""The named presets: the paper's rows and the authors' released variants, as plain data.

A `Preset` is the fields that differ from the defaults (the ``htf`` preset, the paper's
text) and, for every one of them, one line on why (``why``); ``hearflow presets NAME``
shows both. The field's methods (EZ-VSL, FNAC, SLAVC) are written in `hearflow.methods`. `hearflow.config.preset_config` turns a name into a `Config`.

The released presets (``htf-released``, ``htf-released-maxpool``) reproduce the
authors' released code, recipe included: preprocessing at the video's own resolution,
the Flickr test audio cut around the middle of the whole track, training in the sorted
order of the ids, the first of the epochs tied on validation cIoU@0.5 kept
(docs/released-recipe.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hearflow.methods import METHOD_PRESETS


@dataclass(frozen=True)
class Preset:
    """A named configuration.

    description: one line, what it is and which paper row it reproduces; fields: the
    dotted fields that differ from the defaults, with their values; why: one line per
    field of ``fields`` saying why it differs (tests require one for each).
    """

    description: str
    fields: dict[str, Any] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)


_RELEASED = {
    "model.prior": ("spatial", "the released attention is spatial (49 x 49 over positions), not Eq. 7-8's channel one"),
    "model.flow_conv1_init": ("random", "the release replaces the ImageNet conv1 of the flow trunk by a fresh 2-channel conv"),
    "model.vision_bn_drift": (True, "the release freezes the vision weights but leaves its BatchNorm in training mode"),
    "model.audio_pool": ("max", "the released audio encoder pools globally by max (Eq. 2 says average)"),
    "model.flow_pool": ("channel-max", "the released max-pool flow encoder pools dx and dy separately (no effect with "
                                       "the ResNet-18 flow encoder)"),
    "data.sample_rate": (22050, "the release resamples the audio to 22,050 Hz (the paper says 16 kHz)"),
    "data.flow_encoding": ("official", "the release stored the flow as 8-bit JPEG, clipped to [0, 255]"),
    "data.flip_negates_flow": (False, "the release flips the flow image without negating dx"),
    "data.flow_size": (0, "the release computes the flow at the video's own resolution"),
    "data.audio_centre": ("clip-middle", "the release's Flickr test audio is the 3 s around the middle of the whole "
                                         "track, whatever the key frame"),
    "train.shuffle": (False, "the release's training loader never shuffles: sorted ids, the same batches every epoch"),
    "train.best_ties": ("first", "among epochs tied on validation cIoU@0.5 the release keeps the first"),
}


def _preset(description: str, entries: dict[str, tuple[Any, str]]) -> Preset:
    """A Preset from ``{field: (value, why)}``."""
    return Preset(description, {key: value for key, (value, _) in entries.items()},
                  {key: why for key, (_, why) in entries.items()})


def _table4(flow: bool, pretrained: bool, frozen: bool) -> dict[str, tuple[Any, str]]:
    """Table 4's cells: with or without the flow prior, vision pre-trained or not, frozen or not."""
    entries = {}
    if not flow:
        entries["model.prior"] = ("none", "Table 4 without the flow prior (LVS's model)")
    if not pretrained:
        entries["model.vision_pretrained"] = (False, "Table 4 with the vision encoder started random")
    if not frozen:
        entries["model.vision_frozen"] = (False, "Table 4 with the vision encoder trained")
    return entries


_MAXPOOL = {"model.flow_encoder": ("maxpool", "Table 5 a: one adaptive max pool of the flow instead of a ResNet-18")}
_LVS_POOL = {"model.audio_pool": ("max", "LVS's release pools the audio map by max, and the LVS rows were trained so")}

PRESETS: dict[str, Preset] = {
    "htf": Preset("HTF as the paper's text: channel prior (Eq. 7-8), ResNet-18 flow encoder, ImageNet vision "
                  "frozen, 16 kHz, signed flow, average-pooled audio (Eq. 2) (Table 4 f, Table 5 b; Tables 1-3, 6)"),
    "htf-maxpool": _preset("HTF with the max-pool flow encoder (Table 5 a), pooling motion in any direction", _MAXPOOL),
    "htf-released": _preset("HTF as the authors' released code and recipe: spatial prior, random flow conv1, "
                            "22,050 Hz, 8-bit clipped flow at the video's resolution, drifting BatchNorm, max-pooled "
                            "audio, unshuffled training (their checkpoints)", _RELEASED),
    "htf-released-maxpool": _preset("the released code with the max-pool flow encoder (Table 5 a as released)",
                                    {**_RELEASED, **_MAXPOOL}),
    "lvs": _preset("the LVS baseline on HTF's pipeline (7x7 map, 3 s of 16 kHz audio; not LVS's own settings, see "
                   "lvs-original): no flow prior, ImageNet vision trained (Table 4 b; the LVS rows of Tables 1-3)",
                   {**_table4(False, True, False), **_LVS_POOL}),
    "lvs-original": _preset(
        "LVS with the settings of LVS's own released code: 14x14 map (layer4 without stride), 20 s of audio, max-pooled "
        "audio, no flow prior, vision trained (its test crop and bilinear map upsampling remain different)",
        {**_table4(False, True, False), **_LVS_POOL,
         "model.map_stride": (16, "LVS's vision ResNet-18 keeps layer4 at stride 1: a 14 x 14 map"),
         "data.seconds": (20.0, "LVS's release feeds the first 20 s of audio (tiled when shorter)")}),
    "table4-a": _preset("no flow prior, vision random and trained (Table 4 a)", _table4(False, False, False)),
    "table4-c": _preset("no flow prior, ImageNet vision frozen (Table 4 c)", _table4(False, True, True)),
    "table4-d": _preset("flow prior, vision random and trained (Table 4 d)", _table4(True, False, False)),
    "table4-e": _preset("flow prior, ImageNet vision trained (Table 4 e)", _table4(True, True, False)),
    **{name: Preset(*entry) for name, entry in METHOD_PRESETS.items()},
}
