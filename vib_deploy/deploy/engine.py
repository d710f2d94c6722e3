"""TensorRT engine building (ONNX -> plan) with a JSON sidecar; the runner that loads it is backends/tensorrt.py.

Written against TensorRT 10's Python API and type-checked in CI with pyright against
`tensorrt-stubs`. It needs a CUDA GPU and the TensorRT builder, neither of which is on the CPU
machines this project is developed on: there it reports "not available" instead of building.

The engine file stays a bare TensorRT plan (what Triton's `tensorrt_plan` platform loads); what it
was built from and for lives beside it in `<name>.plan.json`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vib_deploy.backends.tensorrt import EngineSidecar, current_gpu, unavailable
from vib_deploy.errors import UserError
from vib_deploy.runs.directory import RunDir, atomic_write_bytes, sha256_file
from vib_deploy.runs.sidecar import sidecar_path, write_sidecar

PRECISIONS = ("fp32", "fp16")


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    precision: str,
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    workspace_bytes: int,
    timing_cache: Path | None = None,
) -> EngineSidecar:
    """Parse `onnx_path`, build a plan for batch min/opt/max at `precision`, write plan + sidecar atomically.

    Every ONNX-parser error is reported; the builder's log goes to `<plan>.log`; a timing cache is
    loaded from and saved to `timing_cache` so rebuilds are faster.
    """
    # long function: one build is a sequence of TensorRT calls on a builder, network, config and profile that
    # all live together; split up, every piece would take and return all four
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
    io = {
        engine.get_tensor_name(i): engine.get_tensor_mode(engine.get_tensor_name(i))
        for i in range(engine.num_io_tensors)
    }
    gpu, cc = current_gpu()
    sidecar = EngineSidecar(
        tensorrt_version=trt.__version__,
        gpu_name=gpu,
        compute_capability=cc,
        precision=precision,
        profile=shapes,
        inputs={n: _dims(engine.get_tensor_shape(n)) for n, m in io.items() if m == trt.TensorIOMode.INPUT},
        outputs={n: _dims(engine.get_tensor_shape(n)) for n, m in io.items() if m == trt.TensorIOMode.OUTPUT},
        onnx_sha256=sha256_file(onnx_path),
        build_seconds=seconds,
        device_memory_bytes=int(engine.device_memory_size_v2),
    )
    atomic_write_bytes(plan_path, plan_bytes)
    write_sidecar(plan_path, asdict(sidecar))
    return sidecar


def _dims(dims: Any) -> list[int]:
    """A trt.Dims as a list (-1 for a dynamic axis)."""
    return [int(dims[i]) for i in range(len(dims))]


def build_run_engines(
    run_dir: Path,
    precision: str,
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    workspace_mb: int,
    echo: Callable[[str], None] = print,
) -> list[EngineSidecar]:
    """dense.plan and pruned.plan from a run's ONNX files, recorded in its manifest under `build-engine`."""
    problem = unavailable()
    if problem:
        raise UserError(f"TensorRT engines cannot be built here: {problem}")
    run = RunDir(run_dir)
    sidecars = []
    with run.locked():
        names = []
        for variant in ("dense", "pruned"):
            plan = run.file(f"{variant}.plan")
            sidecar = build_engine(
                run.verified(f"{variant}.onnx"),
                plan,
                precision,
                min_batch,
                opt_batch,
                max_batch,
                workspace_mb << 20,
                run.file("timing.cache"),
            )
            names += [plan.name, sidecar_path(plan).name]
            echo(
                f"{plan}: {sidecar.precision}, built in {sidecar.build_seconds:.1f} s, "
                f"device memory {sidecar.device_memory_bytes:,} bytes"
            )
            sidecars.append(sidecar)
        run.add_artifacts("build-engine", names)
    return sidecars
