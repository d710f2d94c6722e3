"""What a stage is (`Stage`) and what it gets (`Context`): a leaf module, so stage functions are typed.

A stage is a function `run(ctx) -> [artifact names]` plus the facts the pipeline needs to cache and order it;
`stages/registry.py` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vib_deploy.config import PipelineConfig
from vib_deploy.runs.directory import RunDir


@dataclass
class Context:
    """What a stage gets: the run directory, the resolved config, and shared lazily-loaded data."""

    run: RunDir
    config: PipelineConfig
    progress: Any = None
    key: str = ""  # the running stage's cache key (training checkpoints are tagged with it)
    stage: str = ""  # the running stage, whose outputs `out` stages until they are committed
    _splits: Any = field(default=None, repr=False)

    def out(self, name: str) -> Path:
        """Where the running stage writes output `name` (moved into the run directory when the stage commits)."""
        path = self.run.staged(self.stage, name)
        path.parent.mkdir(parents=True, exist_ok=True)  # for writers that put temporary files beside their output
        return path

    def splits(self) -> Any:
        """The dataset's splits (`data.Splits`), loaded on first use."""
        if self._splits is None:
            from vib_deploy.data.datasets import splits_of

            self._splits = splits_of(self.config.data)
        return self._splits


def _always(config: PipelineConfig) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, as the registry lists it."""

    name: str
    needs: tuple[str, ...]  # stages whose outputs this one reads
    section: Callable[[PipelineConfig], Any]  # the config that keys this stage
    run: Callable[[Context], list[str]]  # does the work, returns the artifact names it wrote
    help: str = field(default="", kw_only=True)  # its CLI command's help
    uses_data: bool = field(default=False, kw_only=True)  # the dataset's files are inputs too
    all_ranks: bool = field(default=False, kw_only=True)  # under torchrun every rank runs it (training)
    after: tuple[str, ...] = field(default=(), kw_only=True)  # read when they have run (keyed only then)
    # stages it needs only under some settings (keyed only then, so runs without the setting keep their keys)
    needs_when: Callable[[PipelineConfig], tuple[str, ...]] = field(default=lambda c: (), kw_only=True)
    enabled: Callable[[PipelineConfig], bool] = field(default=_always, kw_only=True)  # `run` skips one turned off
    refused_when_off: str = field(default="", kw_only=True)  # off, running it alone is refused with this reason
    command: bool = field(default=True, kw_only=True)  # `vib-deploy <name> RUN_DIR` (False: a command of its own)
    peer: bool = field(default=False, kw_only=True)  # peer runs (studies/compare) run it unchanged
