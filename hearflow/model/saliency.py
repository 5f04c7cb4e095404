"""Object-guided localization (OGL): an object-saliency map from a pre-trained image trunk.

EZ-VSL, SLAVC and FNAC evaluate with it: a ResNet-18 pre-trained on ImageNet, its last
stage's activations averaged in absolute value over channels (``B x h x w``), is
blended with the audio-visual map after both are min-max normalised. hearflow applies
it to any model as an inference option (`hearflow.inference.InferenceOptions.object_fusion`),
outside the model (so also around the ONNX Runtime backend).

The trunk's weights never download here: ``imagenet`` reads torchvision's cached file
(where ``hearflow train`` with pre-trained weights left it), else a file of
`hearflow.synthetic.pretrain.save_encoder_weights` (the synthetic study's analog).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from hearflow.errors import HearflowError, option
from hearflow.metrics import normalise_maps
from hearflow.model.encoders import IMAGENET_WIDTH, encoder_weights_state_dict, imagenet_state_dict, \
    imagenet_weights_file, load_trunk_weights
from hearflow.model.resnet import ResNetTrunk


class ObjectSaliency(nn.Module):
    """``image B x 3 x S x S -> B x S/stride x S/stride``: mean absolute trunk activation over channels."""

    def __init__(self, width: int = IMAGENET_WIDTH, map_stride: int = 32) -> None:
        super().__init__()
        self.trunk = ResNetTrunk(3, width, map_stride)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.trunk(image).abs().mean(dim=1)


def object_saliency(weights: str, width: int, map_stride: int) -> ObjectSaliency:
    """The saliency trunk (eval mode, no gradients) with ``weights``: ``"imagenet"`` (torchvision's
    cached file; never downloaded) or a file of encoder weights of ``width``."""
    if weights == "imagenet":
        if width != IMAGENET_WIDTH:
            raise HearflowError(f"ImageNet weights exist for width {IMAGENET_WIDTH} only, the model has model.width "
                                f"{width}: pass {option('--object-weights FILE', 'object_weights')} of that width")
        if not os.path.isfile(imagenet_weights_file()):
            raise HearflowError(f"object fusion needs the ImageNet ResNet-18 weights at {imagenet_weights_file()} "
                                f"(torchvision's cache; training with pre-trained weights puts them there), or "
                                f"{option('--object-weights FILE', 'object_weights')}")
        state = imagenet_state_dict()
    else:
        state = encoder_weights_state_dict(weights, width)
    saliency = ObjectSaliency(width, map_stride)
    load_trunk_weights(saliency.trunk, state)
    return saliency.eval().requires_grad_(False)


def fuse_object_saliency(maps: np.ndarray, saliency: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * norm(maps) + weight * norm(saliency)``: float32 ``N x h x w``, values in [0, 1].

    Both are ``N x h x w``; ``norm`` is the per-sample min-max normalisation of scoring
    (`hearflow.metrics.normalise_maps`). The methods' alpha (the audio-visual map's
    weight: EZ-VSL and FNAC 0.4, SLAVC 0.9) is ``1 - weight``.
    """
    if maps.shape != saliency.shape:
        raise HearflowError(f"object saliency maps {saliency.shape} do not match the model's maps {maps.shape}")
    count = len(maps)
    audio_visual = normalise_maps(np.array(maps, np.float32).reshape(count, -1))
    objects = normalise_maps(np.array(saliency, np.float32).reshape(count, -1))
    return ((1 - weight) * audio_visual + weight * objects).reshape(maps.shape).astype(np.float32)
