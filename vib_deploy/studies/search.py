"""`vib-deploy search PIPELINE --targets 2,3,4` (speedups on deploy.target) or `--flops 0.5,0.25,0.1`: one candidate
run per cost target (`train.vib.target`), all from one dense stage, and the fastest within the error budget chosen.

- Candidates are normal run directories, `runs/<name>[-<tag>]-<kind><value>-s<seed>/`, made by `common.run_point`:
  the seed's dense stage is trained once in `runs/<name>[-<tag>]-dense-s<seed>/` and copied into each (the sweep's
  mechanism), so every candidate starts from the same dense.pt and shares one error budget.
- First every candidate is trained, pruned and exported (`until` the stage before bench: side by side on the
  Ray executor, `studies/units.py`); then each is benched and reported alone, one after another, with nothing else
  running: the interval of each is logged in search.json (`bench_utc`).
- The choice: the candidate whose chosen deployment (`deploy.choose`: deploy.target, or the fastest within the
  budget) is the fastest, among those within deploy.max_error_increase by VALIDATION error. Test errors are
  shown, read once per net by the run's own stages; they choose nothing.
- Written to `--out` (default `runs/<name>[-<tag>]-search-<kind>/`): search.json, search.md (the table) and
  search.png (measured speedup and validation / test error per target). `vib-deploy package <that folder>` ships
  the chosen candidate, named after the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vib_deploy.config import PipelineConfig, load_config
from vib_deploy.errors import UserError
from vib_deploy.records import RunSummary
from vib_deploy.records.search import SearchRecord
from vib_deploy.report.plots import pyplot, save_png
from vib_deploy.runs.directory import RunDir, atomic_write_text
from vib_deploy.studies.common import RUNS, Echo, dense_dir, override_tag
from vib_deploy.studies.executor import ExecutorOptions
from vib_deploy.studies.units import Plan

KINDS = ("speedup", "flops")


def candidate_config(pipeline: Path, overrides: Sequence[str], kind: str, value: float) -> PipelineConfig:
    """The pipeline with `--set` overrides, then this candidate's `train.vib.target`."""
    return load_config(pipeline, [*overrides, f"train.vib.target.{kind}={value!r}"])


def candidate_dir(config: PipelineConfig, kind: str, value: float, runs: Path = RUNS, tag: str = "") -> Path:
    return runs / f"{config.name}{tag}-{kind}{value:g}-s{config.train.seed}"


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def search(
    pipeline: Path,
    kind: str,
    values: Sequence[float],
    overrides: Sequence[str] = (),
    out: Path | None = None,
    runs: Path = RUNS,
    progress: Any = None,
    echo: Echo = print,
    executor: ExecutorOptions = ExecutorOptions(),
) -> SearchRecord:
    """Train every candidate (on `executor`: side by side on Ray), then bench them one at a time, choose, and write
    search.json/.md/.png to `out`."""
    if kind not in KINDS or not values:
        raise UserError(f"search needs target values of one kind: {' or '.join(KINDS)}")
    tag = override_tag(overrides)
    configs = [candidate_config(pipeline, overrides, kind, v) for v in values]
    dirs = [candidate_dir(c, kind, v, runs, tag) for c, v in zip(configs, values)]
    plan = Plan(runs, tag)
    for config, value, directory in zip(configs, values, dirs):
        plan.point(config, f"{directory.name}: train.vib.target {kind} {value:g}", directory)
    results = plan.run(executor, echo, progress)  # trainings may run side by side; benches one at a time, alone
    benches = [results[f"{d} bench"] for d in dirs]
    intervals = [(b.started, b.ended) for b in benches]
    rows = [_row(RunDir(d), kind, v, i) for d, v, i in zip(dirs, values, intervals)]
    record = _choose(configs[0], kind, rows, dense_dir(configs[0], runs, tag))
    out = out or runs / f"{configs[0].name}{tag}-search-{kind}"
    out.mkdir(parents=True, exist_ok=True)
    record.write(out / SearchRecord.FILE)
    plot_search(record, out / "search.png")
    atomic_write_text(out / "search.md", render_search(record))
    return record


def _row(run: RunDir, kind: str, value: float, interval: tuple[float, float]) -> dict[str, Any]:
    """One candidate: its target and what it reached, its chosen deployment and errors, when it was benched."""
    s = RunSummary.read(run)
    choice, target = s.choice, s.vib.target or {}
    chosen = choice.chosen if choice is not None else None
    return {
        "run_dir": str(run.path),
        "kind": kind,
        "value": value,
        "reached": target.get("reached"),
        "within_target": target.get("within"),
        "architecture": s.pruned.architecture,
        "flops": s.pruned.flops,
        "dense_flops": s.dense.flops,
        "deployment": None if chosen is None else f"{chosen.engine}-{chosen.precision}@{chosen.batch}",
        "p50_ms": None if chosen is None else chosen.p50_ms,
        "speedup": None if choice is None else choice.speedup,  # measured: best dense p50 / chosen p50
        "val_error": None if chosen is None else chosen.val_error,
        "test_error": None if chosen is None else chosen.error,
        "deployed_val_error": s.finetuned.val_error if s.finetuned else s.pruned.val_error,
        "deployed_test_error": s.deployed_error,
        "budget": None if choice is None else choice.budget,
        "why_none": None if choice is None else choice.why_none,
        "bench_utc": [_utc(interval[0]), _utc(interval[1])],
    }


def _choose(config: PipelineConfig, kind: str, rows: list[dict[str, Any]], dense: Path) -> SearchRecord:
    """The fastest candidate whose chosen deployment is within the budget (validation error)."""
    within = [r for r in rows if r["p50_ms"] is not None]
    best = min(within, key=lambda r: r["p50_ms"]) if within else None
    budget = next((r["budget"] for r in rows if r["budget"] is not None), None)
    why = None if best else "no candidate has a pruned deployment within the error budget (validation)"
    return SearchRecord(config.name, kind, str(dense), budget, rows, best["run_dir"] if best else None, why)


def render_search(record: SearchRecord) -> str:
    """search.md: one row per target, the chosen one marked."""
    unit = "×" if record.kind == "speedup" else " of dense FLOPs"
    lines = [
        f"# {record.name}: search over train.vib.target {record.kind}",
        "",
        f"Every candidate starts from one dense stage ({record.dense_run}). Chosen: the fastest deployment within the "
        f"error budget by validation error ({'–' if record.budget is None else f'{record.budget:.2%}'}); test errors "
        "are reported, never used to choose.",
        "",
        "| target | reached | kept | KFLOPs | deployment | p50 ms | measured speedup | val error | test error | run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    for r in record.candidates:
        mark = " **chosen**" if r["run_dir"] == record.chosen else ""
        reached = "–" if r["reached"] is None else f"{r['reached']:.3g}"
        lines.append(
            f"| {r['value']:g}{unit} | {reached} | {'-'.join(map(str, r['architecture']))} | {r['flops'] / 1e3:.1f} | "
            f"{r['deployment'] or '– (' + str(r['why_none']) + ')'} | {fmt(r['p50_ms'], '.4f')} | "
            f"{fmt(r['speedup'], '.2f')} | {fmt(r['val_error'], '.2%')} | {fmt(r['test_error'], '.2%')} | "
            f"`{r['run_dir']}`{mark} |"
        )
    ship = f"`vib-deploy package <this folder>` ships `{record.chosen}`" if record.chosen else record.why_none
    return "\n".join([*lines, "", f"{ship}.", "", "![search](search.png)", ""])


def plot_search(record: SearchRecord, path: Path) -> None:
    """Measured speedup (left) and validation / test error (right) per target."""
    rows = [r for r in record.candidates if r["p50_ms"] is not None] or record.candidates
    x = [r["value"] for r in rows]
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(10, 4))
    left.plot(x, [r["speedup"] or 0 for r in rows], "o-")
    if record.kind == "speedup":
        left.plot(x, x, ":", color="#999999", label="target")
        left.legend(fontsize=7)
    left.set_ylabel("measured speedup (best dense p50 / chosen p50)")
    right.plot(x, [100 * (r["val_error"] or 0) for r in rows], "o-", label="validation (chooses)")
    right.plot(x, [100 * (r["test_error"] or 0) for r in rows], "s--", label="test (reported)")
    if record.budget is not None:
        right.axhline(100 * record.budget, color="#d62728", lw=0.8, label="budget (validation)")
    right.set_ylabel("error (%)")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.set_xlabel(f"train.vib.target {record.kind}")
    fig.suptitle(f"{record.name}: search over {record.kind} targets", fontsize=9)
    save_png(fig, path)
