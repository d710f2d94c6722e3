"""The VIB gate of Dai et al. (ICML 2018), as in the official code (zhuchen03/VIBNet, ib_layers.py).

Each prunable unit i has a multiplicative Gaussian gate z_i ~ N(mu_i, sigma_i^2), with
parameters mu (init N(1, 0.01)) and logD = log sigma^2 (init N(-9, 0.01)).

    training:   z = mu + eps * exp(logD / 2),  eps ~ N(0, 1) per (sample, unit), shared over H x W
    inference:  z = mu * 1[log_alpha < threshold],  log_alpha = logD - log(mu^2 + 1e-8)
    KL:         0.5 * kl_mult * map_size * sum_i log(1 + mu_i^2 / (exp(logD_i) + 1e-8))   (per sample)

`map_size` is H*W for a gate on an H x W feature map and 1 for a linear gate; `kl_mult` is 1/S for
a conv gate on an S x S map (the official VGG configs) and 1 for a linear gate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

EPS = 1e-8


class VIBGate(nn.Module):
    """Multiplicative Gaussian gate over dim 1 of its input, (B, C) or (B, C, H, W)."""

    def __init__(self, units: int, kl_mult: float = 1.0, map_size: int = 1, threshold: float = 0.0):
        super().__init__()
        self.units = units
        self.kl_mult = kl_mult
        self.map_size = map_size
        self.threshold = threshold
        self.mu = nn.Parameter(torch.randn(units) * 0.01 + 1.0)
        self.logD = nn.Parameter(torch.randn(units) * 0.01 - 9.0)

    def extra_repr(self) -> str:
        return f"units={self.units}, kl_mult={self.kl_mult:g}, map_size={self.map_size}"

    def log_alpha(self) -> torch.Tensor:
        """log alpha = logD - log(mu^2 + 1e-8), per unit."""
        return self.logD - torch.log(self.mu.pow(2) + EPS)

    def keep_mask(self, threshold: float | None = None) -> torch.Tensor:
        """Boolean mask of units kept at inference: log alpha < threshold."""
        return self.log_alpha() < (self.threshold if threshold is None else threshold)

    def inference_scale(self) -> torch.Tensor:
        """The deterministic gate: mu where kept, 0 where pruned."""
        return self.mu * self.keep_mask().to(self.mu.dtype)

    def unit_kl(self) -> torch.Tensor:
        """sum over units of log(1 + mu^2 / (exp(logD) + 1e-8)): the KL before its per-unit weight."""
        return torch.log1p(self.mu.pow(2) / (self.logD.exp() + EPS)).sum()

    def kl(self) -> torch.Tensor:
        """KL term of this gate layer per sample: 0.5 * kl_mult * map_size * sum log(1 + mu^2 / (exp(logD) + 1e-8))."""
        return 0.5 * self.kl_mult * self.map_size * self.unit_kl()

    def _shape(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # (B, C) -> (B, C, 1, 1) for a (B, C, H, W) input: one draw per channel, shared over H x W
        return z.reshape(z.shape + (1,) * (x.dim() - z.dim()))

    def sample(self, like: torch.Tensor) -> torch.Tensor:
        """z for a batch shaped like `like`: (B, C) noisy draws in training, (1, C) inference values in eval."""
        if self.training:
            eps = torch.randn(like.shape[0], self.units, device=like.device, dtype=like.dtype)
            return self.mu + eps * torch.exp(0.5 * self.logD)  # (B, C)
        return self.inference_scale().unsqueeze(0)  # (1, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._shape(x, self.sample(x))


def gates(model: nn.Module) -> list[VIBGate]:
    """The model's VIB gates in forward order."""
    return [m for m in model.modules() if isinstance(m, VIBGate)]


def total_kl(model: nn.Module, weighting: Any = None) -> torch.Tensor:
    """Sum of the KL terms of all gates (per sample, independent of batch size); `weighting` (a
    `klweight.CostWeighting` of this model: FLOPs or latency) replaces the paper's per-unit weights with its own."""
    if weighting is not None:
        return weighting.total_kl()
    return torch.stack([g.kl() for g in gates(model)]).sum()


def vib_loss(
    logits: torch.Tensor, targets: torch.Tensor, model: nn.Module, kl_factor: float, weighting: Any = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss = mean cross-entropy + kl_factor * sum of KL. Returns (loss, ce, kl)."""
    ce = nn.functional.cross_entropy(logits, targets)
    kl = total_kl(model, weighting)
    return ce + kl_factor * kl, ce, kl
