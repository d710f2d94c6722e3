"""OpenVINO backend (CPU): ONNX or OpenVINO IR -> a compiled model, threads pinned like ONNX Runtime's.

`save_ir` turns an ONNX file into IR (`.xml` + `.bin`, fp32 weights: no fp16 compression) with a JSON
sidecar `<name>.xml.json` (OpenVINO version, CPU model and ISA flags, precision, input shapes, the ONNX
file's sha256) -- the CPU counterpart of a TensorRT plan and its sidecar. Loading IR whose sidecar names
another OpenVINO version is one clear error (`check_ir`). `openvino` is imported here only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vib_deploy.backends.base import Runner
from vib_deploy.errors import UserError
from vib_deploy.measure.machine import cpu_info
from vib_deploy.runs.sidecar import check_sidecar
from vib_deploy.runs.sidecar import sidecar_path as sidecar_path  # where cpu_deploy writes the IR's sidecar

INSTALL_HINT = "pip install openvino (2025.0 or later; wheels for Python 3.10-3.13)"
REMAKE = "remake it with `vib-deploy openvino RUN`"


def compile_properties(threads: int) -> dict[str, str]:
    """CPU properties matching the ONNX Runtime runner: `threads` intra-op threads, one stream, latency hint."""
    return {
        "INFERENCE_NUM_THREADS": str(threads),
        "NUM_STREAMS": "1",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }  # no bf16/fp16 kernels behind our back: fp32 means fp32


def openvino_version() -> str:
    import openvino as ov

    return ov.get_version()


def save_ir(onnx_path: Path, xml_path: Path, write: Any) -> dict[str, Any]:
    """Convert `onnx_path` to IR at `xml_path` (+ `.bin`) with fp32 weights; returns the sidecar record.

    `write(name, fn)` writes one artifact atomically (`fn(tmp_path)`), so the caller lists it in its manifest.
    """
    import openvino as ov

    from vib_deploy.runs.directory import sha256_file

    try:
        model = ov.Core().read_model(str(onnx_path))
    except Exception as e:  # OpenVINO raises RuntimeError subclasses with multi-line texts
        raise UserError(
            f"{onnx_path}: OpenVINO cannot read it ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})"
        ) from e
    lower_row_gathers(model)
    write_ir(model, xml_path, write)
    return {
        **ir_facts(model, "fp32"),
        "onnx": onnx_path.name,
        "onnx_sha256": sha256_file(onnx_path),
        "bin_sha256": sha256_file(xml_path.with_suffix(".bin")),
    }


def lower_row_gathers(model: Any) -> int:
    """Replace in `model` (an `ov.Model`) each GatherElements on axis 1 of a 2-D tensor whose indices are one constant
    row broadcast over the batch (how `PixelSelect` exports its kept pixels) by the Gather on axis 1 it equals:
    out[b, j] = x[b, kept[j]] either way, and OpenVINO's Gather is 1.4-1.7x faster at batch 64-256 (docs/cpu.md, "The
    kept-pixel Gather"). Returns how many it replaced."""
    import openvino as ov

    replaced = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "GatherElements" or op.get_attributes().get("axis") not in (1, -1):
            continue
        data, indices = op.input_value(0), op.input_value(1)
        broadcast = indices.get_node()
        if data.get_partial_shape().rank.get_length() != 2 or broadcast.get_type_name() != "Broadcast":
            continue
        row = broadcast.input_value(0).get_node()
        if row.get_type_name() != "Constant" or len(row.get_output_shape(0)) != 1:
            continue
        kept = row.get_data()
        width = indices.get_partial_shape()[1]
        if not width.is_static or width.get_length() != len(kept):  # a broadcast that widens the row is not one
            continue
        gather = ov.opset13.gather(data, ov.opset13.constant(kept.astype(np.int64)), ov.opset13.constant(np.int64(1)))
        for target in op.output(0).get_target_inputs():
            target.replace_source_output(gather.output(0))
        replaced += 1
    if replaced:
        model.validate_nodes_and_infer_types()
    return replaced


def write_ir(model: Any, xml_path: Path, write: Any) -> None:
    """An in-memory `ov.Model` as IR at `xml_path` (+ `.bin`, weights as they are: no fp16 compression), each file
    written by `write(name, fn)` (see `save_ir`)."""
    import tempfile

    import openvino as ov

    with tempfile.TemporaryDirectory(dir=xml_path.parent) as tmp:
        staged = Path(tmp) / "model.xml"
        ov.save_model(model, str(staged), compress_to_fp16=False)
        # the .bin first: IR whose .xml is present always has its weights beside it
        write(xml_path.with_suffix(".bin").name, lambda out: out.write_bytes(staged.with_suffix(".bin").read_bytes()))
        # the .xml names its weights file by offsets only (not by name), so renaming the pair is safe
        write(xml_path.name, lambda out: out.write_bytes(staged.read_bytes()))


def ir_facts(model: Any, precision: str) -> dict[str, Any]:
    """What an IR's sidecar says of every IR: OpenVINO version, CPU model and ISA flags, precision, input shapes."""
    shapes = {p.get_any_name(): str(p.get_partial_shape()) for p in model.inputs}
    return {"openvino_version": openvino_version(), **cpu_info(), "precision": precision, "input_shapes": shapes}


def check_ir(xml_path: Path) -> dict[str, Any]:
    """The IR's sidecar, after checking it names this OpenVINO version (else one UserError)."""
    fix = REMAKE + " (or install that version)"
    return check_sidecar(xml_path, [("openvino_version", "OpenVINO", openvino_version())], "made", fix, REMAKE)


class OpenVinoRunner(Runner):
    """Runs an ONNX file (converted in memory) or IR (`.xml`, sidecar checked) on OpenVINO's CPU plugin."""

    name = "openvino"
    bench_stage = True
    artifact_suffix = ".onnx"  # the bench times the same ONNX file as ONNX Runtime; `.xml` IR loads too

    @classmethod
    def unavailable(cls) -> str | None:
        try:  # imported, not just found: a wheel that cannot load (missing library, wrong Python) is as good as none
            import openvino  # noqa: F401
        except ImportError as e:
            return f"{INSTALL_HINT} ({type(e).__name__}: {e})"
        return None

    def activate_impl(self) -> None:
        import openvino as ov

        if self.path.suffix == ".xml":
            check_ir(self.path)
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
            lower_row_gathers(model)
            self.compiled = core.compile_model(model, "CPU", compile_properties(self.threads))
        except Exception as e:  # garbage files and unsupported ops surface as RuntimeError with long texts
            raise UserError(
                f"{self.path}: OpenVINO cannot load it ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})"
            ) from e
        self.request = self.compiled.create_infer_request()

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: x}, share_inputs=True)
        return np.array(self.request.get_output_tensor(0).data, copy=True)

    def deactivate_impl(self) -> None:
        del self.request, self.compiled
