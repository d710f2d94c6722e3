"""Where a pipeline's network comes from, and how each kind is gated, pruned, saved and loaded.

Two kinds, one interface (`ModelSource`) for the stages:
- `SequentialSource`: the paper's LeNets (vib_deploy/zoo/lenet.py), gated Sequentials with the gates
  where the paper puts them (input pixels, after each ReLU), pruned by `prune.sequential.prune_sequential`.
- `ModuleSource`: any nn.Module from a factory — a zoo net (ResNet-20/56, MobileNet, VGG-16) or a
  user's `path/to/file.py:function` / `package.module:function` — gated on Torch-Pruning's groups
  and pruned by `prune.groups.prune_groups`.

Each kind saves in its own format; `nets.load_model` loads either.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from vib_deploy.config import load_config
from vib_deploy.errors import UserError
from vib_deploy.model.branches import Branch, plan_branches
from vib_deploy.model.factory import build_net
from vib_deploy.model.gated import GatedNet
from vib_deploy.model.graph import GroupPlan, plan_groups
from vib_deploy.model.layers import count_params
from vib_deploy.model.vib import gates
from vib_deploy.model.zoo_names import MODULE_ZOO, SEQUENTIAL_ZOO
from vib_deploy.nets import save_model, save_module_model
from vib_deploy.prune.groups import check_prunable, prune_groups
from vib_deploy.prune.result import PruneResult
from vib_deploy.prune.sequential import prune_sequential
from vib_deploy.zoo import architecture, gated_model, load_dense_into_gated, strip_gates

MNIST_SHAPE = (1, 28, 28)

MIN_SIDE = {"vgg16": 32}  # five 2x2 max-pools: 28x28 inputs run out of pixels


class SequentialSource:
    """The paper's LeNets: gated Sequentials from the zoo."""

    def __init__(self, name: str):
        self.name = name
        self.input_shape = MNIST_SHAPE

    def dense(self) -> nn.Module:
        return strip_gates(gated_model(self.name))

    def check(self, dense: nn.Module, classes: int = 10) -> None:
        """The zoo LeNets are pruned by prune_sequential, whose result the prune stage checks."""

    def gated(self, dense: nn.Module, threshold: float) -> nn.Module:
        model = gated_model(self.name)
        for gate in gates(model):
            gate.threshold = threshold
        assert isinstance(dense, nn.Sequential)
        load_dense_into_gated(dense, model)
        return model

    def architecture(self, gated: nn.Module) -> list[int]:
        assert isinstance(gated, nn.Sequential)
        return architecture(gated)

    def prune(self, vib_model: nn.Module) -> tuple[PruneResult, dict[str, Any]]:
        assert isinstance(vib_model, nn.Sequential)
        result = prune_sequential(vib_model, self.input_shape)
        return result, {"kept_pixels": result.kept_pixels}

    def save(self, model: nn.Module, path: Path, extra: dict[str, Any] | None = None, **_: Any) -> None:
        assert isinstance(model, nn.Sequential)
        save_model(model, path, extra)


class ModuleSource:
    """Any nn.Module from a factory, gated on its Torch-Pruning groups."""

    def __init__(
        self,
        factory: str,
        kwargs: dict[str, Any],
        input_shape: Sequence[int],
        ignore: Sequence[str] = (),
        depth_gates: bool = False,
    ):
        self.factory = factory
        self.kwargs = dict(kwargs)
        self.input_shape = tuple(input_shape)
        self.ignore = list(ignore)
        self.depth_gates = depth_gates

    def dense(self) -> nn.Module:
        return build_net(self.factory, self.kwargs)

    def plan(self, net: nn.Module | None = None) -> GroupPlan:
        return plan_groups(net if net is not None else self.dense(), self.input_shape, self.ignore)

    def branches(self, net: nn.Module) -> list[Branch]:
        """The residual branches that get a depth gate (none unless model.depth_gates)."""
        return plan_branches(net, self.input_shape, self.ignore) if self.depth_gates else []

    def check(self, dense: nn.Module, classes: int = 10) -> None:
        """Fail now, before any training, if the model does not fit the data or cannot be pruned exactly."""
        plan = self.plan(dense)
        if plan.classes != classes:
            raise UserError(
                f"model.factory {self.factory!r}: the model gives {plan.classes} logits but the data has "
                f"{classes} classes (pass num_classes through model.kwargs?)"
            )
        check_prunable(dense, plan, self.input_shape, branches=self.branches(dense))

    def gated(self, dense: nn.Module, threshold: float) -> nn.Module:
        plan = self.plan(dense)
        if not plan.gated:
            raise UserError(
                f"model.factory {self.factory!r}: no prunable channel group found "
                f"({'; '.join(f'{f.root}: {f.reason}' for f in plan.fixed) or 'no Conv/Linear layers'})"
            )
        return GatedNet(dense, plan.gated, threshold, self.branches(dense))

    def architecture(self, gated: nn.Module) -> list[int]:
        assert isinstance(gated, GatedNet)
        return [g.channels for g in gated.groups]

    def prune(self, vib_model: nn.Module) -> tuple[PruneResult, dict[str, Any]]:
        assert isinstance(vib_model, GatedNet)
        result, record = prune_groups(vib_model, self.input_shape)
        return result, {"kept_pixels": None, "pruning": record}

    def save(
        self,
        model: nn.Module,
        path: Path,
        extra: dict[str, Any] | None = None,
        pruning: list[dict[str, Any]] | None = None,
    ) -> None:
        """Save factory + pruning record + gate groups + weights atomically (loadable by `load_model`)."""
        save_module_model(model, path, self.factory, self.kwargs, self.input_shape, extra, pruning)


def model_source(config: Any) -> SequentialSource | ModuleSource:
    """The source of `config.model` (a PipelineConfig's model section, already validated)."""
    from vib_deploy.data.datasets import class_names, image_shape

    m = config.model
    data_shape = image_shape(config.data)
    if m.name in SEQUENTIAL_ZOO:
        if data_shape != MNIST_SHAPE:
            raise UserError(
                f"model {m.name} takes 1x28x28 images, the data's are {'x'.join(map(str, data_shape))}; "
                "remove data.pad, or use a conv net (resnet20, mobilenet, vgg16) or your own"
            )
        if len(class_names(config.data)) != 10:
            raise UserError(f"model {m.name} has 10 outputs, the data has {len(class_names(config.data))} classes")
        return SequentialSource(m.name)
    if m.name in MIN_SIDE and data_shape[1] < MIN_SIDE[m.name]:
        raise UserError(
            f"model {m.name} takes images of at least {MIN_SIDE[m.name]}x{MIN_SIDE[m.name]}; "
            f"set data.pad: {(MIN_SIDE[m.name] - 28 + 1) // 2} (28x28 + zero border)"
        )
    factory = MODULE_ZOO[m.name] if m.name else m.factory
    shape = tuple(m.input_shape) if m.input_shape else data_shape
    if shape != data_shape:
        raise UserError(
            f"model.input_shape {list(shape)} does not match the data's images {list(data_shape)} "
            f"({config.data.dataset}, data.pad={config.data.pad})"
        )
    kwargs = dict(m.kwargs)
    if m.name:  # a zoo net is built for the data's channels and classes (stated only where not the default)
        classes = len(class_names(config.data))
        kwargs = {
            **({"in_channels": shape[0]} if shape[0] != 1 else {}),
            **({"num_classes": classes} if classes != 10 else {}),
            **kwargs,
        }
    return ModuleSource(factory, kwargs, shape, m.ignore, m.depth_gates)


def inspect_model(
    model: str, input_shape: Sequence[int], ignore: Sequence[str], kwargs: Sequence[str]
) -> dict[str, Any]:
    """Groups, gates, FLOPs and the exactness self-check of a factory or zoo model (for `vib-deploy inspect`)."""
    if model.endswith((".yaml", ".yml")):  # a pipeline file: its model section and the data's image shape
        source = model_source(load_config(Path(model)))
        if isinstance(source, SequentialSource):
            model = source.name
        else:
            model, input_shape, ignore = source.factory, source.input_shape, source.ignore
            kwargs = [f"{k}={v}" for k, v in source.kwargs.items()] + list(kwargs)
    if len(input_shape) != 3:
        raise UserError(f"--input-shape: expected C,H,W, got {','.join(map(str, input_shape))}")
    if model in SEQUENTIAL_ZOO:
        raise UserError(f"{model} is gated where the paper puts its gates (see vib_deploy/zoo/lenet.py), not by groups")
    parsed: dict[str, Any] = {}
    for item in kwargs:
        if "=" not in item:
            raise UserError(f"--kwarg {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        parsed[key.strip()] = yaml.safe_load(raw)
    ref = MODULE_ZOO.get(model, model)
    net = build_net(ref, parsed)
    plan = plan_groups(net, input_shape, ignore)
    branches = plan_branches(net, input_shape, ignore)
    error = check_prunable(net, plan, input_shape, branches=branches)
    return {
        "model": ref,
        "input_shape": list(input_shape),
        "flops": plan.flops,
        "params": count_params(net),
        "rows": describe_plan(plan),
        "branches": [
            {
                "output": b.output,
                "layers": len(b.modules),
                "shortcut": ", ".join(b.shortcut) or "identity",
                "flops": b.flops,
            }
            for b in branches
        ],
        "self_check": error,
    }


def describe_plan(plan: GroupPlan) -> list[dict[str, Any]]:
    """One row per group (gated first, then fixed) for `vib-deploy inspect`."""
    rows: list[dict[str, Any]] = []
    for g in plan.gated:
        rows.append(
            {
                "group (root)": g.root,
                "channels": g.channels,
                "gate": g.gate,
                "gate units": g.units,
                "gate points": len(g.points),
                "layers": len(g.members),
                "KFLOPs/ch": g.flops_per_channel / 1e3,
                "% FLOPs": 100.0 * g.flops_per_channel * g.channels / max(plan.flops, 1),
                "status": "gated",
            }
        )
    for f in plan.fixed:
        rows.append(
            {
                "group (root)": f.root,
                "channels": f.channels,
                "gate": "-",
                "gate units": 0,
                "gate points": 0,
                "layers": 0,
                "KFLOPs/ch": 0.0,
                "% FLOPs": 0.0,
                "status": f"fixed: {f.reason}",
            }
        )
    return rows


HEADERS = {
    "group (root)": "group (root)",
    "channels": "ch",
    "gate": "gate",
    "gate units": "units",
    "gate points": "pts",
    "layers": "layers",
    "KFLOPs/ch": "kFLOP/ch",
    "% FLOPs": "%FLOPs",
    "status": "status",
}
DROP_FIRST = (
    "layers",
    "gate points",
    "gate units",
    "KFLOPs/ch",
)  # left out, in this order, where the console is narrow


def _cell(key: str, value: Any) -> str:
    if key == "status":
        return "fixed" if str(value).startswith("fixed") else str(value)
    return f"{value:,.1f}" if isinstance(value, float) else str(value)


def inspection_table(info: dict[str, Any], console: Any) -> tuple[Any, list[str]]:
    """The groups as a rich table that fits `console` with group names never cut; and the columns left out."""
    from rich.measure import Measurement

    keys = list(info["rows"][0]) if info["rows"] else list(HEADERS)
    dropped: list[str] = []
    for key in DROP_FIRST:  # (measured without the title, which wraps)
        if (
            Measurement.get(console, console.options.update_width(10_000), _table(info, keys, "")).maximum
            <= console.width
        ):
            break
        keys.remove(key)
        dropped.append(HEADERS[key])
    title = f"{info['model']}  input {info['input_shape']}: {info['flops'] / 1e6:,.3f} MFLOPs, {info['params']:,} parameters"
    return _table(info, keys, title), dropped


def _table(info: dict[str, Any], keys: list[str], title: str) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, padding=(0, 1), title=title or None)
    name_width = max([len(HEADERS["group (root)"])] + [len(r["group (root)"]) for r in info["rows"]])
    for key in keys:
        table.add_column(
            HEADERS[key],
            justify="left" if key in ("group (root)", "status") else "right",
            no_wrap=True,
            min_width=name_width if key == "group (root)" else None,
        )
    for row in info["rows"]:
        table.add_row(*(_cell(k, row[k]) for k in keys))
    return table


def print_inspection(info: dict[str, Any], console: Any = None) -> None:
    """The inspection as a rich table (group names whole at any width), fixed groups' reasons below it."""
    from rich.console import Console

    console = console or Console()
    table, dropped = inspection_table(info, console)
    console.print(table)
    if dropped:
        console.print(f"(columns {', '.join(dropped)} left out: the console is {console.width} wide)")
    for row in info["rows"]:
        if row["status"].startswith("fixed"):
            console.print(f"  {row['group (root)']}: {row['status']}", overflow="fold")
    branches = info.get("branches", [])
    console.print(
        f"residual branches (model.depth_gates: true gates each; a branch switched off goes whole): {len(branches)}"
    )
    for b in branches:
        share = 100.0 * b["flops"] / max(info["flops"], 1)
        console.print(
            f"  {b['output']}: {b['layers']} layers, {b['flops'] / 1e6:,.3f} MFLOPs ({share:.1f}%), shortcut {b['shortcut']}",
            overflow="fold",
        )
    console.print(
        f"exact-pruning self-check (random gates and branch gates, float64): max |Δ| = {info['self_check']:.2g} x scale, ok"
    )
    console.print(
        "gate: groups tied through a grouped conv share one; pts: layers whose outputs it multiplies; "
        "%FLOPs: share of the dense net's FLOPs that the group's channels touch (groups overlap)"
    )
