"""A study's unit of work (`Unit`), where units run (`ExecutorOptions`), and running one unit in this process
(`execute`): what `studies/executor.py` (serial) and `studies/ray_executor.py` (a Ray worker) share."""

from __future__ import annotations

import importlib.util
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vib_deploy.errors import UserError
from vib_deploy.runs import lock

Echo = Callable[[str], None]
Work = Callable[[Echo, Any], Any]  # work(echo, progress) -> anything picklable
KINDS = ("serial", "ray")
RAY_HINT = "pip install 'vib-deploy[ray]'"


@dataclass(frozen=True)
class ExecutorOptions:
    """How to run a study's units (command-line options only: never part of a config or a cache key)."""

    kind: str | None = None  # serial, ray; None: ray when it is installed, else serial
    address: str | None = None  # ray: None a private local instance, "auto" a running cluster, or host:port / ray://
    cpus_per_run: int | None = None  # CPUs (and torch threads) of a unit; None: serial torch's default, ray 1
    gpus_per_run: float = 0.0  # ray: GPUs of a unit (CUDA_VISIBLE_DEVICES set by Ray)

    def resolved(self) -> str:
        """The executor kind to use; `--executor ray` without Ray installed is one line with the install hint."""
        if self.kind not in (None, *KINDS):
            raise UserError(f"--executor {self.kind!r}: choose one of {', '.join(KINDS)}")
        if self.cpus_per_run is not None and self.cpus_per_run < 1:
            raise UserError(f"--cpus-per-run needs a whole number >= 1; got {self.cpus_per_run}")
        if self.gpus_per_run < 0:
            raise UserError(f"--gpus-per-run needs a number >= 0; got {self.gpus_per_run:g}")
        kind = self.kind or ("ray" if ray_missing() is None else "serial")
        if kind == "ray" and ray_missing() is not None:
            raise UserError(f"--executor ray needs Ray, which is not installed here: {RAY_HINT}")
        if kind == "serial" and (self.address is not None or self.gpus_per_run):
            option = "--address" if self.address is not None else "--gpus-per-run"
            why = "Ray is not installed here: " + RAY_HINT if self.kind is None else "add --executor ray"
            raise UserError(f"{option} is an option of the ray executor ({why})")
        return kind


@dataclass(frozen=True)
class Unit:
    """One run directory's work in a study: `work(echo, progress)`, a module-level function or a partial of one
    (Ray pickles it into a fresh worker process)."""

    name: str  # unique in the study, e.g. the run directory (+ " bench" for its bench phase)
    work: Work
    after: tuple[str, ...] = ()  # units that must have finished first (listed before this one)
    bench: bool = False  # a measurement: after every other unit, one at a time, on one node
    title: str = ""  # the line said before its output (default: its name)


@dataclass(frozen=True)
class UnitResult:
    """What a unit returned, the lines it echoed, and where and when it ran."""

    name: str
    value: Any
    lines: tuple[str, ...]
    host: str
    pid: int
    threads: int  # torch's intra-op threads inside the unit
    started: float  # unix time
    ended: float
    node: str = ""  # Ray's node id ('' serial)


def ray_missing() -> str | None:
    """None when `import ray` works here, else the install hint."""
    try:
        if importlib.util.find_spec("ray") is None:
            return RAY_HINT
        import ray  # noqa: F401  # pyright: ignore[reportMissingImports]
    except ImportError:
        return RAY_HINT
    return None


def execute(
    name: str, work: Work, cpus: int | None, cwd: str | None, live: Echo | None = None, progress: Any = None
) -> UnitResult:
    """Run one unit here: `cpus` torch threads (None: leave them), in `cwd` when given (a Ray worker starts in the
    raylet's directory), its echo captured (and passed on to `live`). A lock held from another host, as a retried
    unit finds the one its lost node left, is waited for until it goes stale (or its holder lets go)."""
    import torch

    lines: list[str] = []

    def echo(message: str) -> None:
        lines.append(message)
        if live is not None:
            live(message)

    if cwd is not None and os.path.isdir(cwd):
        os.chdir(cwd)
    before = torch.get_num_threads()
    if cpus is not None:
        torch.set_num_threads(cpus)
    started = time.time()
    try:
        deadline = started + lock.STALE_S + 2 * lock.HEARTBEAT_S
        while True:
            try:
                value = work(echo, progress)
                break
            except lock.LockHeld as e:
                if not e.remote or time.time() > deadline:
                    raise
                echo(f"[wait] {e}")
                time.sleep(min(max(e.stale_in, 1.0), lock.HEARTBEAT_S))
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    return UnitResult(name, value, tuple(lines), socket.gethostname(), os.getpid(), threads, started, time.time())
