"""VIB gates for any nn.Module, placed on Torch-Pruning's dependency groups (`plan_groups`, `GatedNet`).

A *group* is every coupled set of channels that must be removed together, as Torch-Pruning's DependencyGraph
finds them: a residual add couples the channels of every branch into the add and of the stream after it; a
depthwise conv follows its input channels; a concat gives each branch its own group (mapped to its slice of the
consumer's inputs; a layer read by several concats, as in a DenseNet, has one group over all its slices); BN
follows its conv. Each group gets one VIBGate.

Where the gate multiplies: at every *gate point* of its group, i.e. every Conv/Linear/BN whose output channels
are in the group, on that module's output (a conv feeding straight into its BN is gated at the BN, since BN
would undo a gate before it; a BN after a concat is gated on each group's slice), one draw of z per sample.
Gating a layer's own output makes folding exact whatever the sign of z: z scales the layer's weights and bias
(or BN's affine), so the gated model in eval mode is a plain net whose dead channels are exactly zero;
pruning (prune/groups.py) then removes them with the same DependencyGraph.

A grouped conv (1 < groups < channels) must lose the same positions in each of its conv groups, so the channels
at input (or output) positions p and p' with p = p' mod (channels / groups) share one gate unit, even across
groups (two concat branches feeding a grouped conv share one gate). Torch-Pruning prunes one group at a time,
which would leave such a conv's groups unequal in between; its inputs are therefore cut in one step after the
groups (`prune.groups._prune_grouped_inputs`). A group is left fixed (no gate, never pruned) when it holds the
output layer, reaches the model's output through any layer (a fully convolutional head), holds a layer listed
in `ignore` or passes through an ignored channel shuffle (tracing.py), or is tied to such a group."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from vib_deploy.errors import UserError, first_line
from vib_deploy.model.layers import count_flops, flops_per_channel
from vib_deploy.model.tracing import channel_moves, trace

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class GateGroup:
    """One gated group: `channels` coupled channels, pruned through `root`'s output channels."""

    root: str  # module whose prune_out_channels triggers the whole group
    channels: int
    gate: int  # index of its VIBGate (groups tied through a grouped conv share one)
    unit_of_channel: tuple[int, ...]  # the gate unit of each channel
    # (module, group channel of each of its outputs, -1 for outputs of other groups): the outputs it gates
    points: tuple[tuple[str, tuple[int, ...]], ...]
    members: tuple[str, ...]  # every module the group touches (for `inspect`)
    map_size: int  # H*W of the root's output (1 for a Linear)
    flops_per_channel: int  # FLOPs (2 x MACs) that removing one channel of this group saves
    grouped_inputs: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (grouped conv, its input position of each channel)
    # (Conv/Linear, True: its outputs | False: its inputs, its features per group channel): every weighted side the
    # group's channels are (klweight.py costs a unit from these; () in files saved before it was recorded)
    sides: tuple[tuple[str, bool, int], ...] = ()

    @property
    def units(self) -> int:
        return len(set(self.unit_of_channel))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> GateGroup:
        pairs = lambda key: tuple((name, tuple(index)) for name, index in d[key])  # noqa: E731
        return GateGroup(
            d["root"],
            d["channels"],
            d["gate"],
            tuple(d["unit_of_channel"]),
            pairs("points"),
            tuple(d["members"]),
            d["map_size"],
            d["flops_per_channel"],
            pairs("grouped_inputs"),
            tuple((name, bool(is_out), int(f)) for name, is_out, f in d.get("sides", ())),
        )


@dataclass(frozen=True)
class FixedGroup:
    """A group left unpruned, and why."""

    root: str
    channels: int
    reason: str


@dataclass(frozen=True)
class GroupPlan:
    gated: list[GateGroup]
    fixed: list[FixedGroup]
    flops: int  # of the dense net, per sample
    classes: int  # logits per sample


def _names(net: nn.Module) -> dict[int, str]:
    names = {id(m): n for n, m in net.named_modules()}
    names.update({id(p): n for n, p in net.named_parameters()})
    return names


def _unsupported_layers(net: nn.Module, ignore: set[str]) -> list[str]:
    """Leaf modules holding parameters whose channel layout Torch-Pruning's registry does not know."""
    bad = []
    for name, m in net.named_modules():
        if isinstance(m, PRUNABLE_TYPES) or not list(m.parameters(recurse=False)):
            continue
        if not any(name == i or name.startswith(i + ".") for i in ignore):
            norm = isinstance(m, (nn.LayerNorm, nn.GroupNorm))
            bad.append(
                f"{name} ({type(m).__name__}{', a norm over channels: a removed channel would still move its statistics' if norm else ''})"
            )
    return bad


def _output_sizes(
    net: nn.Module, input_shape: Sequence[int]
) -> tuple[dict[str, tuple[int, ...]], torch.Tensor, dict[str, str]]:
    """Per-sample output shape of every leaf module, the model's output and its channel moves (tracing.py), from one forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        m.register_forward_hook(partial(_record_shape, shapes=shapes, name=n))
        for n, m in net.named_modules()
        if not list(m.children())
    ]
    was_training = net.training
    try:
        with torch.no_grad():
            out, moves = channel_moves(net, lambda: net.eval()(torch.zeros((1,) + tuple(input_shape))))
    except Exception as e:
        raise UserError(
            f"the model fails on an input of shape (1, {', '.join(map(str, input_shape))}): "
            f"{type(e).__name__}: {first_line(e)}"
        ) from e
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UserError(
            f"the model returns {tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__} "
            "for one sample; vib-deploy expects logits of shape (batch, classes)"
        )
    return shapes, out, moves


def _record_shape(module: nn.Module, inputs: Any, output: Any, shapes: dict[str, tuple[int, ...]], name: str) -> None:
    if isinstance(output, torch.Tensor):
        shapes[name] = tuple(output.shape[1:])


def plan_groups(net: nn.Module, input_shape: Sequence[int], ignore: Sequence[str] = ()) -> GroupPlan:
    """Find the prunable groups of `net` and where their gates go; see the module docstring.

    Raises UserError for an unsupported layer type (unless listed in `ignore`), an unknown `ignore`
    name, a model that does not run or trace on `input_shape`.
    """
    # long function: one pass over Torch-Pruning's groups that fills one candidate record per group; the steps
    # that stand alone (output sizes, tracing, grouped-conv ties, FLOPs) are already functions of their own
    module_names = {n for n, _ in net.named_modules()}
    unknown = [i for i in ignore if i not in module_names]
    if unknown:
        raise UserError(
            f"model.ignore lists {unknown[0]!r}, which is not a module of the model "
            f"(modules: {', '.join(sorted(n for n in module_names if n)[:12])}, ...)"
        )
    ignore_set = set(ignore)
    bad = _unsupported_layers(net, ignore_set)
    if bad:
        raise UserError(
            f"layer {bad[0]} has parameters vib-deploy cannot prune (supported: Conv1d/2d, Linear, "
            f"BatchNorm1d/2d); list it under model.ignore to leave the channels it touches unpruned"
        )
    shapes, output, moves = _output_sizes(net, input_shape)
    names = _names(net)

    def ignored(obj: Any) -> bool:
        name = obj if isinstance(obj, str) else names.get(id(obj), "")
        return bool(name) and any(name == i or name.startswith(i + ".") for i in ignore_set)

    for module_name, op in moves.items():
        if not ignored(module_name):
            where = (
                f"in {module_name} ({type(net.get_submodule(module_name)).__name__})"
                if module_name
                else "in the model's own forward (move it into a submodule to list that under model.ignore)"
            )
            others = [n for n in moves if n and n != module_name and not ignored(n)]
            raise UserError(
                f"channels are reordered by {op} {where}, which Torch-Pruning's graph cannot map; "
                f"list {module_name or 'that submodule'} under model.ignore to leave the channels it touches "
                f"unpruned"
                + (f" (so too {', '.join(others[:3])}{', ...' if len(others) > 3 else ''})" if others else "")
            )
    traced = trace(net, input_shape)
    graph = traced.graph

    # The output layer: the last weighted module whose output has the model output's shape.
    out_layer = ""
    for name, shape in shapes.items():
        if isinstance(net.get_submodule(name), WEIGHTED) and shape == tuple(output.shape[1:]):
            out_layer = name
    candidates: list[dict[str, Any]] = []
    for group in graph.get_all_groups(root_module_types=WEIGHTED):
        items = [
            (item.dep.target.module, item.dep.handler, list(item.idxs), list(item.root_idxs or item.idxs))
            for item in group.items
        ]
        root = names[id(items[0][0])]
        c: dict[str, Any] = {
            "root": root,
            "channels": len(items[0][2]),
            "members": [],
            "points": {},
            "reason": "",
            "flops": 0,
            "grouped": [],
            "sides": [],
        }  # grouped: (conv, side, {group channel: position})
        for (module, handler, idxs, root_idxs), item in zip(items, group.items):
            is_out = graph.is_out_channel_pruning_fn(handler)
            if not item.dep.target.outputs and (is_out or not isinstance(module, WEIGHTED)):
                c["reason"] = c["reason"] or "reaches the model output"  # (a final Linear: "output layer", below)
            if item.dep.target.grad_fn in traced.opaque:
                c["reason"] = (
                    c["reason"]
                    or f"passes through {traced.opaque[item.dep.target.grad_fn]}, in model.ignore (it reorders channels)"
                )
            if not isinstance(module, (nn.Module, nn.Parameter)) or id(module) not in names:
                continue  # Torch-Pruning's internal element-wise/concat/reshape nodes
            name = names[id(module)]
            c["members"].append(name)
            if name == out_layer and is_out:
                c["reason"] = "output layer"
            elif ignored(module) and (is_out or not isinstance(module, PRUNABLE_TYPES)):
                c["reason"] = c["reason"] or f"{name} is in model.ignore"
            if is_grouped_conv(module):
                c["grouped"].append((name, "out" if is_out else "in", dict(zip(root_idxs, idxs))))
            per_channel = max(1, len(idxs) // c["channels"])  # features per group channel (Linear after Flatten: H*W)
            c["flops"] += flops_per_channel(module, is_out, shapes.get(name, ())) * per_channel
            if isinstance(module, WEIGHTED):
                c["sides"].append((name, is_out, per_channel))
            if is_out and isinstance(module, PRUNABLE_TYPES) and not _feeds_own_bn(graph, module, items):
                if isinstance(module, BATCHNORMS) and not module.affine:
                    c["reason"] = c["reason"] or f"BatchNorm {name} has affine=False: no scale to fold a gate into"
                elif len(set(idxs)) != len(idxs) or not set(idxs) <= set(range(_out_channels(module))):
                    c["reason"] = c["reason"] or f"the outputs of {name} map to the group's channels more than once"
                else:  # a concat's branch holds a slice of the group's channels; a BN after a concat, a slice of its outputs
                    channel_of = dict(zip(idxs, root_idxs))
                    c["points"][name] = tuple(channel_of.get(p, -1) for p in range(_out_channels(module)))
        if not c["points"]:
            c["reason"] = c["reason"] or "no layer to gate"
        candidates.append(c)
    order = {name: i for i, name in enumerate(shapes)}  # forward execution order: architectures read input to output
    candidates.sort(key=lambda c: min((order.get(m, len(order)) for m in c["members"]), default=len(order)))
    _tie_grouped_convs(net, candidates)
    gated: list[GateGroup] = []
    fixed = [FixedGroup(c["root"], c["channels"], c["reason"]) for c in candidates if c["reason"]]
    for c in candidates:
        if c["reason"]:
            continue
        out_shape = shapes.get(next(iter(c["points"])), (c["channels"],))
        grouped_inputs = tuple(
            (conv, tuple(pos[r] for r in range(c["channels"]))) for conv, side, pos in c["grouped"] if side == "in"
        )
        gated.append(
            GateGroup(
                c["root"],
                c["channels"],
                c["gate"],
                tuple(c["unit_of_channel"]),
                tuple(c["points"].items()),
                tuple(dict.fromkeys(c["members"])),
                math.prod(out_shape[1:]) if len(out_shape) > 1 else 1,
                c["flops"],
                grouped_inputs,
                tuple(c["sides"]),
            )
        )
    return GroupPlan(gated, fixed, count_flops(net, tuple(input_shape)), int(output.shape[1]))


def is_grouped_conv(module: Any) -> bool:
    """A conv with 1 < groups that is not depthwise (a depthwise conv's in and out channels are one group)."""
    return (
        isinstance(module, (nn.Conv1d, nn.Conv2d))
        and module.groups > 1
        and not module.groups == module.in_channels == module.out_channels
    )


def _tie_grouped_convs(net: nn.Module, candidates: list[dict[str, Any]]) -> None:
    """Give every candidate group its gate and unit per channel; fix groups tied to a fixed one.

    Channels at positions p, p' of a grouped conv's input (or output) with p = p' mod (channels / groups)
    get one gate unit (union-find over (group, channel)); groups linked that way share one gate. A side of a
    grouped conv that a fixed group touches, or that no group covers entirely, fixes every group on it.
    """
    # long function: four passes (freeze, tie channels, tie groups, number the gates) over the same maps
    sides: dict[tuple[str, str], list[tuple[int, dict[int, int]]]] = {}
    for gi, c in enumerate(candidates):
        for conv, side, pos in c["grouped"]:
            sides.setdefault((conv, side), []).append((gi, pos))
    changed = True
    while changed:  # fixing a group can freeze another conv side it touches
        changed = False
        for (conv, side), deps in sides.items():
            module = _conv(net, conv)
            size = module.in_channels if side == "in" else module.out_channels
            covered = sorted(p for _, pos in deps for p in pos.values())
            frozen = covered != list(range(size)) or any(candidates[gi]["reason"] for gi, _ in deps)
            for gi, _ in deps:
                if frozen and not candidates[gi]["reason"]:
                    candidates[gi]["reason"] = f"tied through grouped conv {conv} to channels that stay"
                    changed = True
    parent: dict[tuple[int, int], tuple[int, int]] = {}  # union-find over (group, channel)
    for (conv, side), deps in sides.items():
        module = _conv(net, conv)
        period = (module.in_channels if side == "in" else module.out_channels) // module.groups
        first_of_class: dict[int, tuple[int, int]] = {}
        for gi, pos in deps:
            if candidates[gi]["reason"]:
                continue
            for channel, p in pos.items():
                node = (gi, channel)
                other = first_of_class.setdefault(p % period, node)
                parent[_root(parent, node)] = _root(parent, other)
    # groups linked through any channel, directly or through a chain of groups, share one gate
    component: dict[int, int] = {}  # union-find over groups
    group_of_root: dict[tuple[int, int], int] = {}
    for gi, c in enumerate(candidates):
        if c["reason"]:
            continue
        for ch in range(c["channels"]):
            other = group_of_root.setdefault(_root(parent, (gi, ch)), gi)
            component[_root(component, gi)] = _root(component, other)
    gate_of_component: dict[int, int] = {}  # numbered in group order: the first group of a component names it
    unit_of_root: dict[tuple[int, int], int] = {}
    units_per_gate: list[int] = []
    for gi, c in enumerate(candidates):
        if c["reason"]:
            continue
        gate = gate_of_component.setdefault(_root(component, gi), len(units_per_gate))
        if gate == len(units_per_gate):
            units_per_gate.append(0)
        units = []
        for ch in range(c["channels"]):
            r = _root(parent, (gi, ch))
            if r not in unit_of_root:
                unit_of_root[r] = units_per_gate[gate]
                units_per_gate[gate] += 1
            units.append(unit_of_root[r])
        c["gate"], c["unit_of_channel"] = gate, units


def _root(parent: dict[Any, Any], node: Any) -> Any:
    """Union-find: the representative of `node` in `parent` (a new node is its own), halving the path."""
    while parent.setdefault(node, node) != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
    return node


def _conv(net: nn.Module, name: str) -> nn.Conv1d | nn.Conv2d:
    """A grouped conv of `net` by name (only convs are ever recorded as grouped)."""
    module = net.get_submodule(name)
    assert isinstance(module, (nn.Conv1d, nn.Conv2d))
    return module


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, BATCHNORMS):
        return module.num_features
    return module.out_channels  # type: ignore[return-value]


def _feeds_own_bn(
    graph: tp.DependencyGraph, module: nn.Module, items: list[tuple[Any, Any, list[int], list[int]]]
) -> bool:
    """A conv/linear whose only consumer is a BN of the same group: the BN's output is gated instead."""
    if not isinstance(module, WEIGHTED):
        return False
    outputs = graph.module2node[module].outputs
    group_modules = {id(m) for m, _, _, _ in items}
    return len(outputs) == 1 and isinstance(outputs[0].module, BATCHNORMS) and id(outputs[0].module) in group_modules
