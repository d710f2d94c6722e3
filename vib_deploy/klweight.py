"""Cost-aware KL (`train.vib.kl_weighting: flops`): each gate layer's KL per unit weighted by what one unit costs.

MorphNet (Gordon et al., CVPR 2018) weights its sparsity regulariser by FLOPs; here the VIB KL is. The
FLOPs of a Sequential are bilinear in the widths of its gate layers:

    MACs(n) = sum over weighted layers L of  a_L * n_in(L) * n_out(L)

where n_in(L) / n_out(L) is the number of alive units of the gate feeding L / gating L's output (a
constant width where there is no gate), and a_L the MACs per (input unit, output unit) pair: H_out * W_out *
kh * kw for a Conv2d, in_features / n_in for a Linear (a flattened C x H x W map counts H * W per channel).
One unit of gate l costs c_l = 2 * dMACs/dn_l: its output row in the layer that makes it and its input
column in the layer that takes it, at the CURRENT widths (units alive now: they change as units die).

The paper's per-unit weight of gate l is w_l = 0.5 * kl_mult * map_size. With `flops` it is lambda * c_l,
lambda fixed once on the dense net so that sum_l N_l * lambda * c_l(dense) = sum_l N_l * w_l (N_l: all
units), i.e. the total weight is the paper's on the dense net and only its distribution over layers moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.vib import VIBGate


@dataclass(frozen=True)
class _Term:
    a: float  # MACs per (input unit, output unit) pair
    gate_in: int | None  # index of the gate feeding the layer, None: a constant width
    width_in: int
    gate_out: int | None  # index of the gate on the layer's output, None: a constant width
    width_out: int


class FlopsWeighting:
    """Per-unit KL weights proportional to each gate layer's FLOPs per unit at the current widths."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]):
        if not isinstance(model, nn.Sequential):
            raise UserError("train.vib.kl_weighting: flops supports the zoo's Sequential nets (lenet300, lenet5) only")
        self.gates = [m for m in model if isinstance(m, VIBGate)]
        self.terms = _terms(model, input_shape)
        dense = [g.units for g in self.gates]
        paper = sum(n * 0.5 * g.kl_mult * g.map_size for n, g in zip(dense, self.gates))
        cost = sum(n * c for n, c in zip(dense, self.unit_flops(dense)))
        self.scale = paper / cost

    def unit_flops(self, widths: list[int]) -> list[float]:
        """FLOPs one unit of each gate layer costs when the gate layers have `widths` units."""
        out = [0.0] * len(self.gates)
        for t in self.terms:
            n_in = widths[t.gate_in] if t.gate_in is not None else t.width_in
            n_out = widths[t.gate_out] if t.gate_out is not None else t.width_out
            if t.gate_in is not None:
                out[t.gate_in] += 2 * t.a * n_out
            if t.gate_out is not None:
                out[t.gate_out] += 2 * t.a * n_in
        return out

    def alive(self) -> list[int]:
        return [int(g.keep_mask().sum()) for g in self.gates]

    def weights(self) -> list[float]:
        """Per-unit KL weight of each gate layer now (the paper's is 0.5 * kl_mult * map_size)."""
        return [self.scale * c for c in self.unit_flops(self.alive())]

    def total_kl(self) -> torch.Tensor:
        """sum_l weight_l * sum_i log(1 + mu_i^2 / (exp(logD_i) + 1e-8)), per sample."""
        return torch.stack([w * g.unit_kl() for w, g in zip(self.weights(), self.gates)]).sum()


def _terms(model: nn.Sequential, input_shape: tuple[int, ...]) -> list[_Term]:
    """One bilinear term per Conv2d/Linear, with the gate (or constant width) on each side."""
    shapes: dict[int, torch.Size] = {}

    def record(k: int) -> Any:
        def hook(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
            shapes[k] = out.shape

        return hook

    handles = [m.register_forward_hook(record(k)) for k, m in enumerate(model) if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()(torch.zeros((1,) + tuple(input_shape)))
            model.train(was)
    finally:
        for h in handles:
            h.remove()
    gate_ids = {id(g): j for j, g in enumerate(m for m in model if isinstance(m, VIBGate))}
    src: int | None = None  # the gate whose units flow now (None: no gate since the last weighted layer)
    width = int(input_shape[0])  # channels (or features after a Flatten, set below) when no gate
    pending: list[tuple[float, int | None, int, int]] = []  # a weighted layer whose output gate is not known yet
    terms: list[_Term] = []

    def close(gate: int | None) -> None:
        for a, g_in, w_in, w_out in pending:
            terms.append(_Term(a, g_in, w_in, gate, w_out))
        pending.clear()

    for k, layer in enumerate(model):
        if isinstance(layer, VIBGate):
            j = gate_ids[id(layer)]
            close(j)
            src, width = j, layer.units
        elif isinstance(layer, nn.Flatten) and src is None and not terms and not pending:
            width = int(torch.Size(input_shape).numel())  # an MLP on raw pixels: its features are the units
        elif isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                raise UserError("train.vib.kl_weighting: flops: grouped convolutions are not supported")
            close(None)
            spatial = shapes[k][2] * shapes[k][3]
            pending.append(
                (float(spatial * layer.kernel_size[0] * layer.kernel_size[1]), src, width, layer.out_channels)
            )
            src, width = None, layer.out_channels
        elif isinstance(layer, nn.Linear):
            close(None)
            pending.append((layer.in_features / width, src, width, layer.out_features))
            src, width = None, layer.out_features
    close(None)
    return terms
