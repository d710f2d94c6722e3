"""VGG-16 with BatchNorm for 32x32 inputs (Simonyan & Zisserman 2015), as the CIFAR VGG-16 of the
VIBNet paper (Dai et al. 2018, Section 5).

13 conv3x3 layers, cfg [64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M],
each conv-BN-ReLU (M = 2x2 max pool), then Flatten, Linear(512, 512), ReLU, Linear(512, num_classes).
`width` scales every channel count (e.g. width=0.125 for small CPU tests).

Input: (in_channels, 32, 32): five 2x2 pools leave a 1x1 map, so the flattened size is the last width.
Plain nn.Modules without gates; Torch-Pruning's DependencyGraph traces them.
"""

from __future__ import annotations

import torch
from torch import nn

from vib_deploy.zoo.init import kaiming_init

CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """VGG-16-BN for 32x32 inputs: features (13 conv-BN-ReLU, 5 max pools), classifier (2 Linear)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        layers: list[nn.Module] = []
        c = in_channels
        for v in CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(v, int)
                out = max(1, int(round(v * width)))
                layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
                c = out
        self.features = nn.Sequential(*layers)
        hidden = max(1, int(round(512 * width)))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def vgg16(num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> VGG16:
    """VGG-16-BN for 32x32 inputs (the VIBNet paper's CIFAR VGG-16); `width` scales the channels."""
    return VGG16(num_classes=num_classes, in_channels=in_channels, width=width)
