"""One pipeline over several `kl_factor` values and seeds: the accuracy–FLOPs frontier.

Every point is a normal run directory, `runs/<name>-kl<K>-s<seed>/` (with other `--set` overrides
`runs/<name>-<tag>-kl<K>-s<seed>/`, see `override_tag`), made by `run_pipeline` with
`--set train.seed=S --set train.vib.kl_factor=K`, so `vib-deploy verify/report/profile` work on it.
The dense stage is trained once per seed in `runs/<name>-dense-s<seed>/` and copied into each point
with its manifest entry: the train-dense cache key does not depend on the VIB settings, so the point's
pipeline finds the stage current and reuses the very same dense.pt (same sha256).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vib_deploy.config import load_config
from vib_deploy.report.plots import pyplot, save_png
from vib_deploy.runs.directory import RunDir, atomic_write_json, atomic_write_text
from vib_deploy.studies.common import RUNS, Echo, mean_std, override_tag, point_config, run_record
from vib_deploy.studies.executor import ExecutorOptions
from vib_deploy.studies.units import Plan


def sweep(
    pipeline: Path,
    kl_factors: Sequence[float],
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    out: Path | None = None,
    runs: Path = RUNS,
    progress: Any = None,
    echo: Echo = print,
    executor: ExecutorOptions = ExecutorOptions(),
) -> list[dict[str, Any]]:
    """Run every (kl_factor, seed) point (on `executor`); write sweep.json + the frontier PNG; return the records."""
    plan = Plan(runs, override_tag(overrides))
    points = []
    for seed in seeds:
        for kl in kl_factors:
            config = point_config(pipeline, overrides, seed, kl)
            points.append(plan.point(config, f"{config.name}: kl_factor {kl:g}, seed {seed}"))
    plan.run(executor, echo, progress)
    records = [run_record(RunDir(point), "vib") for point in points]
    name = load_config(pipeline, list(overrides)).name
    out = out or runs / f"{name}-sweep"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "sweep.json", records)
    plot_frontier(records, out / "frontier.png", f"{name}: accuracy–FLOPs frontier (VIB, kl_factor sweep)")
    atomic_write_text(out / "frontier.md", render_frontier(name, records))
    return records


def render_frontier(name: str, records: Sequence[dict[str, Any]]) -> str:
    """The frontier as a markdown table (mean ± std over seeds), beside frontier.png."""

    def pm(v: tuple[float, float] | None, fmt: str, scale: float = 1.0) -> str:
        return "–" if v is None else f"{v[0] * scale:{fmt}} ± {v[1] * scale:{fmt}}"

    lines = [
        f"# {name}: accuracy–FLOPs frontier",
        "",
        "Validation error chooses between points (the validation split); the test error is the reported figure.",
        "",
        "| kl_factor | seeds | kept (per seed) | val error % | test error % | KFLOPs | ORT p50 b1 ms | ORT p50 b64 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in frontier_rows(records):
        lines.append(
            f"| {row['kl_factor']:g} | {','.join(map(str, row['seeds']))} | {', '.join(row['architectures'])} | "
            f"{pm(row['val_error'], '.2f', 100)} | {pm(row['error'], '.2f', 100)} | {pm(row['flops'], '.1f', 1e-3)} | {pm(row['ort_b1_ms'], '.4f')} | "
            f"{pm(row['ort_b64_ms'], '.4f')} |"
        )
    lines += ["", "![frontier](frontier.png)", ""]
    return "\n".join(lines)


def frontier_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per kl_factor: mean ± std over seeds of error, KFLOPs and ORT p50 (pruned, batch 1 and 64)."""
    rows = []
    for kl in sorted({r["kl_factor"] for r in records}):
        group = [r for r in records if r["kl_factor"] == kl]
        row: dict[str, Any] = {
            "kl_factor": kl,
            "seeds": [r["seed"] for r in group],
            "architectures": ["-".join(map(str, r["architecture"])) for r in group],
        }
        for key, values in (
            ("error", [r["error"] for r in group]),
            ("flops", [r["flops"] for r in group]),
            ("val_error", [r.get("val_error") for r in group]),
            ("ort_b1_ms", [r["p50_ms"].get("onnxruntime/b1/pruned") for r in group]),
            ("ort_b64_ms", [r["p50_ms"].get("onnxruntime/b64/pruned") for r in group]),
        ):
            clean = [v for v in values if v is not None]
            row[key] = mean_std(clean) if clean else None
        rows.append(row)
    return rows


def plot_frontier(records: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Error vs KFLOPs, one point per run (mean ± std per kl_factor), labelled with its ORT b64 p50."""
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    ax.scatter(
        [r["flops"] / 1e3 for r in records],
        [100 * r["error"] for r in records],
        s=12,
        color="#999999",
        label="one seed",
    )
    for row in frontier_rows(records):
        (f, fs), (e, es) = row["flops"], row["error"]
        ax.errorbar(f / 1e3, 100 * e, xerr=fs / 1e3, yerr=100 * es, fmt="o", color="#1f77b4", capsize=3)
        lat = row["ort_b64_ms"]
        note = f"kl {row['kl_factor']:g}" + (f"\nORT b64 {lat[0]:.3f} ms" if lat else "")
        ax.annotate(note, (f / 1e3, 100 * e), textcoords="offset points", xytext=(6, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("KFLOPs per image (pruned, 2×MACs)")
    ax.set_ylabel("test error (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    save_png(fig, path)
