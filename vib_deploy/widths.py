"""Hardware-aware widths (`prune.round_to`): each pruned layer keeps a multiple of N units.

A gate keeps the units whose log α lies below its threshold. Rounding a layer's count k *up* to a
multiple of N (never above the dense width) raises that gate's threshold to just above the log α of
the next-smallest units: the rounded net is the VIB net with a looser per-gate threshold, its added
units carry their gate's mu like every kept unit, and the prune stage checks it exact as before.
The input-pixel gate (one before any Linear/Conv) is never rounded: pixels are not compute channels.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.vib import VIBGate, gates

ROUND_TO = (1, 4, 8, 16)


def input_gates(model: nn.Module) -> set[int]:
    """Ids of gates that act on the raw input (no Linear/Conv before them in a Sequential)."""
    if not isinstance(model, nn.Sequential):
        return set()
    out = set()
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            break
        if isinstance(layer, VIBGate):
            out.add(id(layer))
    return out


def round_up(k: int, multiple: int, units: int) -> int:
    """k rounded up to a multiple of `multiple`, at most `units` (a count of 0 stays 0: the prune stage refuses it)."""
    return min(units, -(-k // multiple) * multiple)


def keep_smallest(gate: VIBGate, count: int) -> None:
    """Set the gate's threshold so that exactly its `count` smallest-log α units are kept."""
    la = torch.sort(gate.log_alpha().detach().double().flatten()).values
    if count >= len(la):
        gate.threshold = float(la[-1]) + 1.0
    elif count > 0:
        gate.threshold = float((la[count - 1] + la[count]) / 2)
    kept = {int(gate.keep_mask().sum()), int(copy.deepcopy(gate).double().keep_mask().sum())}  # prune works in float64
    if kept != {count}:  # two units with the same log α straddle the cut
        raise UserError(f"cannot round a gate of {gate.units} units to {count} kept units: log α ties at the cut (kept {kept})")


def round_widths(model: nn.Module, multiple: int) -> list[dict[str, Any]]:
    """Loosen each gate's threshold so its kept count is rounded up to `multiple`; returns one record per gate."""
    if multiple not in ROUND_TO:
        raise UserError(f"prune.round_to must be one of {', '.join(map(str, ROUND_TO))}, got {multiple!r}")
    fixed = input_gates(model)
    records = []
    for i, gate in enumerate(gates(model)):
        vib = int(gate.keep_mask().sum())
        target = vib if id(gate) in fixed else round_up(vib, multiple, gate.units)
        if target != vib:
            keep_smallest(gate, target)
        records.append({"gate": i + 1, "units": gate.units, "vib": vib, "kept": target, "threshold": float(gate.threshold),
                        "why": "input pixels: not rounded" if id(gate) in fixed else f"multiple of {multiple}"})
    return records
