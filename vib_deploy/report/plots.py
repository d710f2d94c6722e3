"""Headless matplotlib for the PNGs vib-deploy writes (report, sweep, compare): Agg backend, atomic saves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vib_deploy.runs.directory import atomic_write


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed); imported on first use (matplotlib is heavy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path) -> None:
    """Write `fig` to `path` atomically (110 dpi, tight box) and close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    pyplot().close(fig)
