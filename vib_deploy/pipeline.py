"""`run`: the stages of `stages.registry.STAGES` in order, each skipped when current.

Each stage reads the artifacts of the stages it needs (sha256-verified against the manifest) and
writes its own atomically. Its cache key hashes its config section, its inputs' sha256 and the
package version; a rerun skips a stage whose key matches and whose outputs verify.

Under torchrun, rank 0 holds the run lock, decides what is cached and keeps the manifest; the training
stages run on every rank (data-parallel), the others on rank 0 while the other ranks wait.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vib_deploy import __version__
from vib_deploy.config import (
    CONFIG_FILE,
    PipelineConfig,
    apply_override,
    config_to_yaml,
    load_config,
    parse_config,
    read_run_config,
)
from vib_deploy.errors import UserError
from vib_deploy.runs.directory import RunDir, atomic_write_text, stage_key
from vib_deploy.stages.base import Context, Stage
from vib_deploy.stages.registry import STAGE_NAMES, check_enabled, enabled, get_stage, stages_until


def _data_hashes(ctx: Context) -> dict[str, str]:
    return dict(ctx.splits().fingerprint)


def _input_hashes(ctx: Context, stage: Stage) -> dict[str, str]:
    manifest = ctx.run.view()
    hashes: dict[str, str] = {}
    needed = []
    for need in (*stage.needs, *stage.needs_when(ctx.config)):
        if not enabled(need, ctx.config):  # a stage that is off (finetune) is no input: the keys of runs without it
            continue
        entry = manifest.stages.get(need)
        if entry is None:
            raise UserError(f"stage {stage.name} needs stage {need}, which has not run in {ctx.run.path}")
        needed.append(entry)
    needed += [manifest.stages[name] for name in stage.after if manifest.ran(name)]
    for entry in needed:
        for name in entry.outputs:
            ctx.run.verified(name)
            hashes[name] = manifest.sha256(name)
    if stage.uses_data:
        hashes.update(_data_hashes(ctx))
    return hashes


def run_stage(
    ctx: Context, stage: Stage, force: bool = False, echo: Callable[[str], None] = print, fresh: bool = False
) -> bool:
    """Run one stage unless its key matches and outputs verify; returns True when it ran.

    The stage's old record and outputs stay until its new outputs commit (with the config that made them);
    `fresh` also drops the stage's training checkpoint, so training starts over instead of resuming.
    Under torchrun rank 0 decides and records; every rank learns the decision and its errors.
    """
    from vib_deploy.training import distributed

    started = distributed.on_main(lambda: _start_stage(ctx, stage, force, echo, fresh))
    if started is None:
        return False
    ctx.key, ctx.stage = started[0], stage.name
    if stage.all_ranks:
        outputs = stage.run(ctx)
    else:  # one process's work (prune, export, bench, report): the other ranks wait
        outputs = distributed.on_main(lambda: stage.run(ctx))

    def commit() -> None:
        write_config(ctx.run, ctx.config)  # the run directory describes this config from its first new record on
        ctx.run.commit(stage.name, started[0], outputs, started[1])

    distributed.on_main(commit)
    return True


def _stage_key(ctx: Context, stage: Stage) -> tuple[str, dict[str, str]]:
    inputs = _input_hashes(ctx, stage)
    return stage_key(stage.section(ctx.config), inputs, __version__), inputs


def _start_stage(
    ctx: Context, stage: Stage, force: bool, echo: Callable[[str], None], fresh: bool
) -> tuple[str, dict[str, str]] | None:
    """The stage's cache key and input hashes; None when the stage is current."""
    key, inputs = _stage_key(ctx, stage)
    if not force and ctx.run.stage_is_current(stage.name, key):
        echo(f"[cached] {stage.name}")
        return None
    if fresh:
        ctx.run.file(f"{stage.name}.ckpt").unlink(missing_ok=True)
    echo(f"[run] {stage.name}")
    return key, inputs


def _first_to_run(ctx: Context, stages: list[Stage], force: str | None) -> str | None:
    """The first stage that will run (None when every stage is current); reads the data, so bad data fails here."""
    for stage in stages:
        if stage.name == force or not ctx.run.stage_is_current(stage.name, _stage_key(ctx, stage)[0]):
            return stage.name
    return None


def _check_model(ctx: Context) -> None:
    """Build the model, check it against the data and prune a copy exactly (the self-check), before any training."""
    import torch

    from vib_deploy.stages.sources import model_source

    source = model_source(ctx.config)
    images = tuple(ctx.splits().x_train.shape[1:])
    if source.input_shape != images:
        raise UserError(f"the model takes {list(source.input_shape)} but the data's images are {list(images)}")
    with torch.random.fork_rng():  # the caller's random stream stays as it was
        torch.manual_seed(ctx.config.train.seed)  # the very net train-dense will build and train
        source.check(source.dense(), classes=len(ctx.splits().classes))


def _differing_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            k
            for key in sorted(old.keys() | new.keys())
            for k in _differing_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [prefix.rstrip(".")]


def _config_change(run: RunDir, config: PipelineConfig, stages: list[Stage], first: str | None) -> str | None:
    """One line when `config` differs from the run directory's: the keys, and what will rerun."""
    path = run.file(CONFIG_FILE)
    if not path.exists() or path.read_text(errors="replace") == config_to_yaml(config):
        return None
    try:
        keys = _differing_keys(load_config(path).model_dump(), config.model_dump())
        if not keys:
            return None  # the same settings, written by an older version (keys added since): nothing to say
    except UserError:
        keys = []
    names = [s.name for s in stages]
    rest = len(names) - 1 - names.index(first) if first is not None else 0
    later = f" and {rest} later stage{'s' if rest > 1 else ''}" if rest else ""
    reruns = "no stage reruns" if first is None else f"{first}{later} will rerun"
    finished = set(names) <= set(run.view().stages)
    what = f"{', '.join(keys)} {'differs' if len(keys) == 1 else 'differ'}" if keys else f"{CONFIG_FILE} differs"
    return f"{run.path}: {what} from the {'finished run' if finished else 'last run there'}; {reruns}"


def _preflight(ctx: Context, stages: list[Stage], force: str | None, echo: Callable[[str], None]) -> None:
    """Everything that can fail before a stage changes anything: data, model, and saying what a changed config reruns."""
    first = _first_to_run(ctx, stages, force)
    if first == "train-dense":
        _check_model(ctx)
    change = _config_change(ctx.run, ctx.config, stages, first)
    if change:
        echo(change)


@contextlib.contextmanager
def _locked(run: RunDir) -> Iterator[None]:
    """Join torchrun's process group (if any) and hold the run lock; under torchrun rank 0 holds it."""
    from vib_deploy.training import distributed

    with distributed.process_group(), contextlib.ExitStack() as stack:
        distributed.on_main(lambda: stack.enter_context(run.locked()))
        yield


def open_run(config: PipelineConfig, run_dir: Path | None) -> RunDir:
    return RunDir(Path(run_dir) if run_dir else Path("runs") / config.name)


def write_config(run: RunDir, config: PipelineConfig) -> None:
    path = run.file(CONFIG_FILE)
    text = config_to_yaml(config)
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)


def run_pipeline(
    config: PipelineConfig,
    run_dir: Path | None = None,
    force: str | None = None,
    progress: Any = None,
    echo: Callable[[str], None] = print,
    until: str | None = None,
) -> RunDir:
    """Run every stage in order (skipping current ones); `force` reruns from that stage on; `until` stops after
    that stage.

    Nothing in the run directory changes until the data and model have been checked and a stage commits.
    """
    for option, name in (("--force", force), ("--until", until)):
        if name is not None and name not in STAGE_NAMES:
            raise UserError(f"{option} {name!r}: not a stage; stages are {', '.join(STAGE_NAMES)}")
    if force is not None and until is not None and STAGE_NAMES.index(force) > STAGE_NAMES.index(until):
        raise UserError(f"--force {force} comes after --until {until}: nothing would be forced")
    from vib_deploy.training import distributed

    if force is not None:
        check_enabled(force, config)
    run = open_run(config, run_dir)
    stages = stages_until(until)
    with _locked(run):
        ctx = Context(run, config, progress)
        distributed.on_main(lambda: _preflight(ctx, [s for s in stages if s.enabled(config)], force, echo))
        with _tracked(config, run) as track:  # after the checks: a refused run leaves no trace anywhere
            forcing = False
            for stage in stages:
                forcing = forcing or stage.name == force
                if not stage.enabled(config):
                    distributed.on_main(lambda: echo(f"[off] {stage.name}"))  # noqa: B023 (called at once)
                    continue
                run_stage(ctx, stage, force=forcing, echo=echo, fresh=forcing)
                track(stage.name)
        distributed.on_main(lambda: write_config(run, config))  # every stage current: record the config all the same
    return run


@contextlib.contextmanager
def _tracked(config: PipelineConfig, run: RunDir) -> Iterator[Callable[[str], None]]:
    """A callable that logs a finished stage to the experiment tracker (a no-op when tracking is off)."""
    from vib_deploy.training import distributed

    if config.track.mlflow is None or not distributed.is_main():
        yield lambda stage: None
        return
    from vib_deploy.report.tracking import MlflowTracker

    with MlflowTracker(config, run) as tracker:
        yield tracker.log_stage


def run_single(
    run_dir: Path,
    stage_name: str,
    progress: Any = None,
    echo: Callable[[str], None] = print,
    overrides: list[str] | None = None,
) -> RunDir:
    """Run one stage of an existing run directory (always reruns it); `overrides` (`a.b=value`) change its
    config.yaml when the stage commits with them."""
    config = read_run_config(run_dir)
    check_enabled(stage_name, config)
    run = RunDir(Path(run_dir))
    stage = get_stage(stage_name)
    if overrides:
        tree = config.model_dump(mode="json")
        for assignment in overrides:
            apply_override(tree, assignment)
        config = parse_config(tree, f"{Path(run_dir) / CONFIG_FILE} with {' '.join(overrides)}")
    with _locked(run):
        ctx = Context(run, config, progress)
        if stage_name == "train-dense":
            _check_model(ctx)
        run_stage(ctx, stage, force=True, echo=echo)
    return run


def verify_run(run_dir: Path) -> list[str]:
    """Every artifact's sha256 and every stage record of a run directory; returns the artifacts checked."""
    run = RunDir(Path(run_dir))
    names = run.verify_all()
    problems = run.record_problems(list(STAGE_NAMES))
    if problems:
        raise UserError(f"{run_dir}: {'; '.join(problems)}; `vib-deploy run` with its pipeline reruns what is needed")
    return names


def init_run(config_path: Path, overrides: list[str], run_dir: Path | None) -> RunDir:
    """Create a run directory with its resolved config (for running stages one at a time)."""
    from vib_deploy.training import distributed

    config = load_config(config_path, overrides)
    run = open_run(config, run_dir)
    with _locked(run):
        distributed.on_main(lambda: write_config(run, config))
    return run
