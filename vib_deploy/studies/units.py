"""A study as units for `studies/executor.py`: per seed the shared dense run, then each candidate (a VIB point, a
peer) up to the stage before bench, then each candidate's bench; the driver reads the run directories afterwards.

A unit's work is a module-level function with its arguments bound (`functools.partial`), so Ray can pickle it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from vib_deploy.config import PipelineConfig
from vib_deploy.runs.directory import RunDir
from vib_deploy.stages.registry import STAGE_NAMES
from vib_deploy.studies.common import Echo, continue_point, dense_dir, ensure_dense, point_dir
from vib_deploy.studies.executor import ExecutorOptions, Unit, UnitResult, run_units

TRAIN_UNTIL = STAGE_NAMES[STAGE_NAMES.index("bench") - 1]  # a candidate's training unit stops here; its bench follows


def dense_work(config: PipelineConfig, runs: Path, tag: str, echo: Echo, progress: Any) -> None:
    ensure_dense(config, runs, progress, echo, tag)


def point_work(
    config: PipelineConfig, runs: Path, tag: str, directory: Path | None, until: str | None, echo: Echo, progress: Any
) -> None:
    continue_point(config, runs, progress, echo, tag, until, directory)


def peer_work(
    config: PipelineConfig, runs: Path, tag: str, method: str, until: str | None, echo: Echo, progress: Any
) -> None:
    from vib_deploy.studies.peer_run import run_peer

    run_peer(config, RunDir(point_dir(config, runs, tag)), method, progress, echo, until)


@dataclass
class Plan:
    """A study's units, built candidate by candidate; `units_of` a run directory: the units that wrote it."""

    runs: Path
    tag: str = ""
    units: list[Unit] = field(default_factory=list)
    parts: dict[Path, list[str]] = field(default_factory=dict)  # candidate run directory -> its units' names
    benches: list[Unit] = field(default_factory=list)
    configs: list[PipelineConfig] = field(default_factory=list)

    def point(self, config: PipelineConfig, title: str, directory: Path | None = None) -> Path:
        """The VIB point of `config` (its seed's dense unit added once) in `directory` (default: named by its
        kl_factor); returns its run directory."""
        dense, point = dense_dir(config, self.runs, self.tag), directory or point_dir(config, self.runs, self.tag)
        self.configs.append(config)
        if str(dense) not in {u.name for u in self.units}:
            self.units.append(Unit(str(dense), partial(dense_work, config, self.runs, self.tag), title=f"{dense}"))
        work = partial(point_work, config, self.runs, self.tag, directory)
        self._candidate(point, work, str(dense), title)
        self.parts[point].insert(0, str(dense))
        return point

    def peer(self, config: PipelineConfig, method: str, title: str) -> Path:
        """Peer `method` of the VIB point of `config` (added before it); returns its run directory."""
        point = point_dir(config, self.runs, self.tag)
        work = partial(peer_work, config, self.runs, self.tag, method)
        run = Path(f"{point}-{method}")
        self._candidate(run, work, str(point), title)
        return run

    def _candidate(self, run: Path, work: Any, after: str, title: str) -> None:
        train = Unit(str(run), partial(work, TRAIN_UNTIL), after=(after,), title=title)
        bench = Unit(f"{run} bench", partial(work, None), after=(train.name,), bench=True, title=f"{title}: bench")
        self.units.append(train)
        self.benches.append(bench)
        self.parts[run] = [train.name, bench.name]

    def run(self, options: ExecutorOptions, echo: Echo, progress: Any = None) -> dict[str, UnitResult]:
        create_experiments(self.configs)
        return run_units([*self.units, *self.benches], options, echo, progress)

    def lines(self, results: dict[str, UnitResult], run: Path) -> list[str]:
        """Every line the units of candidate `run` (its dense unit included) said."""
        return [line for name in self.parts[run] for line in results[name].lines]


def create_experiments(configs: list[PipelineConfig]) -> None:
    """The MLflow experiments of the study's runs (track.mlflow), made by the driver before any unit starts: units
    on several workers creating one experiment at once would race."""
    settings = {(c.track.mlflow.uri, c.track.mlflow.experiment) for c in configs if c.track.mlflow is not None}
    if settings:
        from vib_deploy.report.tracking import create_experiment

        for uri, experiment in sorted(settings):
            create_experiment(uri, experiment)
