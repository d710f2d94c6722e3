"""What the command modules share: the progress display, status lines on stderr, common arguments."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

RUN_DIR = typer.Argument(..., help="A run directory, e.g. runs/mnist-lenet300.")
SEEDS = typer.Option(
    "0", "--seeds", help="Seeds, comma-separated: every figure is reported per seed and as mean ± std."
)

# where a study's units run (sweep, compare, paper, search): command-line options only, never in a config or cache key
EXECUTOR = typer.Option(
    None,
    "--executor",
    envvar="VIB_DEPLOY_EXECUTOR",
    help="serial (one run after another here) or ray (Ray Core tasks); default: ray when installed, else serial.",
)
ADDRESS = typer.Option(
    None,
    "--address",
    help="ray: unset, a private local instance; auto, the running cluster here; or host:port / ray://host:port.",
)
CPUS_PER_RUN = typer.Option(
    None, "--cpus-per-run", help="CPUs (torch threads) of each run; default: ray 1, serial torch's own."
)
GPUS_PER_RUN = typer.Option(0.0, "--gpus-per-run", help="ray: GPUs of each run (fractions share a GPU).")
RUNS = typer.Option(
    Path("runs"), "--runs", help="Folder of the run directories (on a cluster: one every node sees, e.g. NFS)."
)


@contextlib.contextmanager
def progress() -> Iterator[Any]:
    """A rich progress display (None on torchrun's other ranks)."""
    from vib_deploy.training.distributed import is_main

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


def echo(message: str) -> None:
    """A status line on stderr ([run], [cached], ...)."""
    typer.echo(message, err=True)
