"""Cost-aware KL (`train.vib.kl_weighting: flops | latency`): each gate's KL per unit weighted by what one unit costs.

MorphNet (Gordon et al., CVPR 2018) weights its sparsity regulariser by FLOPs, HALP (Shen et al., NeurIPS 2022) its
pruning by a latency lookup table; here the VIB KL is weighted so. A *column* is a set of units that share a width:
a gate layer of a zoo LeNet, a channel group of a module net (graph.py: a residual stream is one). Every Conv/Linear
a column touches is a `Layer` with its dense widths and, per side, the columns whose units are its channels and how
many of its features one unit is (f: H*W for a Linear after a Flatten, else 1). Its widths now are

    n_in = dense n_in - sum over the input side's columns g of f * (N_g - alive_g)    (n_out alike)

and one unit of column g costs, at the CURRENT widths (units alive now: they change as units die),

    c_g = sum over layers L with g on its input side of f * dC_L/dn_in  +  ... on its output side of f * dC_L/dn_out

- flops: C_L = FLOPs (2 x MACs), bilinear in (n_in, n_out): dC/dn_out = the FLOPs of one output channel at the
  dense widths (layers.flops_per_channel) * n_in / dense n_in, and alike for an input channel; a depthwise conv's
  FLOPs follow its one width (its input side is its output group's). Removing one unit saves exactly c_g.
- latency: C_L = the layer's latency on `deploy.target`, its slopes read off a lookup table timed on the target
  (latency.py: the grid, the smoothing over channel blocks, the cache).

A gate's per-unit cost is that of the channels one of its units stands for: sum over its columns of
(channels / units) * c_g (one column of as many channels as units, but where a grouped conv ties groups).
A branch gate (model.depth_gates: one unit, a whole residual branch) costs what its layers cost at the current
widths: sum of C_L over the branch's Conv/Linear layers (flops: FLOPs; latency: the tables' latency at those widths).

The paper's per-unit weight of gate l is w_l = 0.5 * kl_mult * map_size. Here it is lambda * c_l, lambda fixed
once on the dense net so that sum_l N_l * lambda * c_l(dense) = sum_l N_l * w_l (N_l: all units), i.e. the total
weight is the paper's on the dense net and only its distribution over layers moves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.measure.latency import LayerShape
from vib_deploy.model.layers import flops_per_channel
from vib_deploy.model.vib import VIBGate

Side = tuple[tuple[int, int], ...]  # (column, features per unit) on one side of a layer


@dataclass(frozen=True)
class Layer:
    """A Conv/Linear that gated columns touch: its dense widths, its columns per side and its FLOPs per channel."""

    name: str
    shape: LayerShape
    inputs: int  # dense input channels (a Linear: features)
    outputs: int
    ins: Side
    outs: Side
    flops_in: int  # FLOPs of one input channel (feature) at the dense widths
    flops_out: int  # FLOPs of one output channel at the dense widths

    def widths(self, dense: list[int], alive: list[int]) -> tuple[int, int]:
        """(n_in, n_out) when the columns have `alive` of their `dense` units."""
        removed = lambda side: sum(f * (dense[c] - alive[c]) for c, f in side)  # noqa: E731
        return self.inputs - removed(self.ins), self.outputs - removed(self.outs)


class Cost(Protocol):
    def slopes(self, layer: Layer, n_in: int, n_out: int) -> tuple[float, float]:
        """(cost of one input feature, cost of one output channel) of `layer` at these widths."""
        ...

    def total(self, layer: Layer, n_in: int, n_out: int) -> float:
        """What `layer` costs at these widths (a branch gate's unit costs its layers' totals)."""
        ...


class FlopsCost:
    """FLOPs: bilinear in the two widths (see the module docstring)."""

    def slopes(self, layer: Layer, n_in: int, n_out: int) -> tuple[float, float]:
        return layer.flops_in * n_out / layer.outputs, layer.flops_out * n_in / layer.inputs

    def total(self, layer: Layer, n_in: int, n_out: int) -> float:
        if layer.shape.kind == "dwconv":  # its FLOPs follow its one width
            return float(layer.flops_out * n_out)
        return layer.flops_out * n_out * n_in / layer.inputs


@dataclass(frozen=True)
class NetLayers:
    """A gated net as the weighting sees it: its gates, its columns and the layers they touch."""

    gates: list[VIBGate]
    gate_of: list[int]  # per column, its gate
    share: list[float]  # per column, its channels per unit of its gate
    dense: list[int]  # per column, its channels
    layers: list[Layer]
    alive: Callable[[], list[int]]  # per column, its channels alive now
    branches: tuple[tuple[VIBGate, tuple[str, ...]], ...] = ()  # depth gates: (gate, its Conv/Linear layers)


class CostWeighting:
    """Per-unit KL weights proportional to what each gate's unit costs at the current widths (`cost`)."""

    kind = "cost"

    def __init__(self, net: NetLayers, cost: Cost):
        self.net, self.cost = net, cost
        self.gates = net.gates + [gate for gate, _ in net.branches]
        paper = sum(g.units * 0.5 * g.kl_mult * g.map_size for g in self.gates)
        total = sum(g.units * c for g, c in zip(self.gates, self.unit_costs(net.dense)))
        if not total > 0:
            raise UserError(
                f"train.vib.kl_weighting: {self.kind}: no gate unit costs anything on the dense net; use paper"
            )
        self.scale = paper / total

    def unit_costs(self, widths: list[int]) -> list[float]:
        """What one unit of each gate costs when the columns have `widths` channels."""
        per_column = [0.0] * len(widths)
        for layer in self.net.layers:
            d_in, d_out = self.cost.slopes(layer, *layer.widths(self.net.dense, widths))
            for c, f in layer.ins:
                per_column[c] += f * d_in
            for c, f in layer.outs:
                per_column[c] += f * d_out
        per_gate = [0.0] * len(self.net.gates)
        for c, cost in enumerate(per_column):
            per_gate[self.net.gate_of[c]] += self.net.share[c] * cost
        by_name = {layer.name: layer for layer in self.net.layers}
        for _, names in self.net.branches:
            layers = [by_name[n] for n in names if n in by_name]
            per_gate.append(sum(self.cost.total(layer, *layer.widths(self.net.dense, widths)) for layer in layers))
        return per_gate

    def alive(self) -> list[int]:
        return self.net.alive()

    def weights(self) -> list[float]:
        """Per-unit KL weight of each gate now (the paper's is 0.5 * kl_mult * map_size)."""
        return [self.scale * c for c in self.unit_costs(self.alive())]

    def total_kl(self) -> torch.Tensor:
        """sum_l weight_l * sum_i log(1 + mu_i^2 / (exp(logD_i) + 1e-8)), per sample."""
        return torch.stack([w * g.unit_kl() for w, g in zip(self.weights(), self.gates)]).sum()

    def identity(self) -> dict[str, Any] | None:
        """What the weights were measured on, for the stage record (None: nothing but the net)."""
        return None


class FlopsWeighting(CostWeighting):
    """Per-unit KL weights proportional to each gate's FLOPs per unit at the current widths."""

    kind = "flops"

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]):
        super().__init__(net_layers(model, input_shape), FlopsCost())

    def unit_flops(self, widths: list[int]) -> list[float]:
        """FLOPs one unit of each gate costs when the columns have `widths` units."""
        return self.unit_costs(widths)


def net_layers(model: nn.Module, input_shape: tuple[int, ...]) -> NetLayers:
    """The gates, columns and layers of a zoo LeNet (a gated Sequential) or a GatedNet."""
    from vib_deploy.model.gated import GatedNet

    if isinstance(model, nn.Sequential):
        gates = [m for m in model if isinstance(m, VIBGate)]
        return NetLayers(
            gates,
            list(range(len(gates))),
            [1.0] * len(gates),
            [g.units for g in gates],
            _sequential_layers(model, input_shape),
            lambda: [int(g.keep_mask().sum()) for g in gates],
        )
    if isinstance(model, GatedNet):
        gates = [g for g in model.gates if isinstance(g, VIBGate)]
        groups = model.groups
        return NetLayers(
            gates,
            [g.gate for g in groups],
            [g.channels / gates[g.gate].units for g in groups],
            [g.channels for g in groups],
            _module_layers(model, input_shape),
            lambda: [int(m.sum()) for m in model.keep_masks()],
            tuple((cast(VIBGate, gate), b.modules) for b, gate in zip(model.branches, model.branch_gates)),
        )
    raise UserError(
        f"train.vib.kl_weighting: cost weighting needs a zoo LeNet (a gated Sequential) or a GatedNet, "
        f"not {type(model).__name__}"
    )


def _io_shapes(net: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input, output) shape of one sample at every Conv/Linear of `net`, by module name, in forward order."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def record(name: str) -> Any:
        def hook(_module: nn.Module, inputs: Any, out: torch.Tensor) -> None:
            shapes[name] = (tuple(inputs[0].shape[1:]), tuple(out.shape[1:]))

        return hook

    weighted = (nn.Conv1d, nn.Conv2d, nn.Linear)
    handles = [m.register_forward_hook(record(n)) for n, m in net.named_modules() if isinstance(m, weighted)]
    was = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros((1,) + tuple(input_shape)))
    finally:
        net.train(was)
        for h in handles:
            h.remove()
    return shapes


def _layer(name: str, module: nn.Module, io: tuple[tuple[int, ...], tuple[int, ...]], ins: Side, outs: Side) -> Layer:
    in_shape, out_shape = io
    if isinstance(module, nn.Linear):
        shape = LayerShape("linear", in_shape[:-1])
        inputs, outputs = module.in_features, module.out_features
    else:
        assert isinstance(module, (nn.Conv1d, nn.Conv2d))
        inputs, outputs = module.in_channels, module.out_channels
        depthwise = module.groups == inputs == outputs and module.groups > 1
        padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
        shape = LayerShape(
            "dwconv" if depthwise else "conv",
            in_shape[1:],
            tuple(module.kernel_size),
            tuple(module.stride),
            padding,
            tuple(module.dilation),
            1 if depthwise else module.groups,
        )
    flops_in, flops_out = (flops_per_channel(module, side, out_shape) for side in (False, True))
    return Layer(name, shape, inputs, outputs, ins, outs, flops_in, flops_out)


def _module_layers(gated: Any, input_shape: tuple[int, ...]) -> list[Layer]:
    """The Conv/Linear layers of a GatedNet's groups (graph.GateGroup.sides), in forward order."""
    sides: dict[tuple[str, bool], list[tuple[int, int]]] = {}
    for c, group in enumerate(gated.groups):
        for name, is_out, f in group.sides:
            sides.setdefault((name, is_out), []).append((c, f))
    if not sides:
        raise UserError("train.vib.kl_weighting: the model file records no layer sides per group; retrain its VIB")
    in_branches = {name for b in gated.branches for name in b.modules}
    return [
        _layer(
            name,
            gated.net.get_submodule(name),
            io,
            tuple(sides.get((name, False), ())),
            tuple(sides.get((name, True), ())),
        )
        for name, io in _io_shapes(gated.net, input_shape).items()
        if (name, False) in sides or (name, True) in sides or name in in_branches
    ]


def _sequential_layers(model: nn.Sequential, input_shape: tuple[int, ...]) -> list[Layer]:
    """One layer per Conv2d/Linear, with the gate (if any) feeding it and the gate on its output."""
    shapes = _io_shapes(model, input_shape)
    gate_ids = {id(g): j for j, g in enumerate(m for m in model if isinstance(m, VIBGate))}
    src: int | None = None  # the gate whose units flow now (None: no gate since the last weighted layer)
    width = 0  # its units
    pending: list[tuple[int, Side]] = []  # weighted layers whose output gate is not known yet
    layers: list[Layer] = []

    def close(gate: int | None) -> None:
        for k, ins in pending:
            outs = ((gate, 1),) if gate is not None else ()
            layers.append(_layer(str(k), model[k], shapes[str(k)], ins, outs))
        pending.clear()

    for k, layer in enumerate(model):
        if isinstance(layer, VIBGate):
            close(gate_ids[id(layer)])
            src, width = gate_ids[id(layer)], layer.units
        elif isinstance(layer, (nn.Conv2d, nn.Linear)):
            if isinstance(layer, nn.Conv2d) and layer.groups != 1:
                raise UserError("train.vib.kl_weighting: grouped convolutions in a Sequential are not supported")
            close(None)
            per_unit = layer.in_features // width if isinstance(layer, nn.Linear) and src is not None else 1
            pending.append((k, ((src, per_unit),) if src is not None else ()))
            src = None
    close(None)
    return [layer for layer in layers if layer.ins or layer.outs]


class LatencyCost:
    """Latency on the target: each layer's slopes read off its lookup table (latency.py)."""

    def __init__(self, tables: Any):
        self.tables = tables

    def slopes(self, layer: Layer, n_in: int, n_out: int) -> tuple[float, float]:
        return self.tables.layers[layer.name].slopes(n_in, n_out)

    def total(self, layer: Layer, n_in: int, n_out: int) -> float:
        return self.tables.layers[layer.name].latency(n_in, n_out)


def table_requests(layers: list[Layer]) -> list[Any]:
    """The widths to time per layer: a grid on each gated side (latency.axis_grid), the dense width elsewhere;
    widths stay multiples of a grouped conv's groups and of a Linear's features per unit."""
    import math

    from vib_deploy.measure.latency import TableRequest, axis_grid

    requests = []
    for layer in layers:
        groups = layer.shape.groups
        unit_in = math.lcm(groups, *(f for _, f in layer.ins))
        unit_out = math.lcm(groups, *(f for _, f in layer.outs))
        gated_in = bool(layer.ins) and layer.shape.kind != "dwconv"  # a depthwise conv's input follows its output
        in_grid = axis_grid(layer.inputs, unit_in) if gated_in else (layer.inputs,)
        out_grid = axis_grid(layer.outputs, unit_out) if layer.outs else (layer.outputs,)
        requests.append(TableRequest(layer.name, layer.shape, in_grid, out_grid))
    return requests


class LatencyWeighting(CostWeighting):
    """Per-unit KL weights proportional to each gate's latency per unit on the target at the current widths."""

    kind = "latency"

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], tables_for: Callable[[list[Any]], Any]):
        """`tables_for(requests)`: the `latency.LatencyTables` of these layer requests (built or read from cache)."""
        net = net_layers(model, input_shape)
        self.tables = tables_for(table_requests(net.layers))
        super().__init__(net, LatencyCost(self.tables))

    def identity(self) -> dict[str, Any] | None:
        return self.tables.identity()


def weighting_for(
    config: Any, model: nn.Module, input_shape: tuple[int, ...], tables_for: Callable[[list[Any]], Any] | None = None
) -> Any:
    """The pipeline's `train.vib.kl_weighting` for `model` (None: the paper's weights); `latency` needs `tables_for`
    (bench/layer_timing.py `target_tables`: the tables timed on deploy.target)."""
    kind = config.train.vib.kl_weighting
    if kind == "flops":
        return FlopsWeighting(model, input_shape)
    if kind == "latency":
        if tables_for is None:
            raise ValueError("kl_weighting latency needs the target's tables (bench.layer_timing.target_tables)")
        return LatencyWeighting(model, input_shape, tables_for)
    return None
