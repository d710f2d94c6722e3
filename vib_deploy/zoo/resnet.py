"""CIFAR-style ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition", Section 4.2).

Depth 6n+2: a 3x3 conv stem (16 channels) + BN + ReLU, three stages of n BasicBlocks with 16/32/64
channels (the first block of stages 2 and 3 has stride 2), global average pooling and a Linear head.
BasicBlock = conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU. Where the shape changes the shortcut is a
1x1 conv with stride 2 + BN ("option B"): option A's zero-padded identity cannot be pruned structurally.

Input: (in_channels, 32, 32) (28x28 works too: the global pool absorbs the spatial size).
Plain nn.Modules without gates; Torch-Pruning's DependencyGraph traces them.
"""

from __future__ import annotations

import torch
from torch import nn

from vib_deploy.zoo.init import kaiming_init


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, + shortcut (identity, or 1x1 conv + BN when the shape changes), ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        else:
            self.shortcut = nn.Sequential()  # identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR-sized inputs (He et al. 2016, Section 4.2), option-B shortcuts."""

    def __init__(self, n: int, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        layers = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def resnet20(num_classes: int = 10, in_channels: int = 1) -> CifarResNet:
    """ResNet-20 (n=3) of He et al. 2016, Section 4.2, option-B shortcuts; input (in_channels, 32, 32)."""
    return CifarResNet(3, num_classes=num_classes, in_channels=in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 1) -> CifarResNet:
    """ResNet-56 (n=9) of He et al. 2016, Section 4.2, option-B shortcuts; input (in_channels, 32, 32)."""
    return CifarResNet(9, num_classes=num_classes, in_channels=in_channels)
