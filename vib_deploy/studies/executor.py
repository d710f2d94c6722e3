"""Where a study's units run: one after another in this process (`serial`) or as Ray Core tasks (`ray`).

A study (sweep, compare, paper, search) is a list of `Unit`s, one per run directory and phase: the dense stage of a
seed, then its candidates (VIB points, peers) up to the stage before bench, then every bench. `run_units` runs them
in dependency order and returns what each unit's `work` returned, with the lines it echoed and where and when it
ran; the caller (the driver) then reads the run directories and assembles the records. Resume lives in the run
directories (stage cache keys, journaled commits), so a unit that is run again (a retry, a rerun of the command)
redoes only what did not commit.

Both executors keep one order: every training unit once its `after` units are done (Ray: in parallel), then the
`bench` units one at a time, after every other unit, so no training shares the CPU with a measurement. None of the
options here enters a config or a cache key: serial and Ray make the same run directories.

    units = [Unit("runs/a-dense-s0", partial(work_a)), Unit("runs/a-kl1e-3-s0", partial(work_b), after=("runs/a-dense-s0",))]
    results = run_units(units, ExecutorOptions(kind="ray", cpus_per_run=1), echo=print)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vib_deploy.studies.unit import (  # noqa: F401 (the executor's interface, re-exported for the studies)
    RAY_HINT,
    Echo,
    ExecutorOptions,
    Unit,
    UnitResult,
    execute,
    ray_missing,
)


def check_units(units: Sequence[Unit]) -> None:
    """Unique names; every `after` names an earlier unit; no training unit waits for a bench."""
    seen: dict[str, Unit] = {}
    for unit in units:
        if unit.name in seen:
            raise ValueError(f"two units named {unit.name!r}")
        for name in unit.after:
            if name not in seen:
                raise ValueError(f"unit {unit.name!r} runs after {name!r}, which is not an earlier unit")
            if seen[name].bench and not unit.bench:
                raise ValueError(f"unit {unit.name!r} cannot wait for the bench unit {name!r}")
        seen[unit.name] = unit


def run_units(
    units: Sequence[Unit], options: ExecutorOptions = ExecutorOptions(), echo: Echo = print, progress: Any = None
) -> dict[str, UnitResult]:
    """Run every unit (see the module docstring); the first line said is the executor. A unit's UserError is
    raised here (not retried); a unit whose worker or node died is retried by Ray."""
    check_units(units)
    kind = options.resolved()
    if kind == "ray":
        from vib_deploy.studies.ray_executor import run_on_ray

        return run_on_ray(units, options, echo)
    hint = "" if ray_missing() is None else f"; {RAY_HINT} runs them in parallel"
    threads = f", {options.cpus_per_run} thread(s) per run" if options.cpus_per_run else ""
    echo(f"executor: serial (one run after another in this process{threads}{hint})")
    order = [u for u in units if not u.bench] + [u for u in units if u.bench]
    results = {}
    for unit in order:
        echo(f"== {unit.title or unit.name}")
        results[unit.name] = execute(unit.name, unit.work, options.cpus_per_run, None, echo, progress)
    return results
