"""A study's units as Ray Core tasks (`--executor ray`): a private local instance by default, a cluster by address.

One task per unit (`num_cpus`, `num_gpus`, a fresh worker process each: `max_calls=1`), submitted once the units it
runs after are done; Ray retries a task whose worker or node died (`max_retries`), never one that raised (a
`UserError` is the user's to fix). Bench units run after every other unit, one at a time, on the node of the first
(soft affinity: another node only if that one is gone). The driver prints each unit's lines when it finishes.

Ray is imported here only. Pitfalls handled: `ray.init()` is always given an address (a bare one attaches silently
to `RAY_ADDRESS` or any running instance); a private instance keeps its sockets under a short `/tmp/vr-*` (Unix
socket paths are limited to 107 bytes); Ray sets `OMP_NUM_THREADS` from `num_cpus` and a unit sets torch's threads to
its CPUs; `ray.shutdown()` runs in a `finally` (Ctrl-C: outstanding tasks cancelled, then shut down).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from vib_deploy.errors import UserError, first_line
from vib_deploy.studies.unit import Echo, ExecutorOptions, Unit, UnitResult, execute

RETRIES = 3  # a unit whose worker or node died runs again (its run directory resumes)
OBJECT_STORE = 200 * 1024**2  # a private instance: units return small results


def run_on_ray(units: Sequence[Unit], options: ExecutorOptions, echo: Echo) -> dict[str, UnitResult]:
    """Connect (or start a private instance), run the units, disconnect (and stop what was started)."""
    import ray  # pyright: ignore[reportMissingImports]

    owned, temp = _connect(ray, options, echo)
    try:
        return _Schedule(ray, units, options, echo).run()
    finally:
        if owned:
            ray.shutdown()
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


def _connect(ray: Any, options: ExecutorOptions, echo: Echo) -> tuple[bool, str | None]:
    """(whether we connected, so we disconnect; our private instance's temp dir). Says the executor: the first line."""
    cpus = options.cpus_per_run or 1
    per_run = f"{cpus} CPU(s){f', {options.gpus_per_run:g} GPU(s)' if options.gpus_per_run else ''} per run"
    if ray.is_initialized():  # the caller's own connection (e.g. a test's instance): used, left open
        echo(f"executor: ray (this process's Ray instance, {_resources(ray)}; {per_run})")
        return False, None
    temp = None
    try:
        if options.address is None:
            temp = tempfile.mkdtemp(prefix="vr-", dir="/tmp")
            quiet = logging.getLogger("ray._private.authentication.authentication_token_setup")
            quiet.setLevel(logging.ERROR)  # "token authentication is enabled": a private instance's default, no news
            ray.init(
                address="local",
                _temp_dir=temp,
                include_dashboard=False,
                object_store_memory=OBJECT_STORE,
                logging_level=logging.WARNING,
            )
            where = "a private local instance"
        else:
            ray.init(address=options.address, logging_level=logging.WARNING)
            where = f"the cluster at {options.address}"
    except (ConnectionError, RuntimeError, ValueError) as e:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
        if options.address == "auto":
            raise UserError(
                "--address auto: no running Ray cluster found here (`ray start --head` starts one; "
                "leave --address out for a private local instance)"
            ) from None
        raise UserError(f"--address {options.address}: cannot connect to Ray ({first_line(e)})") from None
    echo(f"executor: ray ({where}, {_resources(ray)}; {per_run})")
    return True, temp


def _resources(ray: Any) -> str:
    total = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return f"{nodes} node(s), {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs"


def _on_worker(name: str, work: Any, cpus: int, cwd: str) -> UnitResult:
    """The task: one unit in this fresh worker, with the id of the node it ran on (for the benches' affinity)."""
    import ray  # pyright: ignore[reportMissingImports]

    result = execute(name, work, cpus, cwd)
    return replace(result, node=ray.get_runtime_context().get_node_id())


class _Schedule:
    """The driver's loop: submit what is ready, print what finished, benches last and one at a time."""

    def __init__(self, ray: Any, units: Sequence[Unit], options: ExecutorOptions, echo: Echo):
        self.ray, self.units, self.options, self.echo = ray, list(units), options, echo
        self.task = ray.remote(
            num_cpus=options.cpus_per_run or 1,
            num_gpus=options.gpus_per_run,
            max_calls=1,  # a fresh worker per unit: its threads, CUDA device and memory are its own
            max_retries=RETRIES,
            retry_exceptions=False,
        )(_on_worker)
        self.cwd = os.getcwd()  # relative paths (runs/, data.root, sqlite:///mlflow.db) mean the driver's
        self.done: dict[str, UnitResult] = {}
        self.running: dict[Any, Unit] = {}  # ObjectRef -> unit

    def run(self) -> dict[str, UnitResult]:
        try:
            training = [u for u in self.units if not u.bench]
            while len(self.done) < len(training):
                for unit in training:
                    if self._ready(unit):
                        self._submit(unit)
                self._collect()
            node = None
            for unit in (u for u in self.units if u.bench):  # one at a time, on one node
                self._submit(unit, node)
                node = self._collect().node
            return self.done
        except BaseException:  # a failed unit, Ctrl-C: what still runs is stopped (its run directory resumes)
            for ref in self.running:
                self.ray.cancel(ref, force=True)
            raise

    def _ready(self, unit: Unit) -> bool:
        waiting = unit.name in self.done or unit in self.running.values()
        return not waiting and all(name in self.done for name in unit.after)

    def _submit(self, unit: Unit, node: str | None = None) -> None:
        options: dict[str, Any] = {"name": unit.name[-60:]}
        if node:
            from ray.util.scheduling_strategies import (  # pyright: ignore[reportMissingImports]
                NodeAffinitySchedulingStrategy,
            )

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=True)
        ref = self.task.options(**options).remote(unit.name, unit.work, self.options.cpus_per_run or 1, self.cwd)
        self.running[ref] = unit

    def _collect(self) -> UnitResult:
        """Wait for one running unit to finish; print its lines; raise its error."""
        ready, _ = self.ray.wait(list(self.running), num_returns=1)
        unit = self.running.pop(ready[0])
        try:
            result = self.ray.get(ready[0])
        except self.ray.exceptions.RayTaskError as e:  # the unit raised: not retried
            cause = getattr(e, "cause", None)
            if isinstance(cause, UserError):
                raise UserError(str(cause)) from None
            raise e.as_instanceof_cause() from None
        except (self.ray.exceptions.WorkerCrashedError, self.ray.exceptions.NodeDiedError) as e:
            raise UserError(
                f"{unit.name}: its worker died {RETRIES + 1} times ({type(e).__name__}); rerun the same command: "
                "every committed stage is kept"
            ) from None
        self.echo(f"== {unit.title or unit.name} ({result.host}, {result.ended - result.started:.1f} s)")
        for line in result.lines:
            self.echo(line)
        self.done[unit.name] = result
        return result
