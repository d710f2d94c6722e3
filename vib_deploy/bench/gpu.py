"""Dense vs pruned on GPU engines (the registry's `DeviceRunner`s): parity against fp32 torch, timing, memory.

For each (backend, precision) that can run here, the run's dense and pruned models are loaded (AOTInductor
packages are compiled first, into the run directory), checked against the fp32 torch model on real test images,
then timed per batch size by the timing core (`vib_deploy.measure.timing`: warm-up, alternating rounds; CUDA events on
the current stream, or the host clock where the runner says `host_clock`, and on CPU, the dry run's stand-in).
Memory: `gpu_memory.device_memory`; the tables: `gpu_table`. A backend that cannot run here is a record saying
why, never a number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vib_deploy.backends.base import DeviceRunner
from vib_deploy.bench.gpu_memory import device_memory, gpu_facts
from vib_deploy.bench.gpu_table import speedup_rows
from vib_deploy.bench.inprocess import Variant, make_input
from vib_deploy.deploy.deployed import deployables
from vib_deploy.errors import UserError
from vib_deploy.measure.timing import alternate, clock_for, latency_stats, speedup
from vib_deploy.records import PruneRecord

BATCH_SIZES = (1, 8, 64, 256, 1024)
# max |Δlogit| vs the fp32 torch model on CPU, as a fraction of the largest |logit| (TF32 convs and matmuls in fp32)
PARITY = {"fp32": 1e-2, "bf16": 1e-1, "fp16": 5e-2}


@dataclass(frozen=True)
class Case:
    backend: str
    precision: str = "fp32"


DEFAULT_CASES = (
    Case("torch-cuda"),
    Case("torch-cuda", "bf16"),
    Case("torch-cuda-graphs"),
    Case("torch-cuda-graphs", "bf16"),
    Case("onnxruntime-cuda"),
    Case("onnxruntime-tensorrt"),
    Case("tensorrt", "fp16"),
    Case("aotinductor"),
)


def _variants(run: Any, config: Any) -> tuple[list[Variant], PruneRecord]:
    """Dense and pruned (the full-image nets the run deploys), and the prune record (shape, FLOPs)."""
    deployed = [d for d in deployables(run, config) if d.name in ("dense", "pruned")]
    variants = [Variant(d.name, {".pt": run.verified(d.model_file), ".onnx": run.file(d.onnx)}) for d in deployed]
    return variants, PruneRecord.read(run)


def _parity(runner: Any, reference: np.ndarray, x: np.ndarray, precision: str) -> dict[str, Any]:
    got = runner.infer(x)
    scale = max(1.0, float(np.abs(reference).max()))
    diff = float(np.abs(got - reference).max())
    agree = float((got.argmax(1) == reference.argmax(1)).mean())
    return {
        "max_abs_diff": diff,
        "tolerance": PARITY[precision] * scale,
        "argmax_agreement": agree,
        "ok": bool(diff <= PARITY[precision] * scale),
    }


def _aoti_packages(
    run: Any, variants: list[Variant], shape: tuple[int, ...], device: str, precision: str, max_batch: int, echo: Any
) -> dict[str, Path]:
    """Compile (or reuse, when the sidecar matches this torch, device and source) one .pt2 per variant."""
    from vib_deploy.backends.aotinductor import compile_package, package_is_current
    from vib_deploy.runs.sidecar import sidecar_path

    kind = "cuda" if device.startswith("cuda") else "cpu"
    packages = {}
    for v in variants:
        package = run.file(f"{v.name}.{kind}.{precision}.pt2")
        if not package_is_current(package, v.artifacts[".pt"], max_batch):
            meta = compile_package(v.artifacts[".pt"], package, shape, device, precision, max_batch)
            echo(f"aotinductor: {package.name} compiled in {meta['compile_seconds']:.1f} s")
            run.add_artifacts("aotinductor", [package.name, sidecar_path(package).name])
        packages[v.name] = package
    return packages


def parse_cases(text: str) -> list[Case]:
    """`backend:precision,...` (precision fp32 when left out) -> cases; a bad one is one clear error."""
    cases = []
    for item in (c.strip() for c in text.split(",") if c.strip()):
        backend, _, precision = item.partition(":")
        if (precision or "fp32") not in PARITY:
            raise UserError(f"--cases {item!r}: precision must be one of {', '.join(PARITY)}")
        cases.append(Case(backend, precision or "fp32"))
    if not cases:
        raise UserError("--cases needs at least one backend:precision")
    return cases


def bench_gpu(
    run_dir: Path,
    cases: list[Case],
    device: str = "cuda",
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    rounds: int = 10,
    iters: int = 10,
    warmup: int = 10,
    echo: Any = print,
    out: Path | None = None,
) -> dict[str, Any]:
    """Every case on the run's dense and pruned models; returns {"machine", "records", "unavailable", "speedup"}.

    Holds the run's lock: AOTInductor packages are compiled into the run directory and added to its manifest.
    With `out`, the result so far is written there (atomically) after each case: a run stopped at a time limit
    keeps the cases it finished.
    """
    from vib_deploy.backends.base import cuda_problem
    from vib_deploy.runs.directory import RunDir

    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", device):
        raise UserError(f"--device {device!r}: expected cuda, cuda:N or cpu")
    if device.startswith("cuda") and cuda_problem():
        raise UserError(f"--device {device}: {cuda_problem()}; on a CPU, --device cpu runs the dry run's stand-in")
    if not Path(run_dir).is_dir():
        raise UserError(f"run directory {run_dir} not found")
    with RunDir(run_dir).locked():
        return _bench_gpu(Path(run_dir), cases, device, batch_sizes, rounds, iters, warmup, echo, out)


@dataclass(frozen=True)
class _Setup:
    """What every case of one gpu-bench run shares: the run, its variants and test images, the timing settings."""

    run: Any
    name: str  # the run's pipeline name
    variants: list[Variant]
    shape: tuple[int, ...]
    images: np.ndarray
    check_x: np.ndarray  # 256 test images: parity against the fp32 torch model on CPU
    references: dict[str, np.ndarray]
    ideal: float  # dense FLOPs / pruned FLOPs
    device: str
    batch_sizes: tuple[int, ...]
    rounds: int
    iters: int
    warmup: int
    echo: Any


def _setup(run_dir: Path, device: str, batch_sizes: tuple[int, ...], timing: tuple[int, int, int], echo: Any) -> _Setup:
    import torch

    from vib_deploy.config import read_run_config
    from vib_deploy.data.datasets import splits_of
    from vib_deploy.nets import load_model
    from vib_deploy.runs.directory import RunDir

    config = read_run_config(run_dir)
    run = RunDir(run_dir)
    variants, info = _variants(run, config)
    images = splits_of(config.data).x_test[:1024]
    check_x = make_input(variants[0], images, 256)
    with torch.no_grad():
        references = {
            v.name: load_model(v.artifacts[".pt"]).eval()(torch.from_numpy(check_x)).numpy() for v in variants
        }
    ideal = info.dense.flops / info.pruned.flops
    shape = tuple(info.input_shape)
    return _Setup(
        run, config.name, variants, shape, images, check_x, references, ideal, device, batch_sizes, *timing, echo
    )


def _bench_gpu(
    run_dir: Path,
    cases: list[Case],
    device: str,
    batch_sizes: tuple[int, ...],
    rounds: int,
    iters: int,
    warmup: int,
    echo: Any,
    out: Path | None,
) -> dict[str, Any]:
    import torch

    from vib_deploy.runs.directory import atomic_write_json

    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels (during warm-up)
    setup = _setup(run_dir, device, batch_sizes, (rounds, iters, warmup), echo)
    records: list[dict[str, Any]] = []
    unavailable: list[dict[str, Any]] = []

    def result() -> dict[str, Any]:
        return {
            "machine": gpu_facts(device),
            "records": records,
            "unavailable": unavailable,
            "speedup": speedup_rows(records, setup.ideal),
            "ideal_speedup": setup.ideal,
            "run": setup.name,
        }

    for case in cases:
        if out is not None:
            atomic_write_json(out, result())
        problem, cls = _problem(case.backend, device)
        if problem or cls is None:
            unavailable.append({"backend": case.backend, "precision": case.precision, "why": problem})
            echo(f"{case.backend} {case.precision}: not available: {problem}")
            continue
        try:
            _bench_case(case, cls, setup, records)
        # one engine failing (an export the compiler rejects, a driver error) must not cost the others
        except Exception as e:
            why = f"FAILED: {type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            unavailable.append({"backend": case.backend, "precision": case.precision, "why": why, "failed": True})
            echo(f"{case.backend} {case.precision}: {why}")
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    if out is not None:
        atomic_write_json(out, result())
    return result()


def _problem(backend: str, device: str) -> tuple[str | None, type[DeviceRunner] | None]:
    """(why `backend` cannot be timed on `device` here, or None; its runner class when it is a device runner)."""
    from vib_deploy.backends import BACKENDS, device_backends

    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    cls = device_backends().get(backend)
    if cls is None:
        why = BACKENDS[backend].unavailable_on(device)
        return why or "not a device runner (no device-tensor input and output to time on the GPU)", None
    return cls.unavailable_on(device), cls


def _bench_case(case: Case, cls: type[DeviceRunner], setup: _Setup, records: list[dict[str, Any]]) -> None:
    """One backend and precision: parity, then every batch size timed; records are appended batch by batch."""
    device, variants, precision = setup.device, setup.variants, case.precision
    if cls.artifact_suffix == ".pt2":  # an AOTInductor package, compiled here into the run directory
        most = max(setup.batch_sizes)
        paths = _aoti_packages(setup.run, variants, setup.shape, device, precision, most, setup.echo)
    else:
        paths = {v.name: v.artifacts[cls.artifact_suffix] for v in variants}
    runners = {name: cls(path, device=device, precision=precision).activate() for name, path in paths.items()}
    try:
        parity = {name: _parity(r, setup.references[name], setup.check_x, precision) for name, r in runners.items()}
        index = 0 if device == "cpu" else (int(device.split(":")[1]) if ":" in device else 0)
        clocks = {name: clock_for(device, r.host_clock) for name, r in runners.items()}
        for batch in setup.batch_sizes:
            inputs = {v.name: runners[v.name].prepare(make_input(v, setup.images, batch)) for v in variants}
            calls = {name: partial(r.infer_tensor, inputs[name]) for name, r in runners.items()}
            samples = alternate(calls, setup.rounds, setup.iters, setup.warmup, clocks)
            for v in variants:
                records.append(
                    {
                        "backend": case.backend,
                        "precision": precision,
                        "device": device,
                        "batch": batch,
                        "variant": v.name,
                        **latency_stats(samples[v.name], batch),
                        "parity": parity[v.name],
                        **device_memory(runners[v.name], inputs[v.name], device, index),
                    }
                )
            dense, pruned = records[-2], records[-1]
            setup.echo(
                f"{case.backend} {precision} b{batch}: p50 {dense['p50_ms']:.4f} -> {pruned['p50_ms']:.4f} ms "
                f"(speedup {speedup(dense['p50_ms'], pruned['p50_ms']):.2f}x, ideal {setup.ideal:.2f}x)"
            )
    finally:
        for r in runners.values():
            r.deactivate()
