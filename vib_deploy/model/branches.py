"""Residual branches of any nn.Module, found on Torch-Pruning's dependency graph, and how one is removed.

A *branch* is one input of a residual add, `out = shortcut + branch` (then, optionally, an activation): the layers
that only the branch side reaches, i.e. the ancestors of the add's branch input less the ancestors of its other
input. The other input, the *shortcut*, is the identity (the block's input itself) or a projection (one conv, with
its BN: a downsampling block's 1x1 conv). So a torchvision BasicBlock / Bottleneck, MobileNet-V2's inverted residual
and a pre-activation block (BN-ReLU-conv twice, its BN on the branch side) are found alike, by the graph, not by
their classes. A side qualifies as a branch when it holds at least one Conv/Linear, more than the shortcut side,
ends in a Conv/Linear/BN module (whose output the branch gate scales: graph.py's gate points, scalar), feeds nothing
outside itself, holds no other residual add (an outer branch around inner ones is left to the inner gates) and no
layer in model.ignore.

A removed branch (its gate off, or its interior cut: a channel group inside it all dead, so its output no longer
depends on the input) becomes a `BranchConstant` in place of its last module: the branch's output as a constant
(zero for a gate that is off; BN's shift where the interior died), the block's add then adds it to the shortcut,
exactly. Its other layers become `Removed`: a fresh (B, 1, 1, ...) slice, so the branch's leftover element-wise ops
(an in-place ReLU included) run on one value per sample and never touch the block's input."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
ENDS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class Branch:
    """One residual branch: its modules go together; `output`'s output enters the add (the gate's point)."""

    output: str  # the branch's last module
    modules: tuple[str, ...]  # every Conv/Linear/BN of the branch, forward order (`output` last)
    shortcut: tuple[str, ...]  # () for the identity, else the projection's modules
    channels: int  # outputs of `output` (the add's width)
    map_size: int  # H*W of its output (1 for a Linear)
    flops: int  # FLOPs (2 x MACs) of the branch's Conv/Linear layers at the dense widths, per sample

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> Branch:
        return Branch(d["output"], tuple(d["modules"]), tuple(d["shortcut"]), d["channels"], d["map_size"], d["flops"])


class BranchConstant(nn.Module):
    """A removed residual branch: its output, a constant `value` of one sample (C, ...) broadcast over the batch.

    Materialised (not a broadcast view): a block may add its shortcut in place (`out += identity`)."""

    def __init__(self, value: torch.Tensor, shape: Sequence[int]):
        super().__init__()
        self.register_buffer("value", value)  # (C, 1, 1) when the same over positions, else (C, H, W)
        self.shape = tuple(shape)  # one sample's output, (C, H, W)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value: torch.Tensor = self.value  # type: ignore[assignment]
        return value.unsqueeze(0).expand((x.shape[0],) + self.shape).contiguous()  # (B, C, H, W)


class Removed(nn.Module):
    """A layer of a removed branch: one value per sample, a copy (an in-place op after it must not reach the input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[(slice(None),) + (slice(0, 1),) * (x.dim() - 1)].clone()  # (B, 1, 1, ...)


def _is_add(node: Any) -> bool:
    return type(getattr(node, "grad_fn", None)).__name__.startswith("AddBackward") and len(node.inputs) == 2


def _ancestors(node: Any) -> set[Any]:
    seen, stack = {node}, [node]
    while stack:
        for i in stack.pop().inputs:
            if i not in seen:
                seen.add(i)
                stack.append(i)
    return seen


def find_branches(
    net: nn.Module,
    graph: Any,
    shapes: dict[str, tuple[int, ...]],
    ignore: Sequence[str] = (),
) -> list[Branch]:
    """The residual branches of `net` (module docstring), in forward order; `graph`: its Torch-Pruning graph,
    `shapes`: each leaf module's output per sample (C, *spatial), in forward order."""
    names = {id(m): n for n, m in net.named_modules()}
    order = {name: i for i, name in enumerate(shapes)}
    name_of = lambda node: names.get(id(node.module), "")  # noqa: E731
    ignored = lambda n: any(n == i or n.startswith(i + ".") for i in ignore)  # noqa: E731
    found: list[Branch] = []
    for add in list(graph.module2node.values()):
        if not _is_add(add):
            continue
        a, b = add.inputs
        anc_a, anc_b = _ancestors(a), _ancestors(b)
        sides = [(a, anc_a - anc_b), (b, anc_b - anc_a)]
        weighted = [sum(isinstance(n.module, WEIGHTED) for n in own) for _, own in sides]
        k = 0 if weighted[0] > weighted[1] else 1
        end, own = sides[k]
        _, other = sides[1 - k]
        if weighted[k] == 0 or weighted[k] <= weighted[1 - k] or weighted[1 - k] > 1:
            continue
        if not isinstance(end.module, ENDS) or not name_of(end) or any(_is_add(n) for n in own):
            continue
        if any(o is not add and o not in own for n in own for o in n.outputs):
            continue  # a tensor of the branch feeds something else too
        modules = sorted({name_of(n) for n in own if isinstance(n.module, ENDS)}, key=lambda n: order.get(n, 0))
        if any(ignored(m) for m in modules):
            continue
        shortcut = tuple(sorted({name_of(n) for n in other if name_of(n)}, key=lambda n: order.get(n, 0)))
        out = name_of(end)
        shape: tuple[int, ...] = shapes[out]
        flops = sum(
            _layer_flops(net.get_submodule(m), shapes[m]) for m in modules if isinstance(net.get_submodule(m), WEIGHTED)
        )
        channels, size = shape[0], math.prod(shape[1:])  # (a Linear's (C,): a map of 1)
        found.append(Branch(out, tuple(m for m in modules if m != out) + (out,), shortcut, channels, size, flops))
    return sorted(found, key=lambda br: order.get(br.output, 0))


def _layer_flops(module: nn.Module, out_shape: tuple[int, ...]) -> int:
    """FLOPs (2 x MACs) of one Conv/Linear per sample, bias excluded (as layers.count_flops)."""
    from vib_deploy.model.layers import flops_per_channel

    return flops_per_channel(module, True, out_shape) * out_shape[0] if out_shape else 0


def remove_branch(net: nn.Module, branch: Branch | dict[str, Any], value: torch.Tensor, shape: Sequence[int]) -> None:
    """Replace the branch's last module by `BranchConstant(value)` and its other modules by `Removed`, in place."""
    modules = branch.modules if isinstance(branch, Branch) else branch["modules"]
    output = branch.output if isinstance(branch, Branch) else branch["branch"]
    for name in modules:
        _set(net, name, BranchConstant(value, shape) if name == output else Removed())


def _set(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, module)


def constant_value(out: torch.Tensor) -> torch.Tensor:
    """One sample of a branch's constant output, (C, 1, ...) when it is the same at every position, else (C, ...)."""
    one = out[0]
    first = one.reshape(one.shape[0], -1)[:, :1].reshape((one.shape[0],) + (1,) * (one.dim() - 1))
    return first.clone() if bool((one == first).all()) else one.clone()


def plan_branches(net: nn.Module, input_shape: Sequence[int], ignore: Sequence[str] = ()) -> list[Branch]:
    """The residual branches of `net` (in its dtype) on one sample of `input_shape` (see `find_branches`)."""
    from vib_deploy.model.tracing import trace

    dtype = next(net.parameters()).dtype
    shapes: dict[str, tuple[int, ...]] = {}
    hook = lambda name: lambda m, i, out: shapes.__setitem__(name, tuple(out.shape[1:]))  # noqa: E731
    leaves = [(n, m) for n, m in net.named_modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    was_training = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros((1,) + tuple(input_shape), dtype=dtype))
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return find_branches(net, trace(net, input_shape, dtype).graph, shapes, ignore)
