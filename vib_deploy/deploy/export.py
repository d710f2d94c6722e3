"""ONNX export (torch.export-based exporter, dynamic batch axis), full checker pass, and numeric parity
against the torch model on real data through ONNX Runtime."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.runs.directory import atomic_write

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(
    model: nn.Module, path: Path, input_shape: tuple[int, ...], opset: int, metadata: dict[str, str] | None = None
) -> None:
    """Export `model` to `path` atomically with a dynamic batch axis and run onnx.checker (full check)."""
    import onnx

    model = model.cpu().eval()
    example = torch.zeros((2,) + tuple(input_shape))

    def write(tmp: Path) -> None:
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), _one_torchlib_registry():
                program = torch.onnx.export(
                    model,
                    (example,),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),  # positional: any forward arg name
                    opset_version=opset,
                    dynamo=True,
                    verbose=False,
                )
        except Exception as e:  # torch.onnx wraps the real reason (torch.export's) as the cause
            raise UserError(f"ONNX export of {path.name} failed: {_first_line(e.__cause__ or e)}") from e
        assert program is not None
        proto = program.model_proto
        for key, value in (metadata or {}).items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save_model(proto, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as e:
            raise UserError(f"ONNX checker rejected {path.name}: {_first_line(e)}") from e

    atomic_write(path, write)


_REGISTRIES: dict[int, Any] = {}


@contextlib.contextmanager
def _one_torchlib_registry() -> Iterator[None]:
    """torch.onnx.export (dynamo) builds its ATen -> ONNX registry from torchlib on every call (~0.3-0.6 s here,
    three exports a run); an export without a custom_translation_table only reads it, so inside this block one
    registry per opset serves every export of the process. Where torch's layout differs, nothing is changed."""
    try:
        from torch.onnx._internal.exporter import _constants, _registration
    except ImportError:
        yield
        return
    cls = _registration.ONNXRegistry
    original = cls.__dict__.get("from_torchlib")
    if not isinstance(original, classmethod):
        yield
        return
    build = original.__func__

    def shared(registry_cls: Any, opset_version: int = _constants.TORCHLIB_OPSET) -> Any:
        if opset_version not in _REGISTRIES:
            _REGISTRIES[opset_version] = build(registry_cls, opset_version=opset_version)
        return _REGISTRIES[opset_version]

    cls.from_torchlib = classmethod(shared)  # type: ignore[method-assign]
    try:
        yield
    finally:
        cls.from_torchlib = original  # type: ignore[method-assign]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400]


def onnx_summary(path: Path) -> dict[str, Any]:
    """Opset, input/output names and shapes (symbolic dims as names), and metadata of an ONNX file."""
    import onnx

    model = onnx.load(str(path))

    def dims(value: Any) -> list[Any]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": {i.name: dims(i) for i in model.graph.input},
        "outputs": {o.name: dims(o) for o in model.graph.output},
        "metadata": {p.key: p.value for p in model.metadata_props},
        "ops": sorted({n.op_type for n in model.graph.node}),
    }


def parity(
    onnx_path: Path,
    model: nn.Module,
    x: np.ndarray,
    tolerance: float,
    min_agreement: float,
    batch: int = 1000,
    backend: str = "onnxruntime",
) -> dict[str, Any]:
    """An engine (ONNX Runtime by default; any backend that loads `onnx_path`) vs torch on all of `x`:
    max |Δlogit| and argmax agreement, enforced."""
    from vib_deploy.backends import get_backend

    runner = get_backend(backend)(onnx_path, threads=2).activate()
    model = model.cpu().eval()
    worst, agree = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = np.ascontiguousarray(x[i : i + batch], dtype=np.float32)
            ref = model(torch.from_numpy(xb)).numpy()
            got = runner.infer(xb)
            worst = max(worst, float(np.abs(ref - got).max()))
            agree += int((ref.argmax(1) == got.argmax(1)).sum())
    runner.deactivate()
    result = {"max_abs_diff": worst, "argmax_agreement": agree / len(x), "samples": len(x), "tolerance": tolerance}
    if not worst <= tolerance or result["argmax_agreement"] < min_agreement:
        engine = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}.get(backend, backend)
        raise UserError(
            f"{onnx_path.name}: {engine} differs from torch by {worst:.3g} (tolerance {tolerance:g}), "
            f"argmax agreement {result['argmax_agreement']:.4%} (minimum {min_agreement:.2%})"
        )
    return result
