"""One pipeline over several `kl_factor` values and seeds: the accuracy–FLOPs frontier.

Every point is a normal run directory, `runs/<name>-kl<K>-s<seed>/` (with other `--set` overrides
`runs/<name>-<tag>-kl<K>-s<seed>/`, see `override_tag`), made by `run_pipeline` with
`--set train.seed=S --set train.vib.kl_factor=K`, so `vib-deploy verify/report/profile` work on it.
The dense stage is trained once per seed in `runs/<name>-dense-s<seed>/` and copied into each point
with its manifest entry: the train-dense cache key does not depend on the VIB settings, so the point's
pipeline finds the stage current and reuses the very same dense.pt (same sha256).
"""

from __future__ import annotations

import hashlib
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from vib_deploy.config import PipelineConfig, load_config
from vib_deploy.errors import UserError
from vib_deploy.runs import RunDir, atomic_write_bytes, atomic_write_json, atomic_write_text

Echo = Callable[[str], None]
RUNS = Path("runs")


def parse_floats(text: str, option: str) -> list[float]:
    """'1e-6,3e-6' -> [1e-06, 3e-06]; bad input is one UserError naming the option."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} takes comma-separated numbers, e.g. 1e-5,3e-5; got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise UserError(f"{option} needs at least one number >= 0; got {text!r}")
    return values


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds needs distinct integers; got {text!r}")
    return seeds


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
    entry = src.manifest()["stages"].get(stage)
    if entry is None:
        raise UserError(f"{src.path} has no finished {stage} stage to reuse")
    artifacts = src.manifest()["artifacts"]
    have = dst.manifest()
    if have["stages"].get(stage) == entry and all(
            have["artifacts"].get(n, {}).get("sha256") == artifacts[n]["sha256"] for n in entry["outputs"]) \
            and dst.stage_is_current(stage, entry["key"]):
        return False
    with dst.locked():
        for name in entry["outputs"]:
            atomic_write_bytes(dst.staged(stage, name), src.verified(name).read_bytes())
        dst.commit(stage, entry["key"], list(entry["outputs"]), entry.get("inputs"))
    return True


def ensure_dense(config: PipelineConfig, runs: Path, progress: Any, echo: Echo, tag: str = "") -> RunDir:
    """The seed's shared dense run (trained once, cached afterwards)."""
    from vib_deploy.pipeline import run_pipeline

    return run_pipeline(config, dense_dir(config, runs, tag), None, progress, echo, until="train-dense")


def run_point(config: PipelineConfig, runs: Path = RUNS, progress: Any = None, echo: Echo = print, tag: str = "") -> RunDir:
    """One VIB point through every stage, reusing the seed's dense stage."""
    from vib_deploy.pipeline import run_pipeline

    dense = ensure_dense(config, runs, progress, echo, tag)
    target = RunDir(point_dir(config, runs, tag))
    if copy_stage(dense, target, "train-dense"):
        echo(f"[reuse] train-dense from {dense.path}")
    return run_pipeline(config, target.path, None, progress, echo)


def run_record(run: RunDir, method: str) -> dict[str, Any]:
    """model, method, seed, error, flops, params, bytes, architecture and ORT/torch p50s of a finished run."""
    from vib_deploy.pipeline import read_run_config

    config = read_run_config(run.path)
    prune = run.read_json("prune.json")
    bench = run.read_json("bench.json")
    p50 = {f"{r['backend']}/b{r['batch']}/{r['variant']}": r["p50_ms"] for r in bench["records"]}
    tuned = run.read_json("finetune.json") if config.train.finetune.epochs > 0 else None  # the deployed net's error
    return {
        "model": config.model.name, "pipeline": config.name, "method": method, "seed": config.train.seed,
        "kl_factor": config.train.vib.kl_factor if method == "vib" else None, "run_dir": str(run.path),
        "error": tuned["test_error"] if tuned else prune["test_error"], "error_pruned": prune["test_error"],
        "finetune": {k: tuned[k] for k in ("epochs", "lr", "weight_decay", "best_epoch")} if tuned else None,
        "test_samples": prune["samples"],
        "architecture": prune["architecture"], "dense_architecture": prune["dense_architecture"],
        "flops": prune["pruned"]["flops"], "params": prune["pruned"]["params"], "bytes": prune["pruned"]["params"] * 4,
        "dense_flops": prune["dense"]["flops"], "dense_params": prune["dense"]["params"], "p50_ms": p50,
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def sweep(pipeline: Path, kl_factors: Sequence[float], seeds: Sequence[int], overrides: Sequence[str] = (),
          out: Path | None = None, runs: Path = RUNS, progress: Any = None, echo: Echo = print) -> list[dict[str, Any]]:
    """Run every (kl_factor, seed) point; write sweep.json + the frontier PNG; return the records."""
    records = []
    for seed in seeds:
        for kl in kl_factors:
            config = point_config(pipeline, overrides, seed, kl)
            echo(f"== {config.name}: kl_factor {kl:g}, seed {seed}")
            records.append(run_record(run_point(config, runs, progress, echo, override_tag(overrides)), "vib"))
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

    lines = [f"# {name}: accuracy–FLOPs frontier", "",
             "| kl_factor | seeds | kept (per seed) | test error % | KFLOPs | ORT p50 b1 ms | ORT p50 b64 ms |",
             "|---|---|---|---|---|---|---|"]
    for row in frontier_rows(records):
        lines.append(f"| {row['kl_factor']:g} | {','.join(map(str, row['seeds']))} | {', '.join(row['architectures'])} | "
                     f"{pm(row['error'], '.2f', 100)} | {pm(row['flops'], '.1f', 1e-3)} | {pm(row['ort_b1_ms'], '.4f')} | "
                     f"{pm(row['ort_b64_ms'], '.4f')} |")
    lines += ["", "![frontier](frontier.png)", ""]
    return "\n".join(lines)


def frontier_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per kl_factor: mean ± std over seeds of error, KFLOPs and ORT p50 (pruned, batch 1 and 64)."""
    rows = []
    for kl in sorted({r["kl_factor"] for r in records}):
        group = [r for r in records if r["kl_factor"] == kl]
        row: dict[str, Any] = {"kl_factor": kl, "seeds": [r["seed"] for r in group],
                               "architectures": ["-".join(map(str, r["architecture"])) for r in group]}
        for key, values in (("error", [r["error"] for r in group]), ("flops", [r["flops"] for r in group]),
                            ("ort_b1_ms", [r["p50_ms"].get("onnxruntime/b1/pruned") for r in group]),
                            ("ort_b64_ms", [r["p50_ms"].get("onnxruntime/b64/pruned") for r in group])):
            clean = [v for v in values if v is not None]
            row[key] = mean_std(clean) if clean else None
        rows.append(row)
    return rows


def plot_frontier(records: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Error vs KFLOPs, one point per run (mean ± std per kl_factor), labelled with its ORT b64 p50."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vib_deploy.runs import atomic_write

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["flops"] / 1e3 for r in records], [100 * r["error"] for r in records], s=12, color="#999999",
               label="one seed")
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
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
