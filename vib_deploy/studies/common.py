"""What the study commands (sweep, compare, paper) share: one run per point, its record, mean ± std.

A point is a normal run directory made by `run_pipeline`; the dense stage is trained once per seed in
`runs/<name>[-<tag>]-dense-s<seed>/` and copied into each point with its manifest entry (`copy_stage`).
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vib_deploy.config import PipelineConfig, load_config, read_run_config
from vib_deploy.deploy.deployed import deployable, finetuned
from vib_deploy.errors import UserError
from vib_deploy.pipeline import run_pipeline
from vib_deploy.records import BenchFile, FinetuneRecord, PruneRecord, TrainVibRecord
from vib_deploy.runs.directory import RunDir, atomic_write_bytes

Echo = Callable[[str], None]
RUNS = Path("runs")


def point_config(pipeline: Path, overrides: Sequence[str], seed: int, kl_factor: float | None = None) -> PipelineConfig:
    """The pipeline with `--set` overrides, then this point's seed (and kl_factor)."""
    extra = [f"train.seed={seed}"] + ([f"train.vib.kl_factor={kl_factor!r}"] if kl_factor is not None else [])
    return load_config(pipeline, [*overrides, *extra])


def override_tag(overrides: Sequence[str]) -> str:
    """'' without `--set` overrides, else '-' + 8 hex digits of them: runs made with other settings get other
    directories instead of overwriting these (e.g. a quick sweep with fewer epochs next to the full runs)."""
    if not overrides:
        return ""
    return "-" + hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:8]


def point_dir(config: PipelineConfig, runs: Path = RUNS, tag: str = "") -> Path:
    """runs/<name>[-<tag>]-kl<K>-s<seed>: one VIB point."""
    return runs / f"{config.name}{tag}-kl{config.train.vib.kl_factor:g}-s{config.train.seed}"


def dense_dir(config: PipelineConfig, runs: Path = RUNS, tag: str = "") -> Path:
    return runs / f"{config.name}{tag}-dense-s{config.train.seed}"


def copy_stage(src: RunDir, dst: RunDir, stage: str) -> bool:
    """Copy a finished stage's outputs and manifest entry (same cache key) into `dst`; False if already there."""
    source = src.view()
    entry = source.stages.get(stage)
    if entry is None:
        raise UserError(f"{src.path} has no finished {stage} stage to reuse")
    have = dst.view()
    if (
        have.stages.get(stage) == entry
        and all(have.has(n) and have.sha256(n) == source.sha256(n) for n in entry.outputs)
        and dst.stage_is_current(stage, entry.key)
    ):
        return False
    with dst.locked():
        for name in entry.outputs:
            atomic_write_bytes(dst.staged(stage, name), src.verified(name).read_bytes())
        dst.commit(stage, entry.key, list(entry.outputs), entry.inputs)
    return True


def ensure_dense(config: PipelineConfig, runs: Path, progress: Any, echo: Echo, tag: str = "") -> RunDir:
    """The seed's shared dense run (trained once, cached afterwards)."""
    return run_pipeline(config, dense_dir(config, runs, tag), None, progress, echo, until="train-dense")


def run_point(
    config: PipelineConfig,
    runs: Path = RUNS,
    progress: Any = None,
    echo: Echo = print,
    tag: str = "",
    directory: Path | None = None,
    until: str | None = None,
) -> RunDir:
    """One VIB point through every stage (or `until` one), reusing the seed's dense stage; in `directory` (default
    `point_dir`: named by kl_factor)."""
    ensure_dense(config, runs, progress, echo, tag)
    return continue_point(config, runs, progress, echo, tag, until, directory)


def continue_point(
    config: PipelineConfig,
    runs: Path = RUNS,
    progress: Any = None,
    echo: Echo = print,
    tag: str = "",
    until: str | None = None,
    directory: Path | None = None,
) -> RunDir:
    """One VIB point from its seed's finished dense run (read, not locked: points of a seed run side by side),
    through `until` (None: every stage); in `directory` (default `point_dir`: named by kl_factor)."""
    dense = RunDir(dense_dir(config, runs, tag))
    target = RunDir(directory or point_dir(config, runs, tag))
    if copy_stage(dense, target, "train-dense"):
        echo(f"[reuse] train-dense from {dense.path}")
    return run_pipeline(config, target.path, None, progress, echo, until=until)


def run_record(run: RunDir, method: str) -> dict[str, Any]:
    """model, method, seed, error, flops, params, bytes, architecture and ORT/torch p50s of a finished run."""
    config = read_run_config(run.path)
    prune = PruneRecord.read(run)
    tuned = FinetuneRecord.read(run) if finetuned(config) else None  # the deployed net's error
    vib = TrainVibRecord.read(run) if method == "vib" else None
    bench = BenchFile.read(run)
    return {
        "model": config.model.name,
        "pipeline": config.name,
        "method": method,
        "seed": config.train.seed,
        "kl_factor": config.train.vib.kl_factor if method == "vib" else None,
        "run_dir": str(run.path),
        "error": deployable(run, config, "pruned").error,
        "error_pruned": prune.test_error,
        # what chooses between points: the validation error of the deployed net (VIB runs; the test error is reported once)
        "val_error": tuned.val_error if tuned else vib.val_error if vib else None,
        "finetune": {k: getattr(tuned, k) for k in ("epochs", "lr", "weight_decay", "best_epoch")} if tuned else None,
        # the fine-tune epoch validation kept (0: as pruned): VIB's finetune stage, a peer's own fine-tune
        "kept_epoch": tuned.best_epoch if tuned else prune.peer.kept_epoch if prune.peer else None,
        "test_samples": prune.samples,
        "architecture": _architecture(prune),
        "dense_architecture": prune.dense_architecture,
        "flops": prune.pruned.flops,
        "params": prune.pruned.params,
        "bytes": prune.pruned.params * 4,
        "dense_flops": prune.dense.flops,
        "dense_params": prune.dense.params,
        "p50_ms": bench.p50_by_key(),
        "benched": _benched(run, bench),
    }


def _benched(run: RunDir, bench: BenchFile) -> dict[str, Any]:
    """When (bench.json's write time, UTC) and on what CPU the run's latencies were measured."""
    written = datetime.fromtimestamp((run.path / BenchFile.FILE).stat().st_mtime, timezone.utc)
    return {
        "utc": written.strftime("%Y-%m-%d %H:%M"),
        "cpu": bench.machine.get("cpu"),
        "vector_isa": bench.machine.get("vector_isa"),
        "cores": bench.machine.get("cores"),
    }


def _architecture(prune: PruneRecord) -> list[int]:
    """Kept units per layer, the kept pixels first when the net gathers them (scratch records made before its prune.json
    counted them say 784 there: the count is taken from the kept pixels themselves)."""
    arch = list(prune.architecture)
    if prune.kept_pixels is not None and len(arch) == len(prune.dense_architecture):
        arch[0] = len(prune.kept_pixels)
    return arch


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
