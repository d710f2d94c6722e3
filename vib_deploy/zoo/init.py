"""Weight initialisation shared by the zoo's plain nets."""

from __future__ import annotations

from torch import nn


def kaiming_init(model: nn.Module) -> None:
    """He-normal convs (fan_out, ReLU) with zero bias; BN weight 1, bias 0 (torchvision's ResNet/VGG init)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
