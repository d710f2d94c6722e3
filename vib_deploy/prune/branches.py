"""Removing residual branches in the prune stage (model/branches.py finds them): a branch goes when its depth gate
is off, or when a channel group inside it died whole (its output is then a constant: BN's shift, or zero).

Runs after the channel groups are cut (prune/groups.py), on the float64 net with every gate already folded in, so
the branch's output is measured as the pruned net computes it; `BranchConstant` then adds exactly that."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from vib_deploy.model.branches import Branch, constant_value, remove_branch
from vib_deploy.model.graph import GateGroup


def interior_dead(branch: Branch, groups: Sequence[GateGroup], dead: Sequence[bool]) -> bool:
    """Some channel group whose layers all lie inside `branch` lost every channel."""
    inside = set(branch.modules)
    return any(d and set(g.members) <= inside for g, d in zip(groups, dead))


def _record(module: nn.Module, inputs: Any, output: torch.Tensor, outs: dict[str, torch.Tensor], name: str) -> None:
    outs[name] = output.detach().clone()


def remove_branches(
    net: nn.Module, candidates: Sequence[tuple[Branch, bool]], input_shape: Sequence[int]
) -> list[dict[str, Any]]:
    """Remove each candidate (branch, gate off) whose output no longer depends on the input, in place; the record's
    steps. A gate that is off has scaled the branch's last module by 0; a cut interior leaves a constant."""
    if not candidates:
        return []
    dtype = next(net.parameters()).dtype
    x = torch.randn((2,) + tuple(input_shape), generator=torch.Generator().manual_seed(0), dtype=dtype)
    outs: dict[str, torch.Tensor] = {}
    handles = [
        net.get_submodule(b.output).register_forward_hook(partial(_record, outs=outs, name=b.output))
        for b, _ in candidates
    ]
    try:
        with torch.no_grad():
            net.eval()(x)
    finally:
        for h in handles:
            h.remove()
    steps = []
    for b, off in candidates:
        out = outs[b.output]  # (2, C, ...)
        if not off and not bool((out[0] == out[1]).all()):
            continue  # another path through the branch still carries the input
        value = torch.zeros_like(constant_value(out)) if off else constant_value(out)
        step = {"branch": b.output, "modules": list(b.modules), "shape": list(out.shape[1:])}
        step["value_shape"] = list(value.shape)
        remove_branch(net, step, value, step["shape"])
        steps.append(step)
    return steps


def replay(net: nn.Module, step: dict[str, Any]) -> None:
    """A branch step of a pruning record on a fresh net (its constant comes with the weights)."""
    dtype = next(net.parameters()).dtype
    remove_branch(net, step, torch.zeros(step["value_shape"], dtype=dtype), step["shape"])
