"""Where a pipeline's network comes from, and how each kind is gated, pruned, saved and loaded.

Two kinds, one interface (`ModelSource`) for the stages:
- `SequentialSource`: the paper's LeNets (vib_deploy/zoo/lenet.py), gated Sequentials with the gates
  where the paper puts them (input pixels, after each ReLU), pruned by `prune.prune_gated`.
- `ModuleSource`: any nn.Module from a factory — a zoo net (ResNet-20/56, MobileNet, VGG-16) or a
  user's `path/to/file.py:function` / `package.module:function` — gated on Torch-Pruning's groups
  and pruned by `graph.prune_gated_net`.

A module model file stores the factory, its kwargs, the input shape, the pruning record and the gate
groups next to the state_dict; `load_model` rebuilds the net from the factory, replays the pruning and
loads the weights with `torch.load(weights_only=True)`. Loading runs the factory's code: the user's own.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from vib_deploy.errors import UserError

MNIST_SHAPE = (1, 28, 28)

# zoo nets that are plain modules (gates found by the dependency graph), by factory reference
MODULE_ZOO = {
    "resnet20": "vib_deploy.zoo.resnet:resnet20",
    "resnet56": "vib_deploy.zoo.resnet:resnet56",
    "mobilenet": "vib_deploy.zoo.mobilenet:mobilenet_small",
    "vgg16": "vib_deploy.zoo.vgg:vgg16",
}
SEQUENTIAL_ZOO = ("lenet300", "lenet5")
MIN_SIDE = {"vgg16": 32}  # five 2x2 max-pools: 28x28 inputs run out of pixels


def _is_file_ref(module_part: str) -> bool:
    return module_part.endswith(".py") or "/" in module_part or "\\" in module_part


def resolve_factory(ref: str) -> Callable[..., Any]:
    """`path/to/file.py:function` or `package.module:function` -> the function; clear errors otherwise."""
    if ref.count(":") != 1 or not all(ref.split(":")):
        raise UserError(f"model.factory {ref!r}: expected 'path/to/file.py:function' or 'package.module:function'")
    module_part, func_name = ref.split(":")
    try:
        if _is_file_ref(module_part):
            path = Path(module_part).expanduser().resolve()
            if not path.is_file():
                raise UserError(f"model.factory {ref!r}: file {module_part} not found")
            name = "vib_deploy_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses/pickling inside the user's file look themselves up here
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_part)
    except UserError:
        raise
    except Exception as e:  # the user's file: SyntaxError, ImportError, anything at import time
        raise UserError(f"model.factory {ref!r}: importing {module_part} failed: {type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''}") from e
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UserError(f"model.factory {ref!r}: {module_part} has no function {func_name!r}")
    return func


def build_net(ref: str, kwargs: dict[str, Any]) -> nn.Module:
    """Call the factory; it must return an nn.Module."""
    func = resolve_factory(ref)
    try:
        net = func(**kwargs)
    except Exception as e:
        raise UserError(f"model.factory {ref!r} raised {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from e
    if not isinstance(net, nn.Module):
        raise UserError(f"model.factory {ref!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def factory_digest(ref: str) -> str | None:
    """sha256 of a file factory's source (so a changed model file retrains), None for package references."""
    module_part = ref.split(":")[0]
    if _is_file_ref(module_part) and Path(module_part).is_file():
        return hashlib.sha256(Path(module_part).read_bytes()).hexdigest()
    return None


class SequentialSource:
    """The paper's LeNets: gated Sequentials from the zoo."""

    def __init__(self, name: str):
        self.name = name
        self.input_shape = MNIST_SHAPE

    def dense(self) -> nn.Module:
        from vib_deploy.zoo import gated_model, strip_gates

        return strip_gates(gated_model(self.name))

    def check(self, dense: nn.Module, classes: int = 10) -> None:
        """The zoo LeNets are pruned by prune.prune_gated, whose result the prune stage checks."""

    def gated(self, dense: nn.Module, threshold: float) -> nn.Module:
        from vib_deploy.vib import gates
        from vib_deploy.zoo import gated_model, load_dense_into_gated

        model = gated_model(self.name)
        for gate in gates(model):
            gate.threshold = threshold
        assert isinstance(dense, nn.Sequential)
        load_dense_into_gated(dense, model)
        return model

    def architecture(self, gated: nn.Module) -> list[int]:
        from vib_deploy.zoo import architecture

        assert isinstance(gated, nn.Sequential)
        return architecture(gated)

    def prune(self, vib_model: nn.Module) -> tuple[Any, dict[str, Any]]:
        from vib_deploy.prune.sequential import prune_gated

        assert isinstance(vib_model, nn.Sequential)
        result = prune_gated(vib_model, self.input_shape)
        return result, {"kept_pixels": result.kept_pixels}

    def save(self, model: nn.Module, path: Path, extra: dict[str, Any] | None = None, **_: Any) -> None:
        from vib_deploy.layers import save_model

        assert isinstance(model, nn.Sequential)
        save_model(model, path, extra)


class ModuleSource:
    """Any nn.Module from a factory, gated on its Torch-Pruning groups."""

    def __init__(self, factory: str, kwargs: dict[str, Any], input_shape: Sequence[int], ignore: Sequence[str] = ()):
        self.factory = factory
        self.kwargs = dict(kwargs)
        self.input_shape = tuple(input_shape)
        self.ignore = list(ignore)

    def dense(self) -> nn.Module:
        return build_net(self.factory, self.kwargs)

    def plan(self, net: nn.Module | None = None) -> Any:
        from vib_deploy.graph import plan_groups

        return plan_groups(net if net is not None else self.dense(), self.input_shape, self.ignore)

    def check(self, dense: nn.Module, classes: int = 10) -> None:
        """Fail now, before any training, if the model does not fit the data or cannot be pruned exactly."""
        from vib_deploy.graph import check_prunable

        plan = self.plan(dense)
        if plan.classes != classes:
            raise UserError(f"model.factory {self.factory!r}: the model gives {plan.classes} logits but the data has "
                            f"{classes} classes (pass num_classes through model.kwargs?)")
        check_prunable(dense, plan, self.input_shape)

    def gated(self, dense: nn.Module, threshold: float) -> nn.Module:
        from vib_deploy.graph import GatedNet

        plan = self.plan(dense)
        if not plan.gated:
            raise UserError(f"model.factory {self.factory!r}: no prunable channel group found "
                            f"({'; '.join(f'{f.root}: {f.reason}' for f in plan.fixed) or 'no Conv/Linear layers'})")
        return GatedNet(dense, plan.gated, threshold)

    def architecture(self, gated: nn.Module) -> list[int]:
        from vib_deploy.graph import GatedNet

        assert isinstance(gated, GatedNet)
        return [g.channels for g in gated.groups]

    def prune(self, vib_model: nn.Module) -> tuple[Any, dict[str, Any]]:
        from vib_deploy.graph import GatedNet, prune_gated_net

        assert isinstance(vib_model, GatedNet)
        result, record = prune_gated_net(vib_model, self.input_shape)
        return result, {"kept_pixels": None, "pruning": record}

    def save(self, model: nn.Module, path: Path, extra: dict[str, Any] | None = None,
             pruning: list[dict[str, Any]] | None = None) -> None:
        """Save factory + pruning record + gate groups + weights atomically (loadable by `load_model`)."""
        from vib_deploy.graph import GatedNet
        from vib_deploy.layers import to_bytes
        from vib_deploy.runs import atomic_write_bytes

        gated = model if isinstance(model, GatedNet) else None
        assert not (gated and pruning), "a gated net is saved before pruning"
        module_part = self.factory.split(":")[0]
        spec = {
            "factory": self.factory,
            "factory_path": str(Path(module_part).resolve()) if _is_file_ref(module_part) else None,
            "kwargs": self.kwargs, "input_shape": list(self.input_shape), "pruning": pruning or [],
            "gates": [g.to_json() for g in gated.groups] if gated else None,
            "threshold": float(gated.gates[0].threshold) if gated and len(gated.gates) else 0.0,
        }
        payload = {"module": spec, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                   "extra": extra or {}}
        atomic_write_bytes(path, to_bytes(payload))


def load_module_model(spec: dict[str, Any], state_dict: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """Rebuild a saved module model: factory -> replay pruning -> gates -> weights."""
    from vib_deploy.graph import GateGroup, GatedNet, apply_pruning

    factory = spec["factory"]
    module_part, func = factory.split(":")
    if spec.get("factory_path") and not Path(module_part).is_file() and Path(spec["factory_path"]).is_file():
        factory = f"{spec['factory_path']}:{func}"  # loaded from another working directory
    net = build_net(factory, spec["kwargs"])
    apply_pruning(net, spec["pruning"], spec["input_shape"])
    model: nn.Module = net
    if spec["gates"] is not None:
        model = GatedNet(net, [GateGroup.from_json(g) for g in spec["gates"]], spec["threshold"])
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match the model its factory {factory!r} builds "
                        f"({str(e).splitlines()[0][:200]}); was the model file changed?") from e
    return model.eval()


def model_source(config: Any) -> SequentialSource | ModuleSource:
    """The source of `config.model` (a PipelineConfig's model section, already validated)."""
    m = config.model
    data_shape = data_input_shape(config)
    if m.name in SEQUENTIAL_ZOO:
        if data_shape != MNIST_SHAPE:
            raise UserError(f"model {m.name} takes 28x28 images; remove data.pad")
        return SequentialSource(m.name)
    if m.name in MIN_SIDE and data_shape[1] < MIN_SIDE[m.name]:
        raise UserError(f"model {m.name} takes images of at least {MIN_SIDE[m.name]}x{MIN_SIDE[m.name]}; "
                        f"set data.pad: {(MIN_SIDE[m.name] - 28 + 1) // 2} (28x28 + zero border)")
    factory = MODULE_ZOO[m.name] if m.name else m.factory
    shape = tuple(m.input_shape) if m.input_shape else data_shape
    if shape != data_shape:
        raise UserError(f"model.input_shape {list(shape)} does not match the data's images {list(data_shape)} "
                        f"({config.data.dataset}, data.pad={config.data.pad})")
    return ModuleSource(factory, m.kwargs, shape, m.ignore)


def data_input_shape(config: Any) -> tuple[int, int, int]:
    side = 28 + 2 * config.data.pad
    return (1, side, side)


def inspect_model(model: str, input_shape: Sequence[int], ignore: Sequence[str], kwargs: Sequence[str]) -> dict[str, Any]:
    """Groups, gates, FLOPs and the exactness self-check of a factory or zoo model (for `vib-deploy inspect`)."""
    import yaml

    from vib_deploy.graph import check_prunable, describe_plan, plan_groups
    from vib_deploy.layers import count_params

    if model.endswith((".yaml", ".yml")):  # a pipeline file: its model section and the data's image shape
        from vib_deploy.config import load_config

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
    error = check_prunable(net, plan, input_shape)
    return {"model": ref, "input_shape": list(input_shape), "flops": plan.flops, "params": count_params(net),
            "rows": describe_plan(plan), "self_check": error}


def print_inspection(info: dict[str, Any]) -> None:
    """The inspection as a rich table, fixed groups' reasons below it."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{info['model']}  input {info['input_shape']}: {info['flops'] / 1e6:,.3f} MFLOPs, "
                        f"{info['params']:,} parameters")
    for name in info["rows"][0] if info["rows"] else []:
        table.add_column(name, justify="left" if name in ("group (root)", "status") else "right")
    for row in info["rows"]:
        status = "fixed" if row["status"].startswith("fixed") else row["status"]
        table.add_row(*(f"{v:,.1f}" if isinstance(v, float) else str(v) for v in list(row.values())[:-1]), status)
    console.print(table)
    for row in info["rows"]:
        if row["status"].startswith("fixed"):
            console.print(f"  {row['group (root)']}: {row['status']}")
    console.print(f"exact-pruning self-check (random gates, float64): max |Δ| = {info['self_check']:.2g} x scale, ok")
    console.print("gate: groups tied through a grouped conv share one; gate points: layers whose outputs it multiplies; "
                  "% FLOPs: share of the dense net's FLOPs that the group's channels touch (groups overlap)")
