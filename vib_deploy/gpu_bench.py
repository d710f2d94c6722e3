"""Dense vs pruned on GPU engines: CUDA-event timing, parity against fp32 torch, NVML and allocator memory.

For each (backend, precision) that can run here, the run's dense and pruned models are loaded (AOTInductor
packages are compiled first, into the run directory), checked against the fp32 torch model on real test images,
then timed per batch size: warm-up, then rounds in which dense and pruned alternate (the order flips each
round); each call is bracketed by CUDA events on the current stream (host clock on CPU, the dry run's stand-in;
host clock after a device sync for ONNX Runtime, which runs on its own stream). Memory per variant and batch:
`torch.cuda.max_memory_allocated` over a few calls beyond what was allocated before them, NVML's device memory
used (sampled every millisecond in a thread; "not available" without nvidia-ml-py or a driver) and the weights'
bytes. A backend that cannot run here is a record saying why, never a number.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vib_deploy.bench import Variant, make_input, percentiles
from vib_deploy.deployed import deployables
from vib_deploy.errors import UserError
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


class NvmlSampler:
    """Peak device memory used (NVML) while active, sampled in a thread; `problem` says why there is none."""

    def __init__(self, device_index: int = 0, interval: float = 0.001):
        self.peak: int | None = None
        self.problem: str | None = None
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml  # pyright: ignore[reportMissingImports]  (nvidia-ml-py, on GPU machines)

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception as e:  # ImportError, or NVMLError without a driver
            self.problem = f"not available ({type(e).__name__}: {str(e)[:80] or 'no NVML'})"

    def used(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak or 0, self.used())
            time.sleep(self.interval)

    def __enter__(self) -> NvmlSampler:
        if self.problem is None:
            self.peak = self.used()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak or 0, self.used())


def gpu_facts(device: str) -> dict[str, Any]:
    """What the numbers were measured on: GPU name, driver, CUDA, torch (the CPU on a CPU run)."""
    import torch

    from vib_deploy.bench import machine_info

    facts: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "not available",
        "device": device,
    }
    if device.startswith("cuda"):
        dev = torch.device(device)
        cc = torch.cuda.get_device_capability(dev)
        facts.update(
            gpu=torch.cuda.get_device_name(dev),
            compute_capability=f"{cc[0]}.{cc[1]}",
            memory_bytes=torch.cuda.get_device_properties(dev).total_memory,
        )
    else:
        facts["gpu"] = f"none (CPU: {machine_info()['cpu']})"
    try:
        import pynvml  # pyright: ignore[reportMissingImports]

        pynvml.nvmlInit()
        facts["driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception as e:
        facts["driver"] = f"not available ({type(e).__name__})"
    return facts


def _timer(device: str, host_clock: bool) -> Any:
    """A function timing one call of `fn` in ms: CUDA events, or the host clock (after a device sync)."""
    import torch

    if device.startswith("cuda") and not host_clock:

        def events(fn: Any) -> tuple[Any, Any]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            return start, end

        return events

    def host(fn: Any) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter_ns()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter_ns() - t0) / 1e6

    return host


def time_alternating(
    runners: dict[str, Any], inputs: dict[str, Any], rounds: int, iters: int, warmup: int, device: str
) -> dict[str, list[float]]:
    """Per-call latencies (ms) of each runner, in rounds whose order flips; CUDA events read after each round."""
    import torch

    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name].infer_tensor(inputs[name])
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        pending: list[tuple[str, Any]] = []
        for name in names if r % 2 == 0 else names[::-1]:
            runner, x = runners[name], inputs[name]
            timer = _timer(device, getattr(runner, "host_clock", False))
            for _ in range(iters):
                pending.append((name, timer(lambda: runner.infer_tensor(x))))  # noqa: B023 (called at once)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        for name, t in pending:
            samples[name].append(t if isinstance(t, float) else t[0].elapsed_time(t[1]))
    return samples


def _memory(runner: Any, x: Any, device: str, sampler_index: int) -> dict[str, Any]:
    """Allocator peak beyond what was allocated before a few calls, NVML peak used, weight bytes."""
    out: dict[str, Any] = {"weight_bytes": runner.weight_bytes()}
    if not device.startswith("cuda"):
        return {**out, "max_memory_allocated_bytes": None, "nvml_used_bytes": "not available (not a CUDA device)"}
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with NvmlSampler(sampler_index) as nvml:
        for _ in range(3):
            runner.infer_tensor(x)
        torch.cuda.synchronize()
    out["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated() - before
    out["nvml_used_bytes"] = nvml.peak if nvml.problem is None else nvml.problem
    return out


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
    import json

    from vib_deploy.backends.aotinductor import compile_package, sidecar_path
    from vib_deploy.runs import sha256_file

    kind = "cuda" if device.startswith("cuda") else "cpu"
    packages = {}
    for v in variants:
        package = run.file(f"{v.name}.{kind}.{precision}.pt2")
        side = sidecar_path(package)
        current = False
        if package.is_file() and side.is_file():
            meta = json.loads(side.read_text())
            current = (
                meta.get("source_sha256") == sha256_file(v.artifacts[".pt"]) and meta.get("batch_max", 0) >= max_batch
            )
        if not current:
            meta = compile_package(v.artifacts[".pt"], package, shape, device, precision, max_batch)
            echo(f"aotinductor: {package.name} compiled in {meta['compile_seconds']:.1f} s")
            run.add_artifacts("aotinductor", [package.name, side.name])
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
    from vib_deploy.backends.torch_cuda import cuda_problem
    from vib_deploy.runs import RunDir

    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", device):
        raise UserError(f"--device {device!r}: expected cuda, cuda:N or cpu")
    if device.startswith("cuda") and cuda_problem():
        raise UserError(f"--device {device}: {cuda_problem()}; on a CPU, --device cpu runs the dry run's stand-in")
    if not Path(run_dir).is_dir():
        raise UserError(f"run directory {run_dir} not found")
    with RunDir(run_dir).locked():
        return _bench_gpu(Path(run_dir), cases, device, batch_sizes, rounds, iters, warmup, echo, out)


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

    from vib_deploy.runs import atomic_write_json

    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels (during warm-up)

    from vib_deploy.backends import BACKENDS
    from vib_deploy.data import splits_of
    from vib_deploy.modelfile import load_model
    from vib_deploy.pipeline import read_run_config
    from vib_deploy.runs import RunDir

    config = read_run_config(run_dir)
    run = RunDir(run_dir)
    variants, info = _variants(run, config)
    shape = tuple(info.input_shape)
    images = splits_of(config.data).x_test[:1024]
    check_x = make_input(variants[0], images, 256)
    with torch.no_grad():
        references = {
            v.name: load_model(v.artifacts[".pt"]).eval()(torch.from_numpy(check_x)).numpy() for v in variants
        }
    ideal = info.dense.flops / info.pruned.flops
    records: list[dict[str, Any]] = []
    unavailable: list[dict[str, Any]] = []

    def result() -> dict[str, Any]:
        return {
            "machine": gpu_facts(device),
            "records": records,
            "unavailable": unavailable,
            "speedup": speedup_rows(records, ideal),
            "ideal_speedup": ideal,
            "run": config.name,
        }

    for case in cases:
        if out is not None:
            atomic_write_json(out, result())
        cls = BACKENDS.get(case.backend)
        if cls is None:
            raise UserError(f"unknown backend {case.backend!r}; known: {', '.join(BACKENDS)}")
        check = getattr(cls, "unavailable_on", None)
        problem = (
            check(device)
            if check
            else (cls.unavailable() or (None if device.startswith("cuda") else "needs a CUDA device"))
        )
        if problem is None and not hasattr(cls, "infer_tensor"):
            problem = "no device-tensor interface (prepare / infer_tensor) for CUDA-event timing"
        if problem:
            unavailable.append({"backend": case.backend, "precision": case.precision, "why": problem})
            echo(f"{case.backend} {case.precision}: not available: {problem}")
            continue
        try:
            _bench_case(
                case,
                cls,
                run,
                variants,
                shape,
                images,
                check_x,
                references,
                device,
                batch_sizes,
                rounds,
                iters,
                warmup,
                ideal,
                records,
                echo,
            )
        except (
            Exception
        ) as e:  # one engine failing (an export the compiler rejects, a driver error) must not cost the others
            why = f"FAILED: {type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            unavailable.append({"backend": case.backend, "precision": case.precision, "why": why, "failed": True})
            echo(f"{case.backend} {case.precision}: {why}")
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    if out is not None:
        atomic_write_json(out, result())
    return result()


def _bench_case(
    case: Case,
    cls: Any,
    run: Any,
    variants: list[Variant],
    shape: tuple[int, ...],
    images: np.ndarray,
    check_x: np.ndarray,
    references: dict[str, np.ndarray],
    device: str,
    batch_sizes: tuple[int, ...],
    rounds: int,
    iters: int,
    warmup: int,
    ideal: float,
    records: list[dict[str, Any]],
    echo: Any,
) -> None:
    """One backend and precision: parity, then every batch size timed; records are appended batch by batch."""
    paths = {v.name: v.artifacts.get(cls.artifact_suffix) for v in variants}
    if case.backend == "aotinductor":
        paths = dict(_aoti_packages(run, variants, shape, device, case.precision, max(batch_sizes), echo))
    runners: dict[str, Any] = {
        name: cls(path, device=device, precision=case.precision).activate() for name, path in paths.items()
    }
    try:
        parity = {name: _parity(r, references[name], check_x, case.precision) for name, r in runners.items()}
        index = 0 if device == "cpu" else (int(device.split(":")[1]) if ":" in device else 0)
        for batch in batch_sizes:
            inputs = {v.name: runners[v.name].prepare(make_input(v, images, batch)) for v in variants}
            samples = time_alternating(runners, inputs, rounds, iters, warmup, device)
            for v in variants:
                stats = percentiles([int(ms * 1e6) for ms in samples[v.name]])
                records.append(
                    {
                        "backend": case.backend,
                        "precision": case.precision,
                        "device": device,
                        "batch": batch,
                        "variant": v.name,
                        **stats,
                        "throughput": batch / (stats["p50_ms"] / 1e3),
                        "calls": len(samples[v.name]),
                        "parity": parity[v.name],
                        **_memory(runners[v.name], inputs[v.name], device, index),
                    }
                )
            dense, pruned = records[-2], records[-1]
            echo(
                f"{case.backend} {case.precision} b{batch}: p50 {dense['p50_ms']:.4f} -> {pruned['p50_ms']:.4f} ms "
                f"(speedup {dense['p50_ms'] / pruned['p50_ms']:.2f}x, ideal {ideal:.2f}x)"
            )
    finally:
        for r in runners.values():
            r.deactivate()


def speedup_rows(records: list[dict[str, Any]], ideal: float) -> list[dict[str, Any]]:
    """dense p50 / pruned p50 per backend, precision and batch, with measured/ideal (ideal = FLOPs ratio)."""
    by = {(r["backend"], r["precision"], r["batch"], r["variant"]): r for r in records}
    out = []
    for (backend, precision, batch, variant), r in by.items():
        dense = by.get((backend, precision, batch, "dense"))
        if variant != "dense" and dense is not None:
            s = dense["p50_ms"] / r["p50_ms"]
            out.append(
                {
                    "backend": backend,
                    "precision": precision,
                    "batch": batch,
                    "variant": variant,
                    "speedup": s,
                    "measured_over_ideal": s / ideal,
                }
            )
    return out


def _bytes(v: Any) -> str:
    return f"{v / 2**20:,.1f} MiB" if isinstance(v, (int, float)) else str(v if v is not None else "not available")


def launch_overhead(by: dict[tuple[Any, ...], dict[str, Any]]) -> list[str]:
    """Eager vs CUDA-graph p50 per precision, batch and variant: the share of eager time that is kernel launches
    (what bounds a pruned net's speedup at small batch, where its kernels are too short to hide the launches)."""
    rows = []
    for (backend, precision, batch, variant), eager in sorted(
        by.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3])
    ):
        graph = by.get(("torch-cuda-graphs", precision, batch, variant))
        if backend == "torch-cuda" and graph is not None:
            share = max(0.0, 1 - graph["p50_ms"] / eager["p50_ms"])
            rows.append(
                f"| {precision} | {batch} | {variant} | {eager['p50_ms']:.4f} | {graph['p50_ms']:.4f} | {share:.0%} |"
            )
    if not rows:
        return []
    return [
        "",
        "Launch overhead: eager vs CUDA-graph replay (same kernels, launched once as a graph)",
        "",
        "| precision | batch | variant | eager p50 ms | graph p50 ms | eager time that is launch overhead |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def markdown(result: dict[str, Any]) -> str:
    """One table per run: backend, precision, batch, p50/p99 and throughput of dense and pruned, memory, measured/ideal."""
    m = result["machine"]
    lines = [
        f"### {result['run']}: dense vs pruned (ideal speedup {result['ideal_speedup']:.2f}x = FLOPs ratio)",
        "",
        f"GPU {m['gpu']}, driver {m['driver']}, CUDA {m['cuda']}, torch {m['torch']}, device {m['device']}",
        "",
        "| backend | precision | batch | dense p50 / p99 ms | pruned p50 / p99 ms | dense img/s | pruned img/s | speedup "
        "| measured/ideal | weights dense / pruned | max allocated dense / pruned | NVML used (pruned) | parity |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["backend"], r["precision"], r["batch"], r["variant"]): r for r in result["records"]}
    for s in result["speedup"]:
        d = by[(s["backend"], s["precision"], s["batch"], "dense")]
        p = by[(s["backend"], s["precision"], s["batch"], s["variant"])]
        ok = "ok" if d["parity"]["ok"] and p["parity"]["ok"] else "FAILED"
        lines.append(
            f"| {s['backend']} | {s['precision']} | {s['batch']} | {d['p50_ms']:.4f} / {d['p99_ms']:.4f} | "
            f"{p['p50_ms']:.4f} / {p['p99_ms']:.4f} | {d['throughput']:,.0f} | {p['throughput']:,.0f} | "
            f"{s['speedup']:.2f}x | {s['measured_over_ideal']:.2f} | {_bytes(d['weight_bytes'])} / {_bytes(p['weight_bytes'])} | "
            f"{_bytes(d['max_memory_allocated_bytes'])} / {_bytes(p['max_memory_allocated_bytes'])} | "
            f"{_bytes(p['nvml_used_bytes'])} | {ok} (max abs diff {max(d['parity']['max_abs_diff'], p['parity']['max_abs_diff']):.2g}) |"
        )
    for u in result["unavailable"]:
        why = u["why"] if u.get("failed") else f"not available: {u['why']}"
        lines.append(f"| {u['backend']} | {u['precision']} | - | {why} | | | | | | | | | |")
    lines += launch_overhead(by)
    lines += [
        "",
        "p50/p99: CUDA events per call after warm-up, dense and pruned alternating; img/s at p50; measured/ideal: "
        "speedup over the FLOPs ratio; max allocated: torch's allocator peak during 3 calls beyond what was allocated "
        "before them (a CUDA graph's pool is allocated at capture, so ~0 there); NVML used: the whole device's, "
        "sampled every ms; parity: vs the fp32 torch model on CPU, 256 test images.",
    ]
    return "\n".join(lines) + "\n"
