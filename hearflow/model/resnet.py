"""A ResNet-18 trunk whose state_dict keys are torchvision's ``resnet18`` keys minus ``fc``.

Keeping torchvision's names (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer2.0.downsample.0``) is what lets torchvision's ImageNet weights and the
released HTF checkpoints load into it unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

# Stride of each of the four stages for a given total stride of the output map.
# Dropping the stride of the last stage(s) keeps every parameter and its name.
STAGE_STRIDES = {32: (1, 2, 2, 2), 16: (1, 2, 2, 1), 8: (1, 2, 1, 1)}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34 block)."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += shortcut
        return self.relu(out)


class ResNetTrunk(nn.Module):
    """ResNet-18 without average pooling and classifier: image -> feature map.

    Input ``B x in_channels x H x W``; output ``B x 8*width x H/map_stride x W/map_stride``
    (for H, W multiples of map_stride). ``width=64`` is ResNet-18; stages have
    ``width, 2*width, 4*width, 8*width`` channels. Initialised as torchvision does:
    Kaiming normal (fan_out) convolutions, BatchNorm weight 1 and bias 0.
    """

    def __init__(self, in_channels: int = 3, width: int = 64, map_stride: int = 32) -> None:
        super().__init__()
        if map_stride not in STAGE_STRIDES:
            raise ValueError(f"map_stride must be one of {sorted(STAGE_STRIDES)}, got {map_stride}")
        self.out_channels = 8 * width
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = width
        for index, stride in enumerate(STAGE_STRIDES[map_stride], start=1):
            out = width * 2 ** (index - 1)
            stage = nn.Sequential(BasicBlock(channels, out, stride), BasicBlock(out, out, 1))
            self.add_module(f"layer{index}", stage)
            channels = out
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
