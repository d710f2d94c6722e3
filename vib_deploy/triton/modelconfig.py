"""Triton model configs: the ONNX graph's inputs and outputs, `ShipOptions`, config.pbtxt rendered and checked
against Triton's schema (`tritonclient.grpc.model_config_pb2`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vib_deploy.errors import UserError

OPENVINO, IR_FILE = (
    "openvino",
    "model.xml",
)  # Triton's OpenVINO backend; IR weights in model.bin, sidecar model.xml.json
MODEL_FILE = (
    "model.onnx"  # an ONNX model's file in a version folder (onnxruntime, or the OpenVINO backend reading ONNX)
)
LABELS = "labels.txt"

# ONNX TensorProto element types -> Triton data types
_ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}


@dataclass(frozen=True)
class ShipOptions:
    """How Triton should schedule the model (defaults suit a small CPU model)."""

    max_batch_size: int = 256  # largest batch Triton forms or accepts
    preferred_batch_sizes: tuple[int, ...] = (16, 64)  # dynamic batcher aims for these
    max_queue_delay_us: int = 100  # how long a request may wait for others to batch with
    instance_count: int = 1  # model instances (each runs one batch at a time)
    kind: str = "KIND_CPU"  # KIND_CPU or KIND_GPU

    def check(self) -> None:
        """Reject options Triton would reject, with one clear line."""
        if self.max_batch_size < 1:
            raise UserError(f"--max-batch-size must be at least 1, got {self.max_batch_size}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise UserError(f"--preferred-batch-sizes {bad} must lie in 1..{self.max_batch_size} (--max-batch-size)")
        if self.max_queue_delay_us < 0:
            raise UserError(f"--max-queue-delay-us must be >= 0, got {self.max_queue_delay_us}")
        if self.instance_count < 1:
            raise UserError(f"--instances must be at least 1, got {self.instance_count}")
        if self.kind not in ("KIND_CPU", "KIND_GPU"):
            raise UserError(f"--kind must be KIND_CPU or KIND_GPU, got {self.kind}")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as Triton sees it: name, data type, dims without the batch axis."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def graph_io(onnx_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The ONNX graph's real inputs and outputs; the first axis must be a dynamic batch axis."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def spec(value: Any) -> TensorSpec:
        t = value.type.tensor_type
        if t.elem_type not in _ONNX_TO_TRITON:
            raise UserError(
                f"{onnx_path}: {value.name} has ONNX element type {t.elem_type}, which Triton does not take"
            )
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
        if not dims or isinstance(dims[0], int):
            raise UserError(f"{onnx_path}: {value.name} has no dynamic batch axis (shape {dims}); export with one")
        return TensorSpec(
            value.name, _ONNX_TO_TRITON[t.elem_type], tuple(-1 if isinstance(d, str) else d for d in dims[1:])
        )

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def render_config(
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    options: ShipOptions,
    platform: str = "onnxruntime_onnx",
    model_file: str = IR_FILE,
) -> str:
    """config.pbtxt text for an ONNX model (or a plan, or OpenVINO IR: platform "openvino" names Triton's
    OpenVINO *backend*, run with one thread, one stream, latency hint as bench measured it, on `model_file`:
    the IR, or an ONNX model it reads itself); the first output carries the labels file."""
    # long function: the config.pbtxt template, read top to bottom as the file it writes
    if platform == OPENVINO:
        engine = [f'backend: "{OPENVINO}"', f'default_model_filename: "{model_file}"']
        engine_params = [
            f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}'
            for k, v in (("INFERENCE_NUM_THREADS", "1"), ("NUM_STREAMS", "1"), ("PERFORMANCE_HINT", "LATENCY"))
        ]
    else:
        engine, engine_params = [f'platform: "{platform}"'], []
    lines = [
        f'name: "{name}"',
        *engine,
        f"max_batch_size: {options.max_batch_size}",
        "version_policy: { latest: { num_versions: 1 } }",
    ]
    for t in inputs:
        lines += [
            "input [",
            "  {",
            f'    name: "{t.name}"',
            f"    data_type: {t.data_type}",
            f"    dims: {_dims(t.dims)}",
            "  }",
            "]",
        ]
    for i, t in enumerate(outputs):
        label = [f'    label_filename: "{LABELS}"'] if i == 0 else []
        lines += [
            "output [",
            "  {",
            f'    name: "{t.name}"',
            f"    data_type: {t.data_type}",
            f"    dims: {_dims(t.dims)}",
            *label,
            "  }",
            "]",
        ]
    preferred = ", ".join(str(b) for b in options.preferred_batch_sizes)
    lines += [
        "dynamic_batching {",
        f"  preferred_batch_size: [ {preferred} ]",
        f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {options.instance_count}",
        f"    kind: {options.kind}",
        "  }",
        "]",
        "model_warmup [",
        "  {",
        '    name: "zeros_batch_1"',
        "    batch_size: 1",
    ]
    for t in inputs:
        if -1 in t.dims:
            raise UserError(f"input {t.name} has a dynamic non-batch axis {t.dims}; model_warmup needs fixed dims")
        lines += [
            "    inputs {",
            f'      key: "{t.name}"',
            "      value: {",
            f"        data_type: {t.data_type}",
            f"        dims: {_dims(t.dims)}",
            "        zero_data: true",
            "      }",
            "    }",
        ]
    lines += ["  }", "]", *engine_params]
    return "\n".join(lines) + "\n"


def parse_config(text: str, where: str) -> Any:
    """Parse config.pbtxt text with Triton's schema (`model_config_pb2.ModelConfig`); a bad field is a UserError."""
    from google.protobuf import text_format

    model_config_pb2 = _schema()
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise UserError(f"{where} is not a valid Triton model config: {e}") from e


def _schema() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise UserError(f"Triton's config schema is not installed ({e}); pip install 'vib-deploy[ship]'") from e
    return model_config_pb2


def check_config_matches(config: Any, inputs: list[TensorSpec], outputs: list[TensorSpec], where: str) -> None:
    """The parsed config must name exactly the graph's inputs and outputs, with their types and dims."""
    model_config_pb2 = _schema()

    def as_specs(entries: Any) -> list[TensorSpec]:
        return [TensorSpec(e.name, model_config_pb2.DataType.Name(e.data_type), tuple(e.dims)) for e in entries]

    for kind, got, want in (("inputs", as_specs(config.input), inputs), ("outputs", as_specs(config.output), outputs)):
        if got != want:
            raise UserError(f"{where}: {kind} {got} do not match the ONNX graph's {want}")
