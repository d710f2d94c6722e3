"""TensorRT engine building (ONNX -> plan) with a JSON sidecar; `import tensorrt` only in here.

Written against TensorRT 10's Python API and type-checked in CI with pyright against
`tensorrt-stubs`. It needs a CUDA GPU and the TensorRT builder, neither of which is on the CPU
machines this project is developed on: there it reports "not available" instead of building.

The engine file stays a bare TensorRT plan (what Triton's `tensorrt_plan` platform loads); what it
was built from and for lives beside it in `<name>.plan.json`.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vib_deploy.errors import UserError
from vib_deploy.runs import atomic_write_bytes, atomic_write_json, sha256_file

PRECISIONS = ("fp32", "fp16")


def tensorrt_version() -> str | None:
    """The installed TensorRT's version, or None (type stubs alone do not count)."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return getattr(trt, "__version__", None) if hasattr(trt, "Builder") else None


def unavailable() -> str | None:
    """None when an engine can be built here, else why not."""
    if tensorrt_version() is None:
        return "TensorRT is not installed (pip install 'vib-deploy[tensorrt]' on a machine with an NVIDIA GPU)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    return None


@dataclass(frozen=True)
class EngineSidecar:
    """What an engine was built from and for; checked before the engine is ever deserialized."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: dict[str, list[list[int]]]  # input name -> [min, opt, max] shapes
    inputs: dict[str, list[int]]
    outputs: dict[str, list[int]]
    onnx_sha256: str
    build_seconds: float
    device_memory_bytes: int


def current_gpu() -> tuple[str, str]:
    """(name, compute capability "major.minor") of CUDA device 0."""
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def check_sidecar(plan: Path) -> EngineSidecar:
    """Read `<plan>.json` and check it matches the running GPU and TensorRT: one clear error if not."""
    import tensorrt as trt

    path = plan.with_name(plan.name + ".json")
    if not path.exists():
        raise UserError(f"{plan}: its sidecar {path.name} is missing; rebuild with `vib-deploy build-engine`")
    sidecar = EngineSidecar(**json.loads(path.read_text()))
    gpu, cc = current_gpu()
    if sidecar.tensorrt_version != trt.__version__:
        raise UserError(f"{plan} was built with TensorRT {sidecar.tensorrt_version}, this is {trt.__version__}; rebuild it here")
    if sidecar.compute_capability != cc:
        raise UserError(f"{plan} was built for {sidecar.gpu_name} (CC {sidecar.compute_capability}), this is {gpu} (CC {cc}); rebuild it here")
    return sidecar


def build_engine(onnx_path: Path, plan_path: Path, precision: str, min_batch: int, opt_batch: int, max_batch: int,
                 workspace_bytes: int, timing_cache: Path | None = None) -> EngineSidecar:
    """Parse `onnx_path`, build a plan for batch min/opt/max at `precision`, write plan + sidecar atomically.

    Every ONNX-parser error is reported; the builder's log goes to `<plan>.log`; a timing cache is
    loaded from and saved to `timing_cache` so rebuilds are faster.
    """
    problem = unavailable()
    if problem:
        raise UserError(f"cannot build a TensorRT engine: {problem}")
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r} is not supported; choose one of {', '.join(PRECISIONS)}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise UserError(f"batch profile must satisfy 1 <= min <= opt <= max, got {min_batch}/{opt_batch}/{max_batch}")
    import tensorrt as trt

    log_lines: list[str] = []

    class _FileLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            log_lines.append(f"[{severity.name}] {msg}")

    logger = _FileLogger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16":
        if not builder.platform_has_fast_fp16:
            raise UserError("fp16 was requested but this GPU has no fast fp16; build fp32 instead")
        config.set_flag(trt.BuilderFlag.FP16)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    profile = builder.create_optimization_profile()
    shapes: dict[str, list[list[int]]] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = _dims(tensor.shape)[1:]
        dims = [[b] + rest for b in (min_batch, opt_batch, max_batch)]
        profile.set_shape(tensor.name, trt.Dims(dims[0]), trt.Dims(dims[1]), trt.Dims(dims[2]))
        shapes[tensor.name] = dims
    config.add_optimization_profile(profile)

    t0 = time.time()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.time() - t0
    atomic_write_bytes(plan_path.with_name(plan_path.name + ".log"), "\n".join(log_lines).encode())
    if serialized is None:
        raise UserError(f"TensorRT failed to build {plan_path.name}; see {plan_path.name}.log")
    plan_bytes = bytes(memoryview(serialized))
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))

    engine = trt.Runtime(logger).deserialize_cuda_engine(plan_bytes)
    io = {engine.get_tensor_name(i): engine.get_tensor_mode(engine.get_tensor_name(i)) for i in range(engine.num_io_tensors)}
    gpu, cc = current_gpu()
    sidecar = EngineSidecar(
        tensorrt_version=trt.__version__, gpu_name=gpu, compute_capability=cc, precision=precision, profile=shapes,
        inputs={n: _dims(engine.get_tensor_shape(n)) for n, m in io.items() if m == trt.TensorIOMode.INPUT},
        outputs={n: _dims(engine.get_tensor_shape(n)) for n, m in io.items() if m == trt.TensorIOMode.OUTPUT},
        onnx_sha256=sha256_file(onnx_path), build_seconds=seconds, device_memory_bytes=int(engine.device_memory_size_v2),
    )
    atomic_write_bytes(plan_path, plan_bytes)
    atomic_write_json(plan_path.with_name(plan_path.name + ".json"), asdict(sidecar))
    return sidecar


def _dims(dims: Any) -> list[int]:
    """A trt.Dims as a list (-1 for a dynamic axis)."""
    return [int(dims[i]) for i in range(len(dims))]


def describe(sidecar: EngineSidecar) -> dict[str, Any]:
    """The sidecar as a plain dict (for reports)."""
    return asdict(sidecar)
