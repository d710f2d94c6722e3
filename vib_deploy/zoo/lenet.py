"""LeNet-300-100 and Caffe LeNet-5 with VIB gates (Dai et al. 2018, Section 5)."""

from __future__ import annotations

from torch import nn

from vib_deploy.model.vib import VIBGate


def lenet300() -> nn.Sequential:
    """784-300-100-10 MLP; gates on the 784 input pixels, h1 and h2 (kl_mult 1)."""
    return nn.Sequential(
        nn.Flatten(),  # (B, 1, 28, 28) -> (B, 784)
        VIBGate(784, kl_mult=1.0),
        nn.Linear(784, 300),
        nn.ReLU(),
        VIBGate(300, kl_mult=1.0),
        nn.Linear(300, 100),
        nn.ReLU(),
        VIBGate(100, kl_mult=1.0),
        nn.Linear(100, 10),
    )


def lenet5() -> nn.Sequential:
    """Caffe LeNet-5: conv 20 (5x5) - pool - conv 50 (5x5) - pool - fc 500 - fc 10, gates after each ReLU.

    Conv gates use kl_mult = 1/S on an S x S map (KL also scales by map_size = S*S).
    """
    return nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.ReLU(),
        VIBGate(20, kl_mult=1 / 24, map_size=24 * 24),  # (B, 20, 24, 24)
        nn.MaxPool2d(2, 2),  # (B, 20, 12, 12)
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        VIBGate(50, kl_mult=1 / 8, map_size=8 * 8),  # (B, 50, 8, 8)
        nn.MaxPool2d(2, 2),  # (B, 50, 4, 4)
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        VIBGate(500, kl_mult=1.0),
        nn.Linear(500, 10),
    )
