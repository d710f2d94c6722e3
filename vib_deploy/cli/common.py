"""What the command modules share: the progress display, status lines on stderr, common arguments."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import typer

RUN_DIR = typer.Argument(..., help="A run directory, e.g. runs/mnist-lenet300.")
SEEDS = typer.Option(
    "0", "--seeds", help="Seeds, comma-separated: every figure is reported per seed and as mean ± std."
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
