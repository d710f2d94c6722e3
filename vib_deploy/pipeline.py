"""The stage registry and `run`: train-dense -> train-vib -> prune -> export -> [openvino] -> [quantize] -> bench -> report.

openvino and quantize run only when the config turns them on (`enabled`); a stage reads their outputs (and
keys on them) only where they have run (`after`), so runs made before they existed keep their cache keys.

Each stage reads the artifacts of the stages it needs (sha256-verified against the manifest) and
writes its own atomically. Its cache key hashes its config section, its inputs' sha256 and the
package version; a rerun skips a stage whose key matches and whose outputs verify.

Under torchrun, rank 0 holds the run lock, decides what is cached and keeps the manifest; the training
stages run on every rank (data-parallel), the others on rank 0 while the other ranks wait.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from vib_deploy import __version__
from vib_deploy.config import PipelineConfig, apply_override, config_to_yaml, load_config, parse_config
from vib_deploy.errors import UserError
from vib_deploy.runs import RunDir, atomic_write_text, sha256_file, stage_key

CONFIG_FILE = "config.yaml"


@dataclass
class Context:
    """What a stage gets: the run directory, the resolved config, and shared lazily-loaded data."""

    run: RunDir
    config: PipelineConfig
    progress: Any = None
    key: str = ""  # the running stage's cache key (training checkpoints are tagged with it)
    _splits: Any = field(default=None, repr=False)

    def splits(self) -> Any:
        if self._splits is None:
            from vib_deploy.data import splits_of

            self._splits = splits_of(self.config.data)
        return self._splits

    def read_json(self, name: str) -> dict[str, Any]:
        return self.run.read_json(name)


@dataclass(frozen=True)
class Stage:
    name: str
    needs: tuple[str, ...]  # stages whose outputs this one reads
    section: Callable[[PipelineConfig], Any]  # the config that keys this stage
    run: Callable[[Context], list[str]]  # does the work, returns the artifact names it wrote
    uses_data: bool = False  # the dataset's files are inputs too
    all_ranks: bool = False  # under torchrun every rank runs it (training); else rank 0 alone
    after: tuple[str, ...] = ()  # stages whose outputs this one reads when they have run (keyed only then)
    enabled: Callable[[PipelineConfig], bool] = lambda c: True  # `run` skips a stage the config turns off


# Keys added to a section after runs were made: keyed only when set, so existing runs stay cached.
_KEYED_WHEN_SET = {"model": {"factory": None, "kwargs": {}, "input_shape": None, "ignore": []}, "data": {"pad": 0},
                   "bench": {"precisions": None}, "prune": {"round_to": 1}}


def keyed_section(name: str, section: Any) -> dict[str, Any]:
    """A config section as its cache key sees it."""
    later = _KEYED_WHEN_SET.get(name, {})
    return {k: v for k, v in section.model_dump().items() if not (k in later and v == later[k])}


def _train_common(c: PipelineConfig) -> dict[str, Any]:
    t = c.train
    from vib_deploy.models import factory_digest

    factory = {"factory_sha256": factory_digest(c.model.factory)} if c.model.factory else {}  # a changed model file retrains
    return {"model": keyed_section("model", c.model), **factory, "data": keyed_section("data", c.data), "seed": t.seed,
            "batch_size": t.batch_size, "device": t.device}


def _stages() -> list[Stage]:
    from vib_deploy import cpu_deploy as cpu, stages as s

    return [
        Stage("train-dense", (), lambda c: {**_train_common(c), "dense": c.train.dense.model_dump()}, s.train_dense, True, True),
        Stage("train-vib", ("train-dense",), lambda c: {**_train_common(c), "vib": c.train.vib.model_dump()}, s.train_vib, True, True),
        Stage("prune", ("train-vib",), lambda c: {"prune": keyed_section("prune", c.prune), "data": keyed_section("data", c.data),
              **({"auto": {"backend": c.bench.backends[0], "threads": c.bench.threads}} if c.prune.round_to == "auto" else {})},
              s.prune, True),
        Stage("export", ("train-dense", "prune"), lambda c: {"export": c.export.model_dump(), "data": keyed_section("data", c.data)}, s.export, True),
        Stage("openvino", ("prune", "export"), lambda c: {"export": c.export.model_dump(), "data": keyed_section("data", c.data)},
              cpu.openvino_ir, True, enabled=lambda c: "openvino" in c.bench.backends),
        Stage("quantize", ("train-dense", "prune", "export"), lambda c: {"quantize": c.quantize.model_dump(),
              "data": keyed_section("data", c.data)}, cpu.quantize, True, enabled=lambda c: c.quantize.enabled),
        Stage("bench", ("train-dense", "prune", "export"), lambda c: {"bench": keyed_section("bench", c.bench)}, s.bench,
              after=("quantize",)),
        Stage("report", ("train-dense", "train-vib", "prune", "export", "bench"), lambda c: {}, s.report,
              after=("openvino", "quantize")),
    ]


STAGE_NAMES = ["train-dense", "train-vib", "prune", "export", "openvino", "quantize", "bench", "report"]


def _data_hashes(ctx: Context) -> dict[str, str]:
    from vib_deploy.data import SPLIT_FILES, _find_split

    root = ctx.splits().root
    return {f"data:{stem}": sha256_file(p) for stem in SPLIT_FILES.values() if (p := _find_split(root, stem))}


def _input_hashes(ctx: Context, stage: Stage) -> dict[str, str]:
    manifest = ctx.run.manifest()
    hashes: dict[str, str] = {}
    needed = []
    for need in stage.needs:
        entry = manifest["stages"].get(need)
        if entry is None:
            raise UserError(f"stage {stage.name} needs stage {need}, which has not run in {ctx.run.path}")
        needed.append(entry)
    needed += [manifest["stages"][name] for name in stage.after if name in manifest["stages"]]
    for entry in needed:
        for name in entry["outputs"]:
            ctx.run.verified(name)
            hashes[name] = manifest["artifacts"][name]["sha256"]
    if stage.uses_data:
        hashes.update(_data_hashes(ctx))
    return hashes


def run_stage(ctx: Context, stage: Stage, force: bool = False, echo: Callable[[str], None] = print, fresh: bool = False) -> bool:
    """Run one stage unless its key matches and outputs verify; returns True when it ran.

    `fresh` also drops the stage's training checkpoint, so training starts over instead of resuming.
    Under torchrun rank 0 decides and records; every rank learns the decision and its errors.
    """
    from vib_deploy import distributed

    key = distributed.on_main(lambda: _start_stage(ctx, stage, force, echo, fresh))
    if key is None:
        return False
    ctx.key = key
    if stage.all_ranks:
        outputs = stage.run(ctx)
    else:  # one process's work (prune, export, bench, report): the other ranks wait
        outputs = distributed.on_main(lambda: stage.run(ctx))
    distributed.on_main(lambda: ctx.run.finish(stage.name, key, outputs))
    return True


def _start_stage(ctx: Context, stage: Stage, force: bool, echo: Callable[[str], None], fresh: bool) -> str | None:
    """The stage's cache key, its old cache entry dropped; None when the stage is current."""
    key = stage_key(stage.section(ctx.config), _input_hashes(ctx, stage), __version__)
    if not force and ctx.run.stage_is_current(stage.name, key):
        echo(f"[cached] {stage.name}")
        return None
    ctx.run.forget(stage.name)
    if fresh:
        ctx.run.file(f"{stage.name}.ckpt").unlink(missing_ok=True)
    echo(f"[run] {stage.name}")
    return key


@contextlib.contextmanager
def _locked(run: RunDir) -> Iterator[None]:
    """Join torchrun's process group (if any) and hold the run lock; under torchrun rank 0 holds it."""
    from vib_deploy import distributed

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


def read_run_config(run_dir: Path) -> PipelineConfig:
    """The resolved config a run directory was made with."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} not found")
    path = run_dir / CONFIG_FILE
    if not path.exists():
        raise UserError(f"{run_dir} is not a vib-deploy run directory (no {CONFIG_FILE}); start one with `vib-deploy run PIPELINE.yaml`")
    return load_config(path)


def run_pipeline(config: PipelineConfig, run_dir: Path | None = None, force: str | None = None,
                 progress: Any = None, echo: Callable[[str], None] = print, until: str | None = None) -> RunDir:
    """Run every stage in order (skipping current ones); `force` reruns from that stage on."""
    if force is not None and force not in STAGE_NAMES:
        raise UserError(f"--force {force!r}: not a stage; stages are {', '.join(STAGE_NAMES)}")
    from vib_deploy import distributed

    run = open_run(config, run_dir)
    with _locked(run):
        distributed.on_main(lambda: write_config(run, config))
        ctx = Context(run, config, progress)
        forcing = False
        for stage in _stages():
            forcing = forcing or stage.name == force
            if not stage.enabled(config):
                distributed.on_main(lambda: echo(f"[off] {stage.name}"))
                continue
            run_stage(ctx, stage, force=forcing, echo=echo, fresh=forcing)
            if stage.name == until:
                break
    return run


def run_single(run_dir: Path, stage_name: str, progress: Any = None, echo: Callable[[str], None] = print,
               overrides: list[str] | None = None) -> RunDir:
    """Run one stage of an existing run directory (always reruns it); `overrides` (`a.b=value`) change its
    config.yaml once the stage has run with them."""
    config = read_run_config(run_dir)
    run = RunDir(Path(run_dir))
    stage = {s.name: s for s in _stages()}[stage_name]
    if overrides:
        tree = config.model_dump(mode="json")
        for assignment in overrides:
            apply_override(tree, assignment)
        config = parse_config(tree, f"{run_dir / CONFIG_FILE} with {' '.join(overrides)}")
    with _locked(run):
        run_stage(Context(run, config, progress), stage, force=True, echo=echo)
        if overrides:
            write_config(run, config)
    return run


def init_run(config_path: Path, overrides: list[str], run_dir: Path | None) -> RunDir:
    """Create a run directory with its resolved config (for running stages one at a time)."""
    from vib_deploy import distributed

    config = load_config(config_path, overrides)
    run = open_run(config, run_dir)
    with _locked(run):
        distributed.on_main(lambda: write_config(run, config))
    return run

