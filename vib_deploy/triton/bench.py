"""`vib-deploy bench RUN_DIR --backend triton`: dense vs pruned through a local Triton server.

The run is packaged into a temporary model repository, served by `triton.server.TritonServer`, and dense, pruned and
the chosen deployment (`deploy.target`, served as its ONNX file: the local server has no OpenVINO backend) timed with
1, 4, 16… concurrent clients (`timing.concurrent`, one `TritonRunner` per client) at each batch size,
beside the run's own in-process ONNX Runtime figures, so the cost of serving is visible. Throughput is the timing
core's: clients x batch / p50. Figures, not tests.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from vib_deploy.backends.triton import TritonRunner
from vib_deploy.bench.inprocess import Variant, make_input
from vib_deploy.config import read_run_config
from vib_deploy.data.datasets import splits_of
from vib_deploy.errors import UserError
from vib_deploy.measure.machine import machine_info
from vib_deploy.measure.memory import refuse_oversized_input
from vib_deploy.measure.timing import concurrent, latency_stats, speedup
from vib_deploy.records import BenchFile, RunSummary
from vib_deploy.runs.directory import RunDir, atomic_write_json
from vib_deploy.triton.modelconfig import MODEL_FILE
from vib_deploy.triton.repository import VARIANTS, package
from vib_deploy.triton.server import TritonServer


def bench_triton(
    run_dir: Path,
    concurrency: tuple[int, ...],
    batch_sizes: tuple[int, ...],
    requests: int,
    protocol: str = "grpc",
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Records {variant, batch, concurrency, p50_ms, p99_ms, throughput, in_process_p50_ms} for dense, pruned and the
    chosen deployment (variant "chosen", with its label and in-process speedup); also written to bench-triton.json."""
    _check_options(concurrency, batch_sizes, requests, protocol)
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    run = RunDir(run_dir)
    images = splits_of(config.data).x_test[:512]
    refuse_oversized_input(
        batch_sizes, images.shape[1:], "--batch-sizes x --concurrency (requests in flight)", copies=max(concurrency)
    )
    choice = RunSummary.read(run).choice  # None: a run made before the choice was recorded
    in_process = {
        (r.variant, r.batch): r.p50_ms
        for r in BenchFile.read(run).records
        if r.backend == "onnxruntime" and r.precision in (None, "fp32")
    }
    records = []
    with tempfile.TemporaryDirectory(prefix="vib-deploy-bench-") as tmp:
        models = package(run_dir, Path(tmp) / "models", name="bench")  # also the chosen one and other deployments
        shipped = {v: m for v in VARIANTS for m in models if m.name == f"bench-{v}"}  # dense and pruned are timed
        chosen = choice.chosen if choice is not None else None
        files = {v: run.file(f"{v}.onnx") for v in shipped}
        for m in models:  # the chosen deployment, as the local server runs it (its ONNX file, see triton/chosen.py)
            if m.name == "bench" and chosen is not None:
                shipped["chosen"], files["chosen"] = m, m.path / MODEL_FILE
        with TritonServer(Path(tmp) / "models") as server:
            echo(
                f"tritonserver ready in {server.start_seconds:.1f} s ({protocol}); timing {len(shipped)} models × "
                f"batches {list(batch_sizes)} × concurrency {list(concurrency)}, {requests} calls per client"
            )
            url = server.grpc_url if protocol == "grpc" else server.http_url
            bound = server.bound()  # read back from the kernel: loopback only
            for variant, model in shipped.items():
                for batch in batch_sizes:
                    inputs = chosen.variant if variant == "chosen" and chosen is not None else variant
                    x = make_input(Variant(inputs, {}), images, batch)
                    for clients in concurrency:
                        stats = _time_clients(files[variant], url, model.name, protocol, x, clients, requests)
                        records.append(
                            {
                                "backend": "triton",
                                "protocol": protocol,
                                "variant": variant,
                                "batch": batch,
                                **stats,
                                "in_process_p50_ms": in_process.get((variant, batch)),
                                **(_chosen_fields(choice, batch) if variant == "chosen" else {}),
                            }
                        )
    _write(run, records, bound)
    return records


def _chosen_fields(choice: Any, batch: int) -> dict[str, Any]:
    """The chosen deployment's row: what it is, its in-process p50 on its own engine and its speedup over the best
    dense deployment where the choice was made (its batch). Served, it is the ONNX file the local server runs."""
    from vib_deploy.deploy.choose import label

    here = batch == choice.batch
    return {
        "chosen": label(choice.chosen),
        "in_process_p50_ms": choice.chosen.p50_ms if here else None,
        "in_process_speedup": choice.speedup if here else None,
    }


def served_speedups(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dense p50 / chosen p50 through the server per (batch, clients), beside the choice's in-process speedup (the
    best dense deployment's p50 over the chosen one's, at the choice's batch)."""
    p50 = {(r["variant"], r["batch"], r["concurrency"]): r for r in records}
    out = []
    for (variant, batch, clients), r in p50.items():
        dense = p50.get(("dense", batch, clients))
        if variant == "chosen" and dense is not None:
            served = speedup(dense["p50_ms"], r["p50_ms"])
            out.append(
                {
                    "batch": batch,
                    "concurrency": clients,
                    "chosen": r["chosen"],
                    "served": served,
                    "in_process": r["in_process_speedup"],
                }
            )
    return out


def _write(run: RunDir, records: list[dict[str, Any]], bound: Any) -> None:
    """bench-triton.json, an artifact of the run (its manifest says so)."""
    with run.locked():
        atomic_write_json(
            run.file("bench-triton.json"),
            {
                "records": records,
                "machine": machine_info(),
                "server": "tritonserver 2.51 (nvidia-pytriton), Python backend running onnxruntime",
                "bound": bound,
            },
        )
        run.add_artifacts("bench-triton", ["bench-triton.json"])


def _check_options(concurrency: tuple[int, ...], batch_sizes: tuple[int, ...], requests: int, protocol: str) -> None:
    """One UserError for a bad option or a missing client library, before any server starts."""
    if protocol not in ("grpc", "http"):
        raise UserError(f"--protocol must be grpc or http, got {protocol!r}")
    if requests < 1:
        raise UserError(f"--requests must be at least 1, got {requests}")
    if any(c < 1 for c in concurrency) or any(b < 1 for b in batch_sizes):
        raise UserError("--concurrency and --batch-sizes take positive integers")
    problem = TritonRunner.unavailable()
    if problem:
        raise UserError(f"backend triton is not available: {problem}")


def _time_clients(
    path: Path, url: str, model: str, protocol: str, x: Any, clients: int, requests: int
) -> dict[str, Any]:
    """`clients` TritonRunners sending `requests` calls of `x` each at once: the timing core's stats of all calls."""
    runners = [TritonRunner(path, url=url, model=model, protocol=protocol).activate() for _ in range(clients)]
    try:
        samples = concurrent([partial(r.infer, x) for r in runners], requests)
    finally:
        for r in runners:
            r.deactivate()
    return {**latency_stats(samples, len(x), clients), "concurrency": clients}


def print_table(records: list[dict[str, Any]]) -> None:
    """The figures as one rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="through Triton (local server) vs in-process ONNX Runtime")
    for col in ("variant", "batch", "clients", "p50 ms", "p99 ms", "images/s", "in-process p50 ms"):
        table.add_column(col)
    for r in records:
        ip = r["in_process_p50_ms"]
        table.add_row(
            r["variant"],
            str(r["batch"]),
            str(r["concurrency"]),
            f"{r['p50_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['throughput']:,.0f}",
            "-" if ip is None else f"{ip:.4f}",
        )
    console = Console()
    console.print(table)
    for r in served_speedups(records):
        in_process = "" if r["in_process"] is None else f"; in process {r['in_process']:.2f}× (its own engine)"
        console.print(
            f"served speedup, batch {r['batch']}, {r['concurrency']} client(s): dense / chosen ({r['chosen']}, served as "
            f"its ONNX file) {r['served']:.2f}×{in_process}"
        )
