"""The field's methods as presets on HTF's pipeline: EZ-VSL, FNAC and SLAVC.

Each entry is ``(description, fields, why)``: the config fields that differ from the
``htf`` preset (`hearflow.config.PRESETS` builds a `Preset` of each) and, for every
one of them, a line saying why (the method's paper or released code). Plain data,
no imports: `hearflow.presets` reads it.

What the presets keep from HTF: the data pipeline (16 kHz, HTF's spectrogram, 224 px
frames, signed flow), the ResNet-18 encoders and the evaluation protocol. The methods'
own audio preprocessing is not restated. Each trains without the flow prior (as
published); ``--set model.prior=channel`` (or ``spatial``) adds it to any of them.
"""

from __future__ import annotations

from typing import Any

_EZVSL_FIELDS: dict[str, Any] = {
    "model.prior": "none",
    "model.vision_frozen": False,
    "model.projection": 512,
    "model.audio_pool": "max",
    "objective.loss": "ezvsl",
    "objective.temperature": 0.03,
    "train.epochs": 20,
    "train.lr": 1e-4,
}
_EZVSL_WHY = {
    "model.prior": "EZ-VSL has no flow prior (add one with --set model.prior=channel)",
    "model.vision_frozen": "EZ-VSL fine-tunes its ImageNet image encoder",
    "model.projection": "EZ-VSL's 1x1-conv image and linear audio projections to out_dim 512",
    "model.audio_pool": "EZ-VSL's audio ResNet-18 pools its map by max (AdaptiveMaxPool2d), not Eq. 2's average",
    "objective.loss": "EZ-VSL's max-over-positions multiple-instance InfoNCE, both directions",
    "objective.temperature": "EZ-VSL's tau 0.03 divides the cosines into logits",
    "train.epochs": "EZ-VSL's train.py: --epochs 20",
    "train.lr": "EZ-VSL's train.py: Adam, --init_lr 1e-4, no weight decay, batch 128",
}

METHOD_PRESETS: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    "ezvsl": (
        "EZ-VSL (Mo & Morgado, ECCV 2022) on HTF's pipeline: projections, max-over-positions MIL InfoNCE "
        "both ways, tau 0.03, Adam 1e-4, 20 epochs; no flow prior",
        dict(_EZVSL_FIELDS), dict(_EZVSL_WHY),
    ),
    "fnac": (
        "FNAC (Sun et al., CVPR 2023): EZ-VSL plus false-negative-aware audio-audio, image-image and "
        "foreground regularisers (weights 100, threshold 0.6, 3 warm-up epochs), image dropout 0.9",
        {**_EZVSL_FIELDS, "objective.loss": "fnac", "model.dropout_image": 0.9, "train.weight_decay": 1e-4},
        {**_EZVSL_WHY, "objective.loss": "FNAC's loss: EZ-VSL's plus its three L1 regularisers after warm-up",
         "model.dropout_image": "FNAC's train.py: --dropout_img 0.9 on the visual map",
         "train.weight_decay": "FNAC's train.py: --weight_decay 1e-4"},
    ),
    "slavc": (
        "SLAVC (Mo & Morgado, NeurIPS 2022): two projection heads, momentum encoders (0.999, maps from "
        "them at test), image dropout 0.9, its two-head momentum-target MIL loss",
        {**_EZVSL_FIELDS, "objective.loss": "slavc", "model.heads": 2, "model.momentum": 0.999,
         "model.momentum_eval": True, "model.dropout_image": 0.9},
        {**_EZVSL_WHY, "objective.loss": "SLAVC's loss: head-1 softmax over audio times head-2 softmax over "
                                         "positions, against momentum targets, both ways",
         "model.heads": "SLAVC's img_proj1/2 and aud_proj1/2",
         "model.momentum": "SLAVC's train script: --m_img 0.999 --m_aud 0.999",
         "model.momentum_eval": "SLAVC's train script: --use_mom_eval",
         "model.dropout_image": "SLAVC's train script: --dropout_img 0.9 --dropout_aud 0"},
    ),
}
