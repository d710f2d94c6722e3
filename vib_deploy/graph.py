"""VIB gates for any nn.Module, placed on Torch-Pruning's dependency groups, and exact structural pruning.

A *group* is every coupled set of channels that must be removed together, as Torch-Pruning's
DependencyGraph finds them: a residual add couples the channels of every branch into the add and of the
stream after it; a depthwise conv follows its input channels; a concat gives each branch its own group
(mapped to its slice of the consumer's inputs); BN follows its conv. Each group gets one VIBGate.

Where the gate multiplies: at every *gate point* of its group, i.e. every Conv/Linear/BN whose output
channels are in the group, on that module's output (a conv feeding straight into its BN is gated at
the BN, since BN would undo a gate before it). All points of a group share one draw of z per sample.
Gating a layer's own output makes folding exact whatever the sign of z: z scales the layer's weights
and bias (or BN's affine), so the gated model in eval mode is a plain net whose dead channels are
exactly zero; pruning then removes them with the same DependencyGraph.

A grouped conv (1 < groups < channels) must lose the same channels in each of its groups, so the gate
of a group touching one is *tied*: channel i uses gate unit i mod (channels / ties), ties = lcm of the
groups involved. A group is left fixed (no gate, never pruned) when it holds the output layer, a layer
listed in `ignore`, or a grouped conv reached through a concat.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Sequence

import torch
import torch_pruning as tp
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.prune import PruneResult
from vib_deploy.vib import VIBGate

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class GateGroup:
    """One gated group: `channels` coupled channels, pruned through `root`'s output channels."""

    root: str  # module whose prune_out_channels triggers the whole group
    channels: int
    ties: int  # channel i shares gate unit i % (channels // ties)
    points: tuple[tuple[str, tuple[int, ...]], ...]  # (module, group channel of each of its outputs): gated outputs
    members: tuple[str, ...]  # every module the group touches (for `inspect`)
    map_size: int  # H*W of the root's output (1 for a Linear)
    flops_per_channel: int  # FLOPs (2 x MACs) that removing one channel of this group saves

    @property
    def units(self) -> int:
        return self.channels // self.ties

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> "GateGroup":
        return GateGroup(d["root"], d["channels"], d["ties"], tuple((p[0], tuple(p[1])) for p in d["points"]),
                         tuple(d["members"]), d["map_size"], d["flops_per_channel"])


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
            bad.append(f"{name} ({type(m).__name__})")
    return bad


def dependency_graph(net: nn.Module, input_shape: Sequence[int], dtype: torch.dtype = torch.float32) -> tp.DependencyGraph:
    """Torch-Pruning's graph of `net`, traced once on a zero input; a model that fails to trace is a UserError."""
    x = torch.zeros((1,) + tuple(input_shape), dtype=dtype)
    was_training = net.training
    try:
        with warnings.catch_warnings():  # "unwrapped parameters": only ever in groups left fixed (see plan_groups)
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(net.eval(), example_inputs=x)
    except Exception as e:
        raise UserError(f"the model could not be traced on an input of shape {tuple(x.shape)} "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from e
    finally:
        net.train(was_training)


def _output_sizes(net: nn.Module, input_shape: Sequence[int]) -> tuple[dict[str, tuple[int, ...]], torch.Tensor]:
    """Per-sample output shape of every leaf module, and the model's output, from one forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [m.register_forward_hook(partial(_record_shape, shapes=shapes, name=n))
               for n, m in net.named_modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = net.eval()(torch.zeros((1,) + tuple(input_shape)))
    except Exception as e:
        raise UserError(f"the model fails on an input of shape (1, {', '.join(map(str, input_shape))}): "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from e
    finally:
        for h in handles:
            h.remove()
    return shapes, out


def _record_shape(module: nn.Module, inputs: Any, output: Any, shapes: dict[str, tuple[int, ...]], name: str) -> None:
    if isinstance(output, torch.Tensor):
        shapes[name] = tuple(output.shape[1:])


def _flops_per_channel(module: nn.Module, is_out: bool, out_shape: tuple[int, ...]) -> int:
    """MACs x 2 that one of this module's output (is_out) or input channels costs."""
    spatial = math.prod(out_shape[1:]) if len(out_shape) > 1 else 1
    if isinstance(module, nn.Linear):
        return 2 * (module.in_features if is_out else module.out_features)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        k = math.prod(module.kernel_size)
        per_out = k * module.in_channels // module.groups
        per_in = k * module.out_channels // module.groups
        return 2 * spatial * (per_out if is_out else per_in)
    return 0


def plan_groups(net: nn.Module, input_shape: Sequence[int], ignore: Sequence[str] = ()) -> GroupPlan:
    """Find the prunable groups of `net` and where their gates go; see the module docstring.

    Raises UserError for an unsupported layer type (unless listed in `ignore`), an unknown `ignore`
    name, a model that does not run or trace on `input_shape`.
    """
    module_names = {n for n, _ in net.named_modules()}
    unknown = [i for i in ignore if i not in module_names]
    if unknown:
        raise UserError(f"model.ignore lists {unknown[0]!r}, which is not a module of the model "
                        f"(modules: {', '.join(sorted(n for n in module_names if n)[:12])}, ...)")
    ignore_set = set(ignore)
    bad = _unsupported_layers(net, ignore_set)
    if bad:
        raise UserError(f"layer {bad[0]} has parameters vib-deploy cannot prune (supported: Conv1d/2d, Linear, "
                        f"BatchNorm1d/2d); list it under model.ignore to leave the channels it touches unpruned")
    shapes, output = _output_sizes(net, input_shape)
    graph = dependency_graph(net, input_shape)
    names = _names(net)

    def ignored(obj: Any) -> bool:
        name = names.get(id(obj), "")
        return bool(name) and any(name == i or name.startswith(i + ".") for i in ignore_set)

    # The output layer: the last weighted module whose output has the model output's shape.
    out_layer = ""
    for name, shape in shapes.items():
        if isinstance(net.get_submodule(name), _WEIGHTED) and shape == tuple(output.shape[1:]):
            out_layer = name
    gated: list[GateGroup] = []
    fixed: list[FixedGroup] = []
    for group in graph.get_all_groups(root_module_types=_WEIGHTED):
        items = [(item.dep.target.module, item.dep.handler, list(item.idxs), list(item.root_idxs or item.idxs))
                 for item in group.items]
        root = names[id(items[0][0])]
        channels = len(items[0][2])
        members: list[str] = []
        points: dict[str, tuple[int, ...]] = {}
        ties, reason, flops = 1, "", 0
        for module, handler, idxs, root_idxs in items:
            if not isinstance(module, (nn.Module, nn.Parameter)) or id(module) not in names:
                continue  # Torch-Pruning's internal element-wise/concat/reshape nodes
            name = names[id(module)]
            is_out = graph.is_out_channel_pruning_fn(handler)
            members.append(name)
            if name == out_layer and is_out:
                reason = "output layer"
            elif ignored(module) and (is_out or not isinstance(module, PRUNABLE_TYPES)):
                reason = f"{name} is in model.ignore"
            if isinstance(module, (nn.Conv1d, nn.Conv2d)) and 1 < module.groups:
                depthwise = module.groups == module.in_channels == module.out_channels
                if not depthwise:
                    if idxs != list(range(channels)) or (not is_out and module.in_channels != channels):
                        reason = reason or f"grouped conv {name} is fed through a concat or slice"
                    ties = math.lcm(ties, module.groups)
            flops += _flops_per_channel(module, is_out, shapes.get(name, ()))
            if is_out and isinstance(module, PRUNABLE_TYPES) and not _feeds_own_bn(graph, module, items):
                own = _out_channels(module)
                if sorted(idxs) != list(range(own)):
                    reason = reason or f"the outputs of {name} are split over several groups"
                else:  # (a concat's branch holds a slice of the group's channels)
                    points[name] = tuple(r for _, r in sorted(zip(idxs, root_idxs)))
        if not reason and (channels % ties or not points):
            reason = "no layer to gate" if not points else f"{channels} channels do not split into {ties} conv groups"
        if reason:
            fixed.append(FixedGroup(root, channels, reason))
            continue
        out_shape = shapes.get(next(iter(points)), (channels,))
        gated.append(GateGroup(root, channels, ties, tuple(points.items()), tuple(dict.fromkeys(members)),
                               math.prod(out_shape[1:]) if len(out_shape) > 1 else 1, flops))
    from vib_deploy.nets import count_flops

    return GroupPlan(gated, fixed, count_flops(net, tuple(input_shape)))


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, _BN):
        return module.num_features
    return module.out_channels  # type: ignore[return-value]


def _feeds_own_bn(graph: tp.DependencyGraph, module: nn.Module, items: list[tuple[Any, Any, list[int], list[int]]]) -> bool:
    """A conv/linear whose only consumer is a BN of the same group: the BN's output is gated instead."""
    if not isinstance(module, _WEIGHTED):
        return False
    outputs = graph.module2node[module].outputs
    group_modules = {id(m) for m, _, _, _ in items}
    return len(outputs) == 1 and isinstance(outputs[0].module, _BN) and id(outputs[0].module) in group_modules


def _multiply_output(module: nn.Module, inputs: Any, output: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return output * z.reshape(z.shape + (1,) * (output.dim() - z.dim()))  # (B|1, C) -> (B|1, C, 1, 1)


class GatedNet(nn.Module):
    """A user's net with one VIBGate per group, multiplying the outputs of the group's gate points.

    Hooks are attached for the length of one forward only, so the net stays a plain module
    (deep-copyable, state_dict = net.* + gates.*) and every point of a group sees the same z.
    """

    def __init__(self, net: nn.Module, groups: Sequence[GateGroup], threshold: float = 0.0):
        super().__init__()
        self.net = net
        self.groups = list(groups)
        # KL weighted as the paper's conv gates: kl_mult 1/S, map_size S*S on an S x S map (Linear: 1, 1),
        # times the channels each unit stands for
        self.gates = nn.ModuleList(
            VIBGate(g.units, kl_mult=g.ties / math.sqrt(g.map_size), map_size=g.map_size, threshold=threshold)
            for g in self.groups)

    def channel_scales(self, like: torch.Tensor) -> list[torch.Tensor]:
        """Per group, z over its channels: (B|1, channels), unit i % units for channel i."""
        return [gate.sample(like).repeat(1, g.ties) for gate, g in zip(self.gates, self.groups)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        handles = [self.net.get_submodule(point).register_forward_hook(partial(_multiply_output, z=z[:, list(index)]))
                   for g, z in zip(self.groups, self.channel_scales(x)) for point, index in g.points]
        try:
            return self.net(x)
        finally:
            for h in handles:
                h.remove()

    def keep_masks(self) -> list[torch.Tensor]:
        """Per group, the kept channels (bool over `channels`)."""
        return [gate.keep_mask().repeat(g.ties) for gate, g in zip(self.gates, self.groups)]


def _scale_outputs(module: nn.Module, z: torch.Tensor) -> None:
    """Fold z into `module`'s output channels: module(x) * z == module'(x)."""
    if isinstance(module, _BN):
        if module.weight is None or module.bias is None:
            raise UserError(f"BatchNorm {module} has affine=False: its gate cannot be folded")
        module.weight.data *= z
        module.bias.data *= z
        return
    assert isinstance(module, _WEIGHTED)
    module.weight.data *= z.reshape((-1,) + (1,) * (module.weight.dim() - 1))
    if module.bias is not None:
        module.bias.data *= z


def apply_pruning(net: nn.Module, record: Sequence[dict[str, Any]], input_shape: Sequence[int]) -> nn.Module:
    """Remove channels as listed in `record` ([{root, dead}], in order) with one DependencyGraph, in place."""
    if not record:
        return net
    graph = dependency_graph(net, input_shape, next(net.parameters()).dtype)
    for step in record:
        root = net.get_submodule(step["root"])
        pruner = graph.get_pruner_of_module(root)
        graph.get_pruning_group(root, pruner.prune_out_channels, idxs=list(step["dead"])).prune()
    return net


def prune_gated_net(gated: GatedNet, input_shape: Sequence[int]) -> tuple[PruneResult, list[dict[str, Any]]]:
    """Fold each group's inference z into its gate points, then remove the dead channels, in float64.

    Returns the pruned plain net (float64, eval) with the kept channels per group, and the pruning record
    ([{root, dead}], in order) that `apply_pruning` replays on a fresh net to rebuild its shapes.
    """
    work = copy.deepcopy(gated).cpu().double().eval()
    net = work.net
    masks = work.keep_masks()
    with torch.no_grad():
        for g, z, mask in zip(work.groups, work.channel_scales(torch.zeros(1, dtype=torch.float64)), masks):
            if not bool(mask.any()):
                raise UserError(f"pruning would delete a whole group: the {g.channels} channels of {g.root} are all "
                                "gated off; lower train.vib.kl_factor")
            for point, index in g.points:
                _scale_outputs(net.get_submodule(point), z[0, list(index)])
    for g, mask in zip(work.groups, masks):
        for _, index in g.points:  # a concat branch whose channels all died keeps one, an exact zero
            if not bool(mask[list(index)].any()):
                mask[index[0]] = True
    record = [{"root": g.root, "dead": torch.nonzero(~m).flatten().tolist()} for g, m in zip(work.groups, masks)]
    record = [r for r in record if r["dead"]]
    apply_pruning(net, record, input_shape)
    kept = [torch.nonzero(m).flatten().tolist() for m in masks]
    return PruneResult(net.eval(), None, None, kept, 0), record


SELF_CHECK_TOLERANCE = 1e-9  # float64, relative to the logit scale: pruning is algebra, not approximation


def _random_gates(gated: GatedNet, generator: torch.Generator) -> None:
    """Gate values of both signs, about half the units of every gate off (at least one kept)."""
    with torch.no_grad():
        for gate in gated.gates:
            gate.mu.copy_(torch.rand(gate.units, generator=generator) * 3 - 1.5)
            off = torch.rand(gate.units, generator=generator) < 0.5
            off[int(torch.randint(gate.units, (1,), generator=generator))] = False
            gate.logD.copy_(torch.where(off, 20.0, -20.0))


def check_prunable(net: nn.Module, plan: GroupPlan, input_shape: Sequence[int], seed: int = 0) -> float:
    """Prune a copy of `net` with random gates (half the channels of every group off) and compare in float64.

    Returns max |Δ| / scale. Raises UserError naming the first group that cannot be removed exactly (an op
    between its layers that maps 0 to non-zero, such as a sigmoid, or a structure Torch-Pruning mis-prunes),
    so such a model fails before any training.
    """
    with torch.random.fork_rng():  # the gates' own init must not shift the caller's random stream
        return _check_prunable(net, plan, input_shape, seed)


def _check_prunable(net: nn.Module, plan: GroupPlan, input_shape: Sequence[int], seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((8,) + tuple(input_shape), generator=generator, dtype=torch.float64)

    def error_of(groups: Sequence[GateGroup]) -> float:
        gated = GatedNet(copy.deepcopy(net), groups).double().eval()
        _random_gates(gated, generator)
        try:
            result, _ = prune_gated_net(gated, input_shape)
            with torch.no_grad():
                reference = gated(x)
                return float((result.model(x) - reference).abs().max() / max(1.0, float(reference.abs().max())))
        except UserError:
            raise
        except Exception:  # a group Torch-Pruning cannot cut consistently
            return math.inf

    worst = error_of(plan.gated)
    if worst <= SELF_CHECK_TOLERANCE:
        return worst
    for group in plan.gated:  # name the culprit
        if not error_of([group]) <= SELF_CHECK_TOLERANCE:
            raise UserError(f"the channel group of {group.root} ({', '.join(group.members[:6])}) cannot be pruned exactly: "
                            "removing its channels changes the output (an operation between these layers maps 0 to "
                            f"non-zero, e.g. a sigmoid); list {group.root} under model.ignore to leave it unpruned")
    raise UserError(f"pruning the model's groups together changes its output (max |Δ| {worst:.3g} x scale) though each "
                    "group alone is exact; this is a bug, please report it with your model")


def describe_plan(plan: GroupPlan) -> list[dict[str, Any]]:
    """One row per group (gated first, then fixed) for `vib-deploy inspect`."""
    rows: list[dict[str, Any]] = []
    for g in plan.gated:
        rows.append({"group (root)": g.root, "channels": g.channels, "gate units": g.units, "gate points": len(g.points),
                     "layers": len(g.members), "KFLOPs/ch": g.flops_per_channel / 1e3,
                     "% FLOPs": 100.0 * g.flops_per_channel * g.channels / max(plan.flops, 1), "status": "gated"})
    for f in plan.fixed:
        rows.append({"group (root)": f.root, "channels": f.channels, "gate units": 0, "gate points": 0, "layers": 0,
                     "KFLOPs/ch": 0.0, "% FLOPs": 0.0, "status": f"fixed: {f.reason}"})
    return rows
