"""What a net predicts and how its gates stand: logits, accuracy (sharded over torchrun ranks), kept units."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn

from vib_deploy.model.vib import VIBGate, gates
from vib_deploy.training import distributed


@torch.no_grad()
def logits(
    model: nn.Module, x: np.ndarray | torch.Tensor, device: torch.device | None = None, batch: int = 250
) -> torch.Tensor:
    """Logits of `model` in eval mode for all of `x`, on CPU in the model's dtype; in batches (a 2000-image batch
    of a 32x32 ResNet ran 2.5x slower than a 250-image one on 2 CPU cores: its activations churn through pages)."""
    model.eval()
    device = device or next(model.parameters()).device
    x = torch.as_tensor(x)
    return torch.cat([model(x[i : i + batch].to(device)).cpu() for i in range(0, len(x), batch)])


def predict(model: nn.Module, x: np.ndarray | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """`logits` in fp32 (what accuracy and the studies compare)."""
    return logits(model, x, device).float()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device | None = None) -> float:
    """Fraction of correct argmax predictions."""
    return float((predict(model, x, device).argmax(1).numpy() == y).mean())


def units_alive(model: nn.Module) -> list[int]:
    """Units kept per gate layer at inference."""
    return [int(g.keep_mask().sum()) for g in gates(model)]


def _sharded_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device) -> float:
    """`accuracy` with the images split over the ranks and the correct counts summed: the same on every rank."""
    rank, world = distributed.rank(), distributed.world_size()
    lo, hi = len(y) * rank // world, len(y) * (rank + 1) // world
    correct = int((predict(model, x[lo:hi], device).argmax(1).numpy() == y[lo:hi]).sum()) if hi > lo else 0
    return int(distributed.all_reduce_sum(torch.tensor(correct))) / len(y)


def mask_digest(model: nn.Module) -> str:
    """A short hash of every gate's keep mask: equal on all ranks unless the replicas diverged."""
    masks = [g.keep_mask().cpu().numpy().tobytes() for g in gates(model)]
    return hashlib.sha256(b"".join(masks)).hexdigest()[:16]


def gate_summary(model: nn.Module) -> list[dict[str, Any]]:
    """Per gate layer: units, kept, and the sign of kept mu (what pruning must handle)."""
    out = []
    for g in gates(model):
        assert isinstance(g, VIBGate)
        mask = g.keep_mask()
        out.append({"units": g.units, "kept": int(mask.sum()), "negative_mu_kept": int((g.mu[mask] < 0).sum())})
    return out
