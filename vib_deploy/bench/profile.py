"""`vib-deploy profile`: where the latency goes, per ONNX node, for a run's dense and pruned models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vib_deploy.bench.inprocess import Variant, make_input, profile_onnx
from vib_deploy.config import read_run_config
from vib_deploy.data.datasets import splits_of
from vib_deploy.deploy.deployed import deployables
from vib_deploy.runs.directory import RunDir


def profile_run(run_dir: Path, batch: int, runs: int, threads: int) -> list[tuple[str, list[dict[str, Any]]]]:
    """(variant, ONNX Runtime's per-node records) for dense, pruned and, for input-gated nets, pruned_reduced."""
    config = read_run_config(run_dir)
    run = RunDir(run_dir)
    images = splits_of(config.data).x_test[:512]
    out = []
    for d in deployables(run, config):
        x = make_input(Variant(d.name, {}, d.kept_pixels), images, batch)
        out.append((d.name, profile_onnx(run.verified(d.onnx), x, runs, threads)))
    return out


def print_profile(profiles: list[tuple[str, list[dict[str, Any]]]], batch: int) -> None:
    """One rich table per model: node, op, µs per run, share of the kernel time."""
    from rich.console import Console
    from rich.table import Table

    for name, records in profiles:
        table = Table(
            title=f"{name}.onnx, batch {batch}: {sum(r['mean_us'] for r in records):.1f} µs of kernel time per run"
        )
        for col in ("node", "op", "µs/run", "share"):
            table.add_column(col)
        for r in records:
            table.add_row(r["node"], r["op"], f"{r['mean_us']:.2f}", f"{r['share']:.1%}")
        Console().print(table)
