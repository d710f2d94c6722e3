"""Torch-Pruning's dependency graph of a net, with the channel moves its graph cannot map kept opaque.

A *channel move* reorders channels across groups: a channel shuffle (ShuffleNet's `view(b, g, c/g, h, w)`,
transpose, view back; `torch.channel_shuffle`; `nn.ChannelShuffle`) or a pixel (un)shuffle. Torch-Pruning's
reshape mapping only knows flattening, so such a view either crashes its tracing (a division by zero) or
would map channel i to channel i, which is wrong. `channel_moves` finds them in one forward pass and names
the innermost module whose forward makes each. `dependency_graph` traces that module as one opaque
element-wise node (its inside is never traced, so never pruned); plan_groups (graph.py) refuses such a
net unless the module is under model.ignore, and fixes every group that passes through an opaque node.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode

from vib_deploy.errors import UserError, first_line

_RESHAPES = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.unflatten, torch.unflatten}
_SHUFFLES = {"channel_shuffle", "native_channel_shuffle", "pixel_shuffle", "pixel_unshuffle"}


class _ChannelMoves(TorchFunctionMode):
    """Records, per innermost running module, the first op that splits or reorders the channel dim."""

    def __init__(self, stack: list[str], found: dict[str, str]):
        super().__init__()
        self.stack, self.found = stack, found

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        op = ""
        if name in _SHUFFLES:
            op = f"{name} (channel shuffle)" if "channel" in name else f"{name} (trades channels for pixels)"
        elif func in _RESHAPES and args and _splits_channels(args[0], out):
            op = f"{name}{tuple(out.shape)} of a {tuple(args[0].shape)} tensor (a channel shuffle splits the channels into groups)"
        if op and self.stack:
            self.found.setdefault(self.stack[-1], op)
        return out


def _splits_channels(x: Any, out: Any) -> bool:
    """(N, C, *S) -> (N, g, C/g, *S) with 1 < g < C: channels split into groups (the first step of a shuffle)."""
    if not (isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor)) or x.dim() < 3 or out.dim() != x.dim() + 1:
        return False
    return (
        out.shape[0] == x.shape[0]
        and 1 < out.shape[1] < x.shape[1]
        and out.shape[1] * out.shape[2] == x.shape[1]
        and out.shape[3:] == x.shape[2:]
    )


def channel_moves(net: nn.Module, run: Callable[[], Any]) -> tuple[Any, dict[str, str]]:
    """`run()` (a forward of `net`) with channel moves recorded: its result and {innermost module: op}."""
    stack: list[str] = []
    found: dict[str, str] = {}
    handles = []

    def enter(name: str, *_: Any) -> None:
        stack.append(name)

    def leave(*_: Any) -> None:
        stack.pop()

    for name, m in net.named_modules():
        handles += [m.register_forward_pre_hook(partial(enter, name)), m.register_forward_hook(leave)]
    try:
        with _ChannelMoves(stack, found):
            return run(), found
    finally:
        for h in handles:
            h.remove()


class _Opaque(torch.autograd.Function):
    """A module's forward as one autograd node: Torch-Pruning sees an element-wise op, not its inside."""

    @staticmethod
    def forward(ctx: Any, fn: Callable[[], torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
        return fn()

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:  # never run: the graph is only traced
        raise RuntimeError("an opaque module is for tracing only")


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _opaque_forward(
    original: Callable[..., Any], grad_fns: dict[Any, str], name: str, *args: Any, **kwargs: Any
) -> Any:
    out = _Opaque.apply(partial(original, *args, **kwargs), *_tensors((args, kwargs)))
    if isinstance(out, torch.Tensor) and out.grad_fn is not None:
        grad_fns[out.grad_fn] = name
    return out


@contextmanager
def _opaque(net: nn.Module, names: Sequence[str], grad_fns: dict[Any, str]) -> Iterator[None]:
    patched = []
    for name in names:
        module = net.get_submodule(name)
        patched.append(module)
        module.forward = partial(_opaque_forward, module.forward, grad_fns, name)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for module in patched:
            del module.forward  # back to the class's forward


@dataclass
class Traced:
    graph: tp.DependencyGraph
    opaque: dict[Any, str]  # grad_fn of an opaque module's output -> the module's name
    moves: dict[str, str]  # innermost module making a channel move -> the op


def trace(net: nn.Module, input_shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Traced:
    """Torch-Pruning's graph of `net` on a zero input, channel moves opaque; a model that fails to trace is a UserError."""
    x = torch.zeros((1,) + tuple(input_shape), dtype=dtype)
    was_training = net.training
    grad_fns: dict[Any, str] = {}
    try:
        with torch.no_grad():
            _, moves = channel_moves(net, lambda: net.eval()(x))
        opaque = [n for n in moves if n]  # a move in the model's own forward: plan_groups refuses it
        with (
            warnings.catch_warnings(),
            _opaque(net, opaque, grad_fns),
        ):  # "unwrapped parameters": only ever in fixed groups
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph().build_dependency(net.eval(), example_inputs=x)
    except Exception as e:
        raise UserError(
            f"the model could not be traced on an input of shape {tuple(x.shape)} ({type(e).__name__}: {first_line(e)})"
        ) from e
    finally:
        net.train(was_training)
    return Traced(graph, grad_fns, moves)


def dependency_graph(
    net: nn.Module, input_shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> tp.DependencyGraph:
    """Torch-Pruning's graph of `net` (see `trace`)."""
    return trace(net, input_shape, dtype).graph
