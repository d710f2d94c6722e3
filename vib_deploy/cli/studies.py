"""The study and GPU-day commands (`sweep`, `compare`, `paper`, `gpu-bench`, `gpu-day`), registered by cli.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from vib_deploy.cli.common import ADDRESS, CPUS_PER_RUN, EXECUTOR, GPUS_PER_RUN, RUN_DIR, RUNS, SEEDS
from vib_deploy.cli.common import echo as _echo
from vib_deploy.cli.common import progress as _progress
from vib_deploy.cli.options import floats as _floats
from vib_deploy.cli.options import int_list as _int_list
from vib_deploy.cli.options import seeds as _seeds
from vib_deploy.errors import UserError


def sweep(
    pipeline: Path = typer.Argument(..., help="Pipeline file."),
    kl_factor: str = typer.Option(..., "--kl-factor", help="kl_factor values, comma-separated, e.g. 1e-4,3e-4,5e-4."),
    seeds: str = SEEDS,
    set_: list[str] | None = typer.Option(None, "--set", help="Override a key for every point."),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for sweep.json, frontier.png and frontier.md (default <runs>/<name>-sweep)."
    ),
    runs: Path = RUNS,
    executor: str | None = EXECUTOR,
    address: str | None = ADDRESS,
    cpus_per_run: int | None = CPUS_PER_RUN,
    gpus_per_run: float = GPUS_PER_RUN,
) -> None:
    """One pipeline over several kl_factor values (dense stage reused): runs/<name>-kl<K>-s<seed>/ and the frontier plot."""
    from vib_deploy.studies.sweep import frontier_rows
    from vib_deploy.studies.sweep import sweep as run_sweep

    kls, seed_list = _floats(kl_factor, "--kl-factor"), _seeds(seeds)
    run_on = _executor(executor, address, cpus_per_run, gpus_per_run)
    with _progress() as progress:
        records = run_sweep(pipeline, kls, seed_list, set_ or [], out, runs, progress, _echo, run_on)
    for row in frontier_rows(records):
        (e, es), (f, fs) = row["error"], row["flops"]
        typer.echo(
            f"kl_factor {row['kl_factor']:g}: error {100 * e:.2f} ± {100 * es:.2f} %, {f / 1e3:.1f} ± {fs / 1e3:.1f} KFLOPs "
            f"({', '.join(row['architectures'])}; seeds {','.join(map(str, row['seeds']))})"
        )


def search(
    pipeline: Path = typer.Argument(..., help="Pipeline file."),
    targets: str | None = typer.Option(
        None, "--targets", help="Speedups on deploy.target, comma-separated, e.g. 2,3,4."
    ),
    flops: str | None = typer.Option(None, "--flops", help="FLOPs fractions of the dense net, e.g. 0.5,0.25,0.1."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a key for every candidate."),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for search.json, search.md and search.png (default runs/<name>-search-<kind>)."
    ),
    runs: Path = RUNS,
    executor: str | None = EXECUTOR,
    address: str | None = ADDRESS,
    cpus_per_run: int | None = CPUS_PER_RUN,
    gpus_per_run: float = GPUS_PER_RUN,
) -> None:
    """One candidate per cost target (train.vib.target) from one dense stage; the fastest within the error budget
    (validation) is chosen, and `vib-deploy package <out>` ships it."""
    from vib_deploy.studies.search import search as run_search

    if (targets is None) == (flops is None):
        raise UserError("search takes one of --targets (speedups on deploy.target) or --flops (fractions)")
    kind, text = ("speedup", targets) if targets is not None else ("flops", flops)
    values = _floats(text or "", "--targets" if kind == "speedup" else "--flops")
    run_on = _executor(executor, address, cpus_per_run, gpus_per_run)
    with _progress() as progress:
        record = run_search(pipeline, kind, values, set_ or [], out, runs, progress, _echo, run_on)
    for r in record.candidates:
        mark = "  <- chosen" if r["run_dir"] == record.chosen else ""
        speed = "–" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        error = "–" if r["val_error"] is None else f"{100 * r['val_error']:.2f} %"
        typer.echo(f"{kind} {r['value']:g}: measured {speed}, val error {error} ({r['run_dir']}){mark}")
    typer.echo(record.why_none or f"chosen: {record.chosen}")


def compare(
    pipeline: Path = typer.Argument(..., help="Pipeline file."),
    methods: str = typer.Option(
        "vib,l1,slimming,random",
        "--methods",
        help="vib plus peers: l1, slimming, random, magnitude, l1-pixels (MLPs), l1-same, random-same (VIB's widths), scratch.",
    ),
    match_flops: bool = typer.Option(
        True, "--match-flops/--no-match-flops", help="Peers pruned to the VIB model's FLOPs (±2 %)."
    ),
    seeds: str = SEEDS,
    set_: list[str] | None = typer.Option(None, "--set", help="Override a key for every run."),
    docs: Path = typer.Option(Path("docs"), "--docs", help="Where comparison.md, comparison.json and img/ go."),
    runs: Path = RUNS,
    executor: str | None = EXECUTOR,
    address: str | None = ADDRESS,
    cpus_per_run: int | None = CPUS_PER_RUN,
    gpus_per_run: float = GPUS_PER_RUN,
) -> None:
    """VIB vs peer pruning methods at matched FLOPs, each exported and benchmarked alike: docs/comparison.{md,json}."""
    from vib_deploy.studies.compare import compare as run_compare

    if not match_flops:
        raise UserError("only --match-flops comparisons are implemented: peers are pruned to the VIB model's FLOPs")
    names = [m.strip() for m in methods.split(",") if m.strip()]
    run_on = _executor(executor, address, cpus_per_run, gpus_per_run)
    with _progress() as progress:
        records = run_compare(pipeline, names, _seeds(seeds), set_ or [], docs, runs, progress, _echo, run_on)
    for r in records:
        typer.echo(
            f"{r['method']:>9} seed {r['seed']}: error {100 * r['error']:.2f} %, {r['flops'] / 1e3:.1f} KFLOPs, "
            f"{'-'.join(map(str, r['architecture']))}  ({r['run_dir']})"
        )
    typer.echo(f"tables: {docs / 'comparison.md'}, {docs / 'comparison.json'}")


def paper(
    pipelines: str = typer.Option(
        "",
        "--pipelines",
        help="Pipeline files, comma-separated (default: the paper pipelines, pipelines/paper-*.yaml).",
    ),
    seeds: str = SEEDS,
    set_: list[str] | None = typer.Option(None, "--set", help="Override a key for every run."),
    out: Path = typer.Option(Path("docs/paper-reproduction.md"), "--out", help="The table (a .json beside it)."),
    runs: Path = RUNS,
    executor: str | None = EXECUTOR,
    address: str | None = ADDRESS,
    cpus_per_run: int | None = CPUS_PER_RUN,
    gpus_per_run: float = GPUS_PER_RUN,
) -> None:
    """The paper's LeNet-300-100 / LeNet-5 figures beside ours (runs reused where current): docs/paper-reproduction.md."""
    from vib_deploy.studies.paper import DEFAULT_PIPELINES
    from vib_deploy.studies.paper import paper as run_paper

    files = [Path(p.strip()) for p in pipelines.split(",") if p.strip()] or list(DEFAULT_PIPELINES)
    run_on = _executor(executor, address, cpus_per_run, gpus_per_run)
    with _progress() as progress:
        records = run_paper(files, _seeds(seeds), set_ or [], out, runs, progress, _echo, run_on)
    for r in records:
        typer.echo(
            f"{r['pipeline']} seed {r['seed']}: {'-'.join(map(str, r['architecture']))}, error {100 * r['error']:.2f} %, "
            f"{r['flops'] / 1e3:.1f} KFLOPs, {r['bytes']:,} bytes"
        )
    typer.echo(f"table: {out}")


def _executor(kind: str | None, address: str | None, cpus: int | None, gpus: float) -> Any:
    """The study's executor options, checked (an unknown kind, `ray` without Ray: one line) before anything runs."""
    from vib_deploy.studies.executor import ExecutorOptions

    options = ExecutorOptions(kind, address, cpus, gpus)
    options.resolved()
    return options


# -- GPU day (vib_deploy/bench/gpu.py, gpu_day.py) --------------------------------------------------
def gpu_bench(
    run_dir: Path = RUN_DIR,
    device: str = typer.Option("cuda", "--device", help="cuda, cuda:N (cpu: the dry run's stand-in)."),
    cases: str = typer.Option(
        "torch-cuda:fp32,torch-cuda-graphs:fp32,aotinductor:fp32",
        "--cases",
        help="backend:precision, comma-separated (precision fp32, bf16 or fp16).",
    ),
    batch_sizes: str = typer.Option("1,8,64,256,1024", "--batch-sizes", help="Batch sizes, comma-separated."),
    rounds: int = typer.Option(10, "--rounds", help="Alternating dense/pruned rounds."),
    iters: int = typer.Option(10, "--iters", help="Timed calls per variant per round."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed calls per variant first."),
    out: Path | None = typer.Option(None, "--out", help="JSON result (default <run_dir>/gpu-bench.json)."),
) -> None:
    """Dense vs pruned on GPU engines (CUDA events, parity, NVML memory); prints the markdown table."""
    from vib_deploy.bench.gpu import bench_gpu, parse_cases
    from vib_deploy.bench.gpu_table import markdown

    result = bench_gpu(
        run_dir,
        parse_cases(cases),
        device,
        _int_list(batch_sizes, "--batch-sizes"),
        rounds,
        iters,
        warmup,
        _echo,
        out or run_dir / "gpu-bench.json",
    )
    typer.echo(markdown(result))


def gpu_day(
    out: Path = typer.Option(
        Path(os.environ.get("OUT", "gpu-day-out")), "--out", help="Where gpu-day.md/.json/.log go ($OUT)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="The same steps on CPU with tiny data (seconds, no GPU)."),
    budget: float = typer.Option(
        540.0, "--budget", help="Seconds for the whole day; later steps are skipped, not overrun."
    ),
    elapsed: float = typer.Option(0.0, "--elapsed", help="Seconds already spent (by scripts/gpu-day.sh installing)."),
    runs: Path = typer.Option(Path("runs/gpu-day"), "--runs", help="Folder for the day's run directories."),
) -> None:
    """Every GPU measurement in one call (see scripts/gpu-day.sh): tests, CUDA training, GPU engines, tables in --out."""
    from vib_deploy.bench.gpu_day import gpu_day as run_day

    run_day(
        out,
        dry_run,
        budget,
        elapsed,
        command=" ".join(["scripts/gpu-day.sh"] + (["--dry-run"] if dry_run else [])),
        runs=runs,
    )
