"""A small MobileNet-v1-style net (Howard et al. 2017, "MobileNets") for 32x32 inputs.

Stem conv3x3 (16 channels) + BN + ReLU, then five depthwise-separable blocks (depthwise 3x3 conv with
groups = channels + BN + ReLU, pointwise 1x1 conv + BN + ReLU) of widths 32, 64 (stride 2), 64,
128 (stride 2), 128, global average pooling and a Linear head.

Input: (in_channels, 32, 32), single-channel by default (28x28 works too).
Plain nn.Modules without gates; Torch-Pruning's DependencyGraph traces them.
"""

from __future__ import annotations

import torch
from torch import nn

from vib_deploy.zoo.init import kaiming_init

# (output channels, stride of the depthwise conv)
_CFG = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1))


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv (groups = channels) + BN + ReLU, pointwise 1x1 conv + BN + ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.dw = nn.Conv2d(in_planes, in_planes, 3, stride=stride, padding=1, groups=in_planes, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.pw = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.dw(x)))
        return self.relu2(self.bn2(self.pw(x)))


class MobileNetSmall(nn.Module):
    """Stem conv3x3 (16) + five depthwise-separable blocks (32, 64/2, 64, 128/2, 128) + pool + Linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks = []
        in_planes = 16
        for planes, stride in _CFG:
            blocks.append(DepthwiseSeparable(in_planes, planes, stride))
            in_planes = planes
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.stem(x))
        return self.fc(self.flatten(self.pool(x)))


def mobilenet_small(num_classes: int = 10, in_channels: int = 1) -> MobileNetSmall:
    """A small MobileNet-v1-style net (Howard et al. 2017); input (in_channels, 32, 32)."""
    return MobileNetSmall(num_classes=num_classes, in_channels=in_channels)
