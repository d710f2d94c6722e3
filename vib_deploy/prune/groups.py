"""Exact structural pruning of a `GatedNet` (graph.py): fold each group's z into its gate points, cut the dead channels.

`prune_groups` returns the pruned plain net and a pruning record; `apply_pruning` replays that record on a
fresh net from the factory (how a module model file is rebuilt, modelfile.py). `check_prunable` prunes a
copy with random gates before any training, so a model that cannot be pruned exactly fails early.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast

import torch
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.model.branches import Branch, plan_branches
from vib_deploy.model.gated import GatedNet, point_scale
from vib_deploy.model.graph import BATCHNORMS, WEIGHTED, GateGroup, GroupPlan, is_grouped_conv
from vib_deploy.model.tracing import dependency_graph
from vib_deploy.model.vib import VIBGate
from vib_deploy.prune.branches import interior_dead, remove_branches, replay
from vib_deploy.prune.result import PruneResult


def _scale_outputs(module: nn.Module, z: torch.Tensor) -> None:
    """Fold z into `module`'s output channels: module(x) * z == module'(x)."""
    if isinstance(module, BATCHNORMS):
        if module.weight is None or module.bias is None:
            raise UserError(f"BatchNorm {module} has affine=False: its gate cannot be folded")
        module.weight.data *= z
        module.bias.data *= z
        return
    assert isinstance(module, WEIGHTED)
    module.weight.data *= z.reshape((-1,) + (1,) * (module.weight.dim() - 1))
    if module.bias is not None:
        module.bias.data *= z


def apply_pruning(net: nn.Module, record: Sequence[dict[str, Any]], input_shape: Sequence[int]) -> nn.Module:
    """Remove channels as listed in `record`, in order, with one DependencyGraph, in place.

    Steps: {"root", "dead"} prunes a group through its root's output channels (grouped convs' inputs
    excepted); {"grouped_conv", "dead_inputs"} then cuts such a conv's inputs in one step.
    """
    if not record:
        return net
    graph = dependency_graph(net, input_shape, next(net.parameters()).dtype)
    for step in record:
        if "branch" in step:  # after every channel step (prune_groups records them last)
            replay(net, step)
            continue
        if "grouped_conv" in step:
            _prune_grouped_inputs(net.get_submodule(step["grouped_conv"]), step["dead_inputs"])
            continue
        root = net.get_submodule(step["root"])
        pruner = graph.get_pruner_of_module(root)
        assert pruner is not None, (
            f"{step['root']} has no Torch-Pruning pruner"
        )  # plan_groups only roots prunable types
        group = graph.get_pruning_group(root, pruner.prune_out_channels, idxs=list(step["dead"]))
        # a grouped conv's inputs are cut after all groups (an interim state with unequal conv groups has no
        # valid weight); Torch-Pruning's Group has no public way to drop one dependency. Its in_channels still
        # shrinks now: Torch-Pruning sizes the concats upstream of it from it when it maps the next group.
        items = []
        for item in group._group:
            module = item.dep.target.module
            if is_grouped_conv(module) and not graph.is_out_channel_pruning_fn(item.dep.handler):
                module.in_channels -= len(set(item.idxs))
            else:
                items.append(item)
        group._group = items
        group.prune()
    return net


def _prune_grouped_inputs(conv: nn.Module, dead: Sequence[int]) -> None:
    """Remove input positions `dead` of a grouped conv: the same relative positions in every conv group.

    `dead` are positions of the unpruned input, whose size the weight still holds; `apply_pruning` has already
    lowered in_channels by the count the groups cut, which must come out the same."""
    assert isinstance(conv, (nn.Conv1d, nn.Conv2d))
    per_group = conv.weight.shape[1]  # (out, in / groups, k, k)
    relative = sorted({p % per_group for p in dead})
    if sorted(dead) != sorted(k * per_group + r for k in range(conv.groups) for r in relative):
        raise AssertionError(f"dead inputs of {conv} are not the same in every conv group: {sorted(dead)}")
    keep = [r for r in range(per_group) if r not in set(relative)]
    if conv.in_channels != len(keep) * conv.groups:
        raise AssertionError(
            f"{conv}: the groups cut {per_group * conv.groups - conv.in_channels} inputs, the record {len(dead)}"
        )
    conv.weight = nn.Parameter(conv.weight.data[:, keep].clone())


def prune_groups(gated: GatedNet, input_shape: Sequence[int]) -> tuple[PruneResult, list[dict[str, Any]]]:
    """Fold each group's and branch's inference z into its gate points, remove the dead channels, then the residual
    branches whose gate is off or whose interior died (prune/branches.py), in float64.

    Returns the pruned plain net (float64, eval) with the kept channels per group (none for a removed branch's
    interior groups), and the pruning record that `apply_pruning` replays on a fresh net to rebuild its shapes.
    """
    # long function: fold, choose the kept channels, cut them, then remove branches: one sequence on one copy
    work = copy.deepcopy(gated).cpu().double().eval()
    net = work.net
    unit_masks = [m.clone() for m in work.unit_masks()]
    like = torch.zeros(1, dtype=torch.float64)
    with torch.no_grad():
        for g, z in zip(work.groups, work.channel_scales(like)):
            for point, index in g.points:
                _scale_outputs(net.get_submodule(point), point_scale(z, index)[0])
        for b, z in zip(work.branches, work.branch_scales(like)):
            _scale_outputs(net.get_submodule(b.output), z[0])
    died = [not bool(unit_masks[g.gate][list(g.unit_of_channel)].any()) for g in work.groups]  # whole groups
    for g in (
        work.groups
    ):  # a layer whose channels (of this group) all died keeps one, an exact zero: the net keeps its shape
        for _, index in g.points:
            units = [g.unit_of_channel[i] for i in index if i >= 0]
            if not bool(unit_masks[g.gate][units].any()):
                unit_masks[g.gate][units[0]] = True
    masks = work.keep_masks(unit_masks)
    record: list[dict[str, Any]] = [
        {"root": g.root, "dead": torch.nonzero(~m).flatten().tolist()} for g, m in zip(work.groups, masks)
    ]
    record = [r for r in record if r["dead"]]
    dead_inputs: dict[str, list[int]] = {}
    for g, m in zip(work.groups, masks):
        for conv, positions in g.grouped_inputs:
            dead_inputs.setdefault(conv, []).extend(positions[c] for c in range(g.channels) if not m[c])
    record += [{"grouped_conv": conv, "dead_inputs": sorted(dead)} for conv, dead in dead_inputs.items() if dead]
    apply_pruning(net, record, input_shape)
    # depth gates: every branch is a candidate; without them, the branches found now, candidates where cut inside
    branches = work.branches if work.branches else (plan_branches(net, input_shape) if any(died) else [])
    keep = work.branch_keep() if work.branches else [True] * len(branches)
    candidates = [(b, not k) for b, k in zip(branches, keep) if not k or interior_dead(b, work.groups, died)]
    steps = remove_branches(net, candidates, input_shape)
    record += steps
    gone = {m for step in steps for m in step["modules"]}
    kept = [[] if set(g.members) <= gone else torch.nonzero(m).flatten().tolist() for g, m in zip(work.groups, masks)]
    return PruneResult(net.eval(), None, None, kept, 0), record


SELF_CHECK_TOLERANCE = 1e-9  # float64, relative to the logit scale: pruning is algebra, not approximation


def _random_gates(gated: GatedNet, generator: torch.Generator) -> None:
    """Gate values of both signs, about half the units of every gate off (at least one kept)."""
    with torch.no_grad():
        for gate in (cast(VIBGate, g) for g in gated.gates):
            gate.mu.copy_(torch.rand(gate.units, generator=generator) * 3 - 1.5)
            off = torch.rand(gate.units, generator=generator) < 0.5
            off[int(torch.randint(gate.units, (1,), generator=generator))] = False
            gate.logD.copy_(torch.where(off, 20.0, -20.0))
        for gate in (cast(VIBGate, g) for g in gated.branch_gates):  # about half the branches off
            gate.mu.copy_(torch.rand(1, generator=generator) + 0.5)
            gate.logD.copy_(torch.where(torch.rand(1, generator=generator) < 0.5, 20.0, -20.0))


def check_prunable(
    net: nn.Module, plan: GroupPlan, input_shape: Sequence[int], seed: int = 0, branches: Sequence[Branch] = ()
) -> float:
    """Prune a copy of `net` with random gates (half the channels of every group off) and compare in float64.

    Returns max |Δ| / scale. Raises UserError naming the first group that cannot be removed exactly (an op
    between its layers that maps 0 to non-zero, such as a sigmoid, or a structure Torch-Pruning mis-prunes),
    so such a model fails before any training.
    """
    with torch.random.fork_rng():  # the gates' own init must not shift the caller's random stream
        return _check_prunable(net, plan, input_shape, seed, branches)


def _check_prunable(
    net: nn.Module, plan: GroupPlan, input_shape: Sequence[int], seed: int, branches: Sequence[Branch]
) -> float:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((8,) + tuple(input_shape), generator=generator, dtype=torch.float64)

    def error_of(groups: Sequence[GateGroup], branches: Sequence[Branch] = ()) -> float:
        gated = GatedNet(copy.deepcopy(net), groups, branches=branches).double().eval()
        _random_gates(gated, generator)
        try:
            result, _ = prune_groups(gated, input_shape)
            with torch.no_grad():
                reference = gated(x)
                return float((result.model(x) - reference).abs().max() / max(1.0, float(reference.abs().max())))
        except UserError:
            raise
        except Exception:  # a group Torch-Pruning cannot cut consistently
            return math.inf

    worst = error_of(plan.gated, branches)
    if worst <= SELF_CHECK_TOLERANCE:
        return worst
    for branch in branches:
        if not error_of([], [branch]) <= SELF_CHECK_TOLERANCE:
            raise UserError(
                f"the residual branch ending in {branch.output} ({', '.join(branch.modules[:6])}) cannot be removed "
                "exactly; set model.depth_gates: false, or list one of its layers under model.ignore"
            )
    for group in plan.gated:  # name the culprit (with the groups that share its gate)
        tied = [replace(g, gate=0) for g in plan.gated if g.gate == group.gate]
        if not error_of(tied) <= SELF_CHECK_TOLERANCE:
            raise UserError(
                f"the channel group of {group.root} ({', '.join(group.members[:6])}) cannot be pruned exactly: "
                "removing its channels changes the output (an operation between these layers maps 0 to "
                f"non-zero, e.g. a sigmoid); list {group.root} under model.ignore to leave it unpruned"
            )
    raise UserError(
        f"pruning the model's groups together changes its output (max |Δ| {worst:.3g} x scale) though each "
        "group alone is exact; this is a bug, please report it with your model"
    )
