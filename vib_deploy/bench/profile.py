"""`vib-deploy profile`: where the latency goes, per node, for a run's dense and pruned models: ONNX Runtime's
profiler on the ONNX files, or OpenVINO's (`--backend openvino`: the ONNX files as the bench runs them, and each
variant's OpenVINO INT8 model where the run made one), grouped by resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vib_deploy.bench.inprocess import Variant, make_input, profile_onnx
from vib_deploy.config import read_run_config
from vib_deploy.data.datasets import splits_of
from vib_deploy.deploy.deployed import deployables, int8_deployment
from vib_deploy.records import QuantizeRecord
from vib_deploy.runs.directory import RunDir


def profile_run(
    run_dir: Path, batch: int, runs: int, threads: int, backend: str = "onnxruntime"
) -> list[tuple[str, list[dict[str, Any]]]]:
    """(model, per-node records) for dense, pruned and, for input-gated nets, pruned_reduced; on OpenVINO also
    each variant's INT8 model (NNCF's IR, else the QDQ file) where the quantize stage ran."""
    from vib_deploy.errors import UserError

    if backend not in ("onnxruntime", "openvino"):
        raise UserError(f"--backend: onnxruntime or openvino, not {backend!r}")
    config = read_run_config(run_dir)
    run = RunDir(run_dir)
    images = splits_of(config.data).x_test[:512]
    quant = QuantizeRecord.read(run) if backend == "openvino" and run.view().ran("quantize") else None
    out = []
    for d in deployables(run, config):
        x = make_input(Variant(d.name, {}, d.kept_pixels), images, batch)
        if backend == "onnxruntime":
            out.append((d.onnx, profile_onnx(run.verified(d.onnx), x, runs, threads)))
            continue
        from vib_deploy.bench.ov_profile import profile_openvino

        files = [d.onnx]
        if quant is not None and d.name in quant.variants:
            files.append(int8_deployment(quant.variants[d.name], "openvino").file)
        out += [(f, profile_openvino(run.verified(f), x, runs, threads)) for f in files]
    return out


def print_profile(profiles: list[tuple[str, list[dict[str, Any]]]], batch: int, top: int | None = None) -> None:
    """One rich table per model: node, op, µs per run, share of the kernel time (OpenVINO: first the time per
    resolution, with its convolutions; then the `top` slowest nodes, all when None)."""
    from rich.console import Console
    from rich.table import Table

    from vib_deploy.bench.ov_profile import by_resolution

    console = Console()
    for name, records in profiles:
        total = sum(r["mean_us"] for r in records)
        if records and "resolution" in records[0]:
            table = Table(title=f"{name}, batch {batch}: {total:.1f} µs per run (OpenVINO PERF_COUNT), by resolution")
            for col in ("resolution", "µs/run", "share", "nodes", "convs"):
                table.add_column(col)
            for g in by_resolution(records):
                table.add_row(
                    g["resolution"], f"{g['mean_us']:.1f}", f"{g['share']:.1%}", str(g["nodes"]), str(g["convs"])
                )
            console.print(table)
        table = Table(title=f"{name}, batch {batch}: {total:.1f} µs of kernel time per run")
        for col in ("node", "op", "µs/run", "share"):
            table.add_column(col)
        for r in records[:top]:
            table.add_row(r["node"], r["op"], f"{r['mean_us']:.2f}", f"{r['share']:.1%}")
        console.print(table)
