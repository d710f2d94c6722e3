"""Layers as data: vib-deploy's extra layers, an `nn.Sequential` <-> a JSON-able list of layer specs, FLOPs/params.

A Sequential model file (see nets.py) stores `{"layers": spec, "state_dict": ...}`, so it loads with
`torch.load(weights_only=True)` in a fresh process, without the code or config that made it. A leaf module:
it imports nothing of vib-deploy beyond errors and the VIB gate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.model.vib import VIBGate


class ChannelScale(nn.Module):
    """Multiply dim 1 by fixed per-channel values (a folded gate whose sign forbids folding further)."""

    values: torch.Tensor  # a buffer (C,)

    def __init__(self, values: torch.Tensor):
        super().__init__()
        self.register_buffer("values", values.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.values.reshape((1, -1) + (1,) * (x.dim() - 2))


class PixelSelect(nn.Module):
    """Keep the listed features of a (B, F) input: a Gather of the kept input pixels.

    Written as `torch.gather` (ONNX GatherElements with the indices broadcast over the batch), not as
    `index_select` (ONNX Gather on axis 1): ONNX Runtime runs a Gather on axis 1 one float-sized copy at a time (46
    of a pruned LeNet-300's 63 us at batch 64), GatherElements 2-3x faster. OpenVINO is the other way round, so its
    runner lowers this back to a Gather (backends/openvino.py); figures in docs/cpu.md ("The kept-pixel Gather")."""

    indices: torch.Tensor  # a buffer (kept,), int64

    def __init__(self, indices: torch.Tensor):
        super().__init__()
        self.register_buffer("indices", indices.detach().clone().long())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.gather(x, 1, self.indices.expand(x.shape[0], -1))


def _spec_of(layer: nn.Module) -> dict[str, Any]:
    if isinstance(layer, nn.Flatten):
        return {"type": "flatten"}
    if isinstance(layer, nn.ReLU):
        return {"type": "relu"}
    if isinstance(layer, nn.Linear):
        return {"type": "linear", "in": layer.in_features, "out": layer.out_features}
    if isinstance(layer, nn.Conv2d):
        return {
            "type": "conv2d",
            "in": layer.in_channels,
            "out": layer.out_channels,
            "kernel": list(layer.kernel_size),
            "stride": list(layer.stride),
            "padding": list(layer.padding),
        }
    if isinstance(layer, nn.BatchNorm2d):
        return {"type": "batchnorm2d", "channels": layer.num_features, "eps": layer.eps}
    if isinstance(layer, nn.MaxPool2d):
        return {"type": "maxpool2d", "kernel": layer.kernel_size, "stride": layer.stride}
    if isinstance(layer, VIBGate):
        return {
            "type": "vib_gate",
            "units": layer.units,
            "kl_mult": layer.kl_mult,
            "map_size": layer.map_size,
            "threshold": layer.threshold,
        }
    if isinstance(layer, ChannelScale):
        return {"type": "scale", "channels": layer.values.numel()}
    if isinstance(layer, PixelSelect):
        return {"type": "select", "count": layer.indices.numel()}
    raise UserError(f"layer type {type(layer).__name__} is not supported in a saved vib-deploy model")


_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "flatten": lambda s: nn.Flatten(),
    "relu": lambda s: nn.ReLU(),
    "linear": lambda s: nn.Linear(s["in"], s["out"]),
    "conv2d": lambda s: nn.Conv2d(s["in"], s["out"], tuple(s["kernel"]), tuple(s["stride"]), tuple(s["padding"])),
    "batchnorm2d": lambda s: nn.BatchNorm2d(s["channels"], eps=s["eps"]),
    "maxpool2d": lambda s: nn.MaxPool2d(s["kernel"], s["stride"]),
    "vib_gate": lambda s: VIBGate(s["units"], s["kl_mult"], s["map_size"], s["threshold"]),
    "scale": lambda s: ChannelScale(torch.ones(s["channels"])),
    "select": lambda s: PixelSelect(torch.zeros(s["count"], dtype=torch.long)),
}


def describe(model: nn.Sequential) -> list[dict[str, Any]]:
    """The layer specs of a Sequential."""
    return [_spec_of(layer) for layer in model]


def build(spec: list[dict[str, Any]]) -> nn.Sequential:
    """A Sequential from layer specs (weights freshly initialised)."""
    try:
        return nn.Sequential(*(_BUILDERS[s["type"]](s) for s in spec))
    except (KeyError, TypeError) as e:
        raise UserError(f"invalid layer spec ({e!r})") from e


def prunable_layers(model: nn.Sequential) -> list[tuple[int, nn.Module]]:
    """(index, layer) of the Conv2d/Linear layers whose outputs are gated (all but the last)."""
    weighted: list[tuple[int, nn.Module]] = [
        (i, m) for i, m in enumerate(model) if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    return weighted[:-1]


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs per sample = 2 x MACs of Conv2d and Linear layers (the paper's convention; biases not counted)."""
    macs = 0

    def hook(layer: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(layer, nn.Linear):
            macs += layer.in_features * layer.out_features
        elif isinstance(layer, nn.Conv2d):
            k = layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels // layer.groups
            macs += output[0].numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((1,) + tuple(input_shape)))
    finally:
        for h in handles:
            h.remove()
    return 2 * macs


def flops_per_channel(module: object, is_out: bool, out_shape: tuple[int, ...]) -> int:
    """FLOPs (2 x MACs) that one output (is_out) or input channel of a Conv1d/2d or Linear costs at its widths now;
    `out_shape`: its output per sample, (C, *spatial). A Linear's input channel is one input feature."""
    spatial = math.prod(out_shape[1:]) if len(out_shape) > 1 else 1
    if isinstance(module, nn.Linear):
        return 2 * (module.in_features if is_out else module.out_features)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        k = math.prod(module.kernel_size)
        per_out = k * module.in_channels // module.groups
        per_in = k * module.out_channels // module.groups
        return 2 * spatial * (per_out if is_out else per_in)
    return 0


def count_params(model: nn.Module) -> int:
    """Weights and biases of Conv2d/Linear/BatchNorm (the deployable parameters; gates excluded)."""
    return sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.BatchNorm2d))
        for p in m.parameters(recurse=False)
    )
