"""Shared fixtures: real MNIST (from the user cache or $VIB_DEPLOY_DATA) and small helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    from vib_deploy.data import resolve_root
    from vib_deploy.errors import UserError

    try:
        return resolve_root("mnist", None)
    except UserError as e:
        pytest.skip(f"real MNIST is not available ({e}); `make test` fetches it first")


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m vib_deploy ARGS` the way a user runs the console script."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "vib_deploy", *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, env=full_env, timeout=timeout)


class InterruptAfter:
    """A progress sink for `train` that presses Ctrl-C after `steps` training steps (on every rank alike)."""

    def __init__(self, steps):
        self.steps = steps
        self.console = SimpleNamespace(print=lambda *a, **k: None)

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, task):
        self.steps -= 1
        if self.steps == 0:
            raise KeyboardInterrupt
