"""Latency, throughput and memory of dense vs pruned models, measured in one process.

Dense and pruned, on every backend and precision, are timed by the timing core (`vib_deploy.measure.timing`: alternating
rounds, perf_counter_ns per call after warm-up, throughput at p50). Memory is the peak-RSS growth
of a fresh process that loads the model and runs the batch (one subprocess per variant), so models
never share an allocator's high-water mark. The benchmark only talks to `backends.base.Runner`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vib_deploy.backends import get_backend
from vib_deploy.deploy.deployed import reduce_input
from vib_deploy.measure.machine import machine_info as machine_info  # the bench stage records it beside the figures
from vib_deploy.measure.memory import refuse_oversized_input
from vib_deploy.measure.timing import alternate, latency_stats, speedup
from vib_deploy.runs.files import artifact_bytes


@dataclass(frozen=True)
class Variant:
    """One model to time: its artifacts per backend and how to shape its input."""

    name: str  # "dense", "pruned" (full image) or "pruned_reduced" (kept pixels only)
    artifacts: dict[str, Path]  # backend suffix (".onnx", ".pt") -> file; a backend's name -> its own file, first
    input_indices: list[int] | None = None  # reduced-input models take x.flatten(1)[:, indices]
    precision: str = "fp32"  # or "int8" (a QDQ model from the quantize stage)
    error: dict[str, float] | None = None  # test error per backend that runs it ("*": every backend alike)
    widths: list[int] | None = None  # units per gated layer of the timed net

    @property
    def key(self) -> str:
        """Unique among the variants timed together: "pruned", "pruned_int8", ..."""
        return self.name if self.precision == "fp32" else f"{self.name}_{self.precision}"

    def error_on(self, backend: str) -> float | None:
        errors = self.error or {}
        return errors.get(backend, errors.get("*"))


def make_input(variant: Variant, images: np.ndarray, batch: int) -> np.ndarray:
    """A batch of real images in the layout the variant takes (refused before allocation if it cannot fit)."""
    refuse_oversized_input([batch], images.shape[1:], f"batch {batch:,}")
    reps = -(-batch // len(images))
    x = reduce_input(np.concatenate([images] * reps)[:batch], variant.input_indices)
    return np.ascontiguousarray(x, dtype=np.float32)


_MEMORY_PROBE = """
import json, sys
import numpy as np
from vib_deploy.backends import get_backend

def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

backend, path, shape, threads = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
runner = get_backend(backend)(path, threads)
x = np.random.default_rng(0).random(shape, dtype=np.float32)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS mark (VmHWM) so the library's import peak is not counted
before = status_kib("VmRSS")
runner.activate()
for _ in range(5):
    runner.infer(x)
print(json.dumps({"peak_rss_growth_bytes": (status_kib("VmHWM") - before) * 1024}))
"""


def peak_memory(backend: str, path: Path, shape: tuple[int, ...], threads: int) -> int:
    """Peak-RSS growth (bytes) of a fresh process from loading `path` and running 5 batches of `shape`.

    The backend library is imported first and the kernel's peak-RSS mark is reset (Linux
    /proc/self/clear_refs), so the figure is the model's own load + inference peak.
    """
    # import the backend library before the first reading so only the model's own memory counts
    warm = {"onnxruntime": "import onnxruntime", "torch": "import torch", "openvino": "import openvino"}.get(
        backend, ""
    )
    code = warm + "\n" + _MEMORY_PROBE
    proc = subprocess.run(
        [sys.executable, "-c", code, backend, str(path), json.dumps(list(shape)), str(threads)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed: {proc.stderr.strip().splitlines()[-1:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_growth_bytes"])


def run_bench(
    variants: list[Variant],
    images: np.ndarray,
    backends: list[str],
    batch_sizes: list[int],
    threads: int,
    rounds: int,
    iters: int,
    warmup: int,
    memory: bool,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Benchmark every variant on every backend and batch size; returns metrics.json `bench` records.

    Every (backend, variant) runner is loaded first and all of them alternate in the same rounds, so a
    cross-engine comparison (the best dense deployment vs the best pruned one) sees the same machine noise.
    """
    records: list[dict[str, Any]] = []
    task = progress.add_task("bench", total=len(batch_sizes) * rounds) if progress else None
    by_key = {v.key: v for v in variants}
    paths: dict[tuple[str, str], Path] = {}
    runners: dict[tuple[str, str], Any] = {}
    for backend in backends:
        cls = get_backend(backend)
        for v in variants:
            own = backend if backend in v.artifacts else cls.artifact_suffix  # e.g. OpenVINO's INT8: NNCF's IR
            if own in v.artifacts:
                paths[backend, v.key] = v.artifacts[own]
                runners[backend, v.key] = cls(paths[backend, v.key], threads).activate()
    for batch in batch_sizes:
        inputs = {k: make_input(by_key[k[1]], images, batch) for k in runners}
        if progress is not None:
            progress.update(task, description=f"bench batch {batch}")
        calls = {k: partial(runner.infer, inputs[k]) for k, runner in runners.items()}
        after_round = partial(progress.advance, task) if progress is not None else None
        samples = alternate(calls, rounds, iters, warmup, after_round=after_round)
        for (backend, key), runner in runners.items():
            v, path = by_key[key], paths[backend, key]
            stats = latency_stats(samples[backend, key], batch)
            mem = peak_memory(backend, path, inputs[backend, key].shape, threads) if memory else None
            records.append(
                {
                    "backend": backend,
                    "device": runner.device,
                    "batch": batch,
                    "variant": v.name,
                    "precision": v.precision,
                    "widths": v.widths,
                    "error": v.error_on(backend),
                    "bytes": artifact_bytes(path),
                    **stats,
                    "peak_memory_bytes": mem,
                    "threads": threads,
                }
            )
    for runner in runners.values():
        runner.deactivate()
    return records


def speedups(records: list[dict[str, Any]], baseline: str = "dense") -> list[dict[str, Any]]:
    """dense fp32 p50 / variant p50 per backend, batch, variant and precision (records without one are fp32)."""

    def key(r: dict[str, Any]) -> tuple[str, int, str, str]:
        return r["backend"], r["batch"], r["variant"], r.get("precision", "fp32")

    by_key = {key(r): r for r in records}
    out = []
    for (backend, batch, variant, precision), rec in by_key.items():
        base = by_key.get((backend, batch, baseline, "fp32"))
        if (variant, precision) != (baseline, "fp32") and base is not None:
            out.append(
                {
                    "backend": backend,
                    "batch": batch,
                    "variant": variant,
                    "precision": precision,
                    "speedup": speedup(base["p50_ms"], rec["p50_ms"]),
                }
            )
    return out


def profile_onnx(path: Path, x: np.ndarray, runs: int = 200, threads: int = 1) -> list[dict[str, Any]]:
    """Per-node time of an ONNX model in ONNX Runtime (its own profiler): where the latency goes.

    Returns one record per node (name, op type, mean µs per run, share of the total), largest first.
    """
    import os
    import tempfile

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(20):
            session.run(None, {name: x})
        start_runs = runs
        for _ in range(runs):
            session.run(None, {name: x})
        trace = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, dict[str, Any]] = {}
    for event in trace:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        node = event["name"][: -len("_kernel_time")]
        rec = per_node.setdefault(
            node, {"node": node, "op": event["args"].get("op_name", "?"), "total_us": 0.0, "calls": 0}
        )
        rec["total_us"] += event["dur"]
        rec["calls"] += 1
    total = sum(r["total_us"] for r in per_node.values()) or 1.0
    out = []
    for rec in per_node.values():
        calls_per_run = rec["calls"] / (start_runs + 20)
        out.append(
            {
                "node": rec["node"],
                "op": rec["op"],
                "mean_us": rec["total_us"] / rec["calls"] * calls_per_run,
                "share": rec["total_us"] / total,
            }
        )
    return sorted(out, key=lambda r: -r["mean_us"])
