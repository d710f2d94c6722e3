"""Model files: the two formats vib-deploy saves, and `load_model`, which loads either.

- Sequential format (the paper's LeNets and the peers): `{"layers": spec, "state_dict", "extra"}`; the layer
  specs (layers.py) rebuild the net, no code of the user's is run.
- Module format (any nn.Module from a factory): `{"module": {factory, kwargs, input_shape, pruning, gates,
  threshold}, "state_dict", "extra"}`; the factory rebuilds the net, the pruning record is replayed
  (prune/groups.py), the gates are put back (graph.py). Loading runs the factory's code: the user's own.

Both are read with `torch.load(weights_only=True)` and written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from vib_deploy.errors import UserError, first_line
from vib_deploy.model.factory import build_net, is_file_ref
from vib_deploy.model.layers import build, describe
from vib_deploy.model.vib import VIBGate
from vib_deploy.runs.directory import atomic_write_bytes
from vib_deploy.runs.files import to_bytes


def save_model(model: nn.Sequential, path: Path, extra: dict[str, Any] | None = None) -> None:
    """Save architecture + weights (+ JSON-able extras) atomically, loadable with weights_only=True."""
    payload = {
        "layers": describe(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    atomic_write_bytes(path, to_bytes(payload))


def load_payload(path: Path) -> dict[str, Any]:
    """The raw saved dict (weights_only: no code from the file is ever run)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/garbage files
        raise UserError(f"{path}: not a loadable vib-deploy model ({type(e).__name__}: {first_line(e)})") from e
    if not isinstance(payload, dict) or not ("layers" in payload or "module" in payload) or "state_dict" not in payload:
        raise UserError(f"{path}: not a vib-deploy model file (no layers/state_dict)")
    return payload


def load_model(path: str | Path) -> nn.Module:
    """Load a model saved by vib-deploy (dense, VIB or pruned) in eval mode, in any process.

    This is the one function a user's own code needs: `from vib_deploy.nets import load_model`.
    Zoo LeNets come back as Sequentials; factory-built nets are rebuilt by their factory (`load_module_model`).
    """
    path = Path(path)
    payload = load_payload(path)
    if "module" in payload:
        return load_module_model(payload["module"], payload["state_dict"], path)
    try:
        model = build(payload["layers"])
    except UserError as e:
        raise UserError(f"{path}: {e}") from e
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match its architecture ({first_line(e)})") from e
    return model.eval()


def save_module_model(
    model: nn.Module,
    path: Path,
    factory: str,
    kwargs: dict[str, Any],
    input_shape: Sequence[int],
    extra: dict[str, Any] | None = None,
    pruning: list[dict[str, Any]] | None = None,
) -> None:
    """Save factory + pruning record + gate groups + weights atomically (loadable by `load_model`)."""
    from vib_deploy.model.gated import GatedNet  # torch_pruning: loaded for module-format files only

    gated = model if isinstance(model, GatedNet) else None
    assert not (gated and pruning), "a gated net is saved before pruning"
    module_part = factory.split(":")[0]
    spec = {
        "factory": factory,
        "factory_path": str(Path(module_part).resolve()) if is_file_ref(module_part) else None,
        "kwargs": kwargs,
        "input_shape": list(input_shape),
        "pruning": pruning or [],
        "gates": [g.to_json() for g in gated.groups] if gated else None,
        **({"branches": [b.to_json() for b in gated.branches]} if gated and gated.branches else {}),
        "threshold": float(cast(VIBGate, gated.gates[0]).threshold) if gated and len(gated.gates) else 0.0,
    }
    payload = {
        "module": spec,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    atomic_write_bytes(path, to_bytes(payload))


def load_module_model(spec: dict[str, Any], state_dict: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """Rebuild a saved module model: factory -> replay pruning -> gates -> weights."""
    from vib_deploy.model.branches import Branch
    from vib_deploy.model.gated import GatedNet  # torch_pruning: loaded for module-format files only
    from vib_deploy.model.graph import GateGroup
    from vib_deploy.prune.groups import apply_pruning

    factory = spec["factory"]
    module_part, func = factory.split(":")
    if spec.get("factory_path") and not Path(module_part).is_file() and Path(spec["factory_path"]).is_file():
        factory = f"{spec['factory_path']}:{func}"  # loaded from another working directory
    net = build_net(factory, spec["kwargs"])
    apply_pruning(net, spec["pruning"], spec["input_shape"])
    model: nn.Module = net
    if spec["gates"] is not None:
        branches = [Branch.from_json(b) for b in spec.get("branches", [])]
        model = GatedNet(net, [GateGroup.from_json(g) for g in spec["gates"]], spec["threshold"], branches)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise UserError(
            f"{path}: weights do not match the model its factory {factory!r} builds "
            f"({first_line(e)}); was the model file changed?"
        ) from e
    return model.eval()
