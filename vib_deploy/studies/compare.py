"""VIB against peer pruning methods at matched FLOPs, each exported and benchmarked by the same stages.

Per seed: the VIB point `runs/<name>-kl<K>-s<seed>/` (see `common.run_point`), then one run directory
per peer, `runs/<name>-kl<K>-s<seed>-<method>/`, holding a copy of the VIB run's dense stage, a `prune`
stage of its own (`peer_stage.peer_prune`: prune to the VIB FLOPs, fine-tune) and the pipeline's own
`export` and `bench` stages, cached like any run. The records of every run go to
`docs/comparison.json` (records of other pipelines, methods or seeds already there are kept) and the tables, mean ± std
over seeds and per seed, to `docs/comparison.md`, plots to `docs/img/`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vib_deploy.errors import UserError
from vib_deploy.measure.machine import cpu_label
from vib_deploy.measure.timing import speedup
from vib_deploy.report.plots import pyplot, save_png
from vib_deploy.report.stats import paired
from vib_deploy.runs.directory import RunDir, atomic_write_json, atomic_write_text
from vib_deploy.studies.common import RUNS, Echo, mean_std, override_tag, point_config, point_dir, run_record
from vib_deploy.studies.executor import ExecutorOptions
from vib_deploy.studies.peer_run import per_image_correct, run_peer  # noqa: F401 (run_peer: tests import it here)
from vib_deploy.studies.peers import METHODS, check_methods
from vib_deploy.studies.units import Plan


def compare(
    pipeline: Path,
    methods: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    docs: Path = Path("docs"),
    runs: Path = RUNS,
    progress: Any = None,
    echo: Echo = print,
    executor: ExecutorOptions = ExecutorOptions(),
) -> list[dict[str, Any]]:
    """Run VIB and every peer for every seed (on `executor`); merge the records into docs/comparison.json; write the
    tables."""
    check_methods(list(methods))
    if "vib" not in methods:
        raise UserError("--methods must include vib: the peers are matched to its FLOPs")
    plan = Plan(runs, override_tag(overrides))
    configs = [point_config(pipeline, overrides, seed) for seed in seeds]
    for config in configs:
        head = f"{config.name} seed {config.train.seed}"
        plan.point(config, f"{head}: vib (kl_factor {config.train.vib.kl_factor:g})")
        for method in (m for m in methods if m != "vib"):
            plan.peer(config, method, f"{head}: {method} at the VIB model's FLOPs")
    plan.run(executor, echo, progress)
    records = []
    for config in configs:  # the driver assembles the records from the run directories
        vib_run = RunDir(point_dir(config, runs, plan.tag))
        vib = {**run_record(vib_run, "vib"), "pipeline_file": str(pipeline), "overrides": list(overrides)}
        records.append(vib)
        vib_correct = per_image_correct(vib_run)
        for method in (m for m in methods if m != "vib"):
            peer_run = RunDir(Path(f"{vib_run.path}-{method}"))
            extra = {"pipeline_file": str(pipeline), "overrides": list(overrides)}
            paired_vib = paired(vib_correct, per_image_correct(peer_run)).to_json()
            records.append({**run_record(peer_run, method), **extra, "vs_vib": paired_vib})
    write_comparison(records, docs)
    return records


def write_comparison(records: list[dict[str, Any]], docs: Path) -> None:
    """Merge into docs/comparison.json (a new record replaces the one of the same pipeline, overrides, method and seed),
    then render the tables and plots from all of them."""
    path = docs / "comparison.json"
    old = json.loads(path.read_text()) if path.is_file() else []

    def ident(r: dict[str, Any]) -> tuple[Any, ...]:
        return _section(r), r.get("method"), r.get("seed")

    new = {ident(r) for r in records}
    merged = [r for r in old if ident(r) not in new] + records
    merged.sort(key=lambda r: (_section(r), _method_order(r["method"]), r["seed"]))
    atomic_write_json(path, merged)
    plots = {
        p: plot_comparison([r for r in merged if _section(r) == p], docs / "img" / f"comparison-{p}.png")
        for p in sorted({_section(r) for r in merged})
    }
    atomic_write_text(docs / "comparison.md", render(merged, {p: f"img/{q.name}" for p, q in plots.items()}))


def _section(r: dict[str, Any]) -> str:
    """Records of one pipeline made with the same --set overrides form one table: <name>[-<override digest>]."""
    return r["pipeline"] + override_tag(r.get("overrides", []))


def _method_order(method: str) -> int:
    return 0 if method == "vib" else 1 + list(METHODS).index(method)


def _title(method: str) -> str:
    return "VIB (Dai et al. 2018)" if method == "vib" else METHODS[method].title


def _pm(values: Sequence[float], fmt: str, scale: float = 1.0) -> str:
    m, s = mean_std([v * scale for v in values])
    return f"{m:{fmt}} ± {s:{fmt}}" if len(values) > 1 else f"{m:{fmt}}"


def _p50(r: dict[str, Any], backend: str, batch: int, variant: str = "pruned") -> float | None:
    return r["p50_ms"].get(f"{backend}/b{batch}/{variant}")


def _speedup(r: dict[str, Any], backend: str, batch: int) -> float | None:
    dense, pruned = _p50(r, backend, batch, "dense"), _p50(r, backend, batch)
    return speedup(dense, pruned) if dense and pruned else None


def summary(group: list[dict[str, Any]], backend: str = "onnxruntime") -> dict[str, str]:
    """One table row: mean ± std over the seeds of a (pipeline, method) group."""
    archs = sorted({"-".join(map(str, r["architecture"])) for r in group})
    row = {
        "seeds": ",".join(str(r["seed"]) for r in group),
        "error": _pm([r["error"] for r in group], ".2f", 100) + " %",
        "kept": " / ".join(archs),
        "kflops": _pm([r["flops"] for r in group], ".1f", 1e-3),
        "params": _pm([r["params"] for r in group], ",.0f"),
        "bytes": _pm([r["bytes"] for r in group], ",.0f"),
    }
    for batch in (1, 64):
        lat = [v for r in group if (v := _p50(r, backend, batch)) is not None]
        sp = [v for r in group if (v := _speedup(r, backend, batch)) is not None]
        ratio = [s * r["flops"] / r["dense_flops"] for r in group if (s := _speedup(r, backend, batch)) is not None]
        row[f"b{batch}"] = _pm(lat, ".4f") if lat else "–"
        row[f"speedup_b{batch}"] = (_pm(sp, ".2f") + "×") if sp else "–"
        row[f"ratio_b{batch}"] = _pm(ratio, ".2f") if ratio else "–"
    return row


DENSE_DRIFT = 0.20  # a peer's dense p50 may differ this much from its VIB run's (same seed, backend, batch)


def dense_drift(group: list[dict[str, Any]], backend: str = "onnxruntime") -> dict[tuple[str, int], dict[int, float]]:
    """Latency integrity: per peer record (method, seed), the batches where its dense p50 differs from the dense p50 of
    the VIB run of the same seed by more than DENSE_DRIFT (ratio - 1). The dense model is the same file in both runs,
    so a drift means the machine changed between them; the speedups stay valid (each run alternates its own dense and
    pruned), but the p50 columns of such rows are not comparable with VIB's."""
    vib = {r["seed"]: r for r in group if r["method"] == "vib"}
    out: dict[tuple[str, int], dict[int, float]] = {}
    for r in group:
        ref = vib.get(r["seed"])
        if r["method"] == "vib" or ref is None:
            continue
        for batch in (1, 64):
            mine, theirs = _p50(r, backend, batch, "dense"), _p50(ref, backend, batch, "dense")
            if mine and theirs and abs(mine / theirs - 1) > DENSE_DRIFT:
                out.setdefault((r["method"], r["seed"]), {})[batch] = mine / theirs - 1
    return out


def verdicts(records: list[dict[str, Any]]) -> list[str]:
    """VIB better / worse / tie against each peer by McNemar's exact test on per-image correctness (discordant
    images pooled over the seed pairs, two-sided, alpha 0.05); a tie is never a win. One line per peer."""
    from vib_deploy.report.stats import ALPHA, Paired, pooled

    lines = [
        f"Verdicts: McNemar's exact test (two-sided, α = {ALPHA:g}) on per-image correctness of VIB's and the peer's "
        "deployed models over the same test images, discordant images pooled over the seed pairs; "
        "not significant = tie (never a win)."
    ]
    vib = [r["error"] for r in records if r["method"] == "vib"]
    for method in sorted({r["method"] for r in records} - {"vib"}, key=_method_order):
        group = [r for r in records if r["method"] == method]
        dv, dp = mean_std(vib)[0], mean_std([r["error"] for r in group])[0]
        head = (
            f"- vs {_title(method)}: VIB {100 * dv:.2f} % vs {100 * dp:.2f} % error "
            f"({100 * (dp - dv):+.2f} points for the peer; {len(vib)} / {len(group)} seeds)"
        )
        if not all("vs_vib" in r for r in group):
            lines.append(f"{head}: **not tested** (records without per-image correctness; rerun `vib-deploy compare`)")
            continue
        test = pooled([Paired(**r["vs_vib"]) for r in group])
        word = {"better": "VIB better", "worse": "VIB worse", "tie": "tie"}[test.verdict()]
        lines.append(
            f"{head}; VIB right and the peer wrong on {test.a_only} images, the reverse on {test.b_only} "
            f"({test.n:,} image pairs), p = {test.p_value:.3g}: **{word}**"
        )
    return lines


def render(records: list[dict[str, Any]], plots: dict[str, str]) -> str:
    """docs/comparison.md."""
    # long function: a markdown template, read top to bottom as the page it writes
    parts = [
        "# VIB vs peer pruning methods at matched FLOPs",
        "",
        "Generated by `vib-deploy compare` (one call per pipeline, named under its heading; every figure below is read",
        "from the run directories it names). Each peer is pruned",
        "from the VIB run's own dense.pt to per-layer widths whose FLOPs match the VIB model's within 2 %, fine-tuned",
        "for the VIB stage's epoch budget (best validation epoch kept), and exported and benchmarked by the same stages (see `vib_deploy/studies/peers.py`).",
        "Peers keep all input pixels except `l1-pixels`, which also drops the pixels with the smallest L1 column norm;",
        "VIB prunes pixels with its input gate (a Gather in the graph), so at equal total FLOPs a pixel-keeping peer",
        "has narrower hidden layers than VIB (the kept column shows input-h1-h2 for the MLP).",
        "Errors: the deployed model on the test set (VIB's fine-tuned net when its `train.finetune` is on, its best",
        "validation epoch; else the pruned net, last epoch), test set used once. Latency: ONNX Runtime CPU, 1 thread, p50, dense and pruned alternating in one process;",
        "speedup = dense p50 / pruned p50 of the same run; measured/ideal = speedup / (dense FLOPs / pruned FLOPs).",
        _gpu_note(),
        "",
    ]
    for pipeline in sorted({_section(r) for r in records}):
        group = [r for r in records if _section(r) == pipeline]
        first = group[0]
        parts += [
            f"## {pipeline} ({first['model']}, dense {'-'.join(map(str, first['dense_architecture']))}, "
            f"{first['dense_flops'] / 1e3:,.1f} KFLOPs, {first['test_samples']:,} test images)",
            "",
            f"Command: `{_command(group)}`",
            *_benched_line(group),
            "",
            "| method | seeds | error (mean ± std) | kept | KFLOPs | params | bytes | ORT p50 b1 ms | ORT p50 b64 ms "
            "| speedup b1 | speedup b64 | measured/ideal b1 | measured/ideal b64 |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for method in sorted({r["method"] for r in group}, key=_method_order):
            s = summary([r for r in group if r["method"] == method])
            parts.append(
                f"| {_title(method)} | {s['seeds']} | {s['error']} | {s['kept']} | {s['kflops']} | {s['params']} | "
                f"{s['bytes']} | {s['b1']} | {s['b64']} | {s['speedup_b1']} | {s['speedup_b64']} | {s['ratio_b1']} | "
                f"{s['ratio_b64']} |"
            )
        reduced = [
            r for r in group if r["method"] == "vib" and _p50(r, "onnxruntime", 64, "pruned_reduced") is not None
        ]
        if reduced:
            b1 = [v for r in reduced if (v := _p50(r, "onnxruntime", 1, "pruned_reduced")) is not None]
            b64 = [v for r in reduced if (v := _p50(r, "onnxruntime", 64, "pruned_reduced")) is not None]
            parts += [
                "",
                f"VIB's `pruned_reduced.onnx` (takes the kept pixels only; the client gathers them, as a peer's "
                f"input is the whole image): ORT p50 b1 {_pm(b1, '.4f')} ms, b64 {_pm(b64, '.4f')} ms. "
                "The table's VIB latency is `pruned.onnx`, which gathers them in the graph.",
            ]
        for backend in sorted({k.split("/")[0] for r in group for k in r["p50_ms"]} - {"onnxruntime"}):
            parts += [
                "",
                f"{backend}: p50 (ms) and measured speedup over the same run's dense model",
                "",
                "| method | p50 b1 | p50 b64 | speedup b1 | speedup b64 |",
                "|---|---|---|---|---|",
            ]
            for method in sorted({r["method"] for r in group}, key=_method_order):
                s = summary([r for r in group if r["method"] == method], backend)
                parts.append(f"| {_title(method)} | {s['b1']} | {s['b64']} | {s['speedup_b1']} | {s['speedup_b64']} |")
        over = [
            r
            for r in group
            for b in (1, 64)
            if (v := _speedup(r, "onnxruntime", b)) and v * r["flops"] / r["dense_flops"] > 1
        ]
        if over:
            parts += [
                "",
                f"measured/ideal above 1 ({len(over)} measurement(s)): the dense model ran slower per FLOP than the "
                "pruned one, as when its larger weights fall out of the caches, which other jobs sharing the CPU make "
                "worse; dense and pruned alternate rounds in one process, so both saw the same load.",
            ]
        drift = dense_drift(group)
        parts += [
            "",
            f"Latency integrity: the dense model is the same file in every run of a seed; a peer run whose dense ORT p50 "
            f"differs by more than {DENSE_DRIFT:.0%} from its VIB run's is flagged below (its p50 columns are not "
            f"comparable with VIB's; its speedups are, being timed against its own dense model in one process). "
            + (
                f"Flagged: {len(drift)} of {sum(r['method'] != 'vib' for r in group)} peer runs."
                if drift
                else "None flagged."
            ),
        ]
        parts += ["", *verdicts(group), "", "Per run:", "", *_per_run(group, drift)]
        if pipeline in plots:
            parts += ["", f"![{pipeline}]({plots[pipeline]})"]
        parts.append("")
    return "\n".join(parts)


def _per_run(group: list[dict[str, Any]], drift: dict[tuple[str, int], dict[int, float]]) -> list[str]:
    """The per-run table of one pipeline's records, a peer's dense-p50 drift flagged."""
    lines = [
        "| method | seed | error | kept | KFLOPs | params | fine-tune epoch kept | ORT b1 ms | ORT b64 ms "
        "| dense p50 vs VIB's run | run directory |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in group:
        flag = drift.get((r["method"], r["seed"]))
        note = (
            "–"
            if r["method"] == "vib"
            else ("**flagged** " + ", ".join(f"b{b} {v:+.0%}" for b, v in flag.items()) if flag else "within 20 %")
        )
        lines.append(
            f"| {r['method']} | {r['seed']} | {100 * r['error']:.2f} % | {'-'.join(map(str, r['architecture']))} | "
            f"{r['flops'] / 1e3:.1f} | {r['params']:,} | {_kept_epoch(r)} | {_fmt(_p50(r, 'onnxruntime', 1))} | "
            f"{_fmt(_p50(r, 'onnxruntime', 64))} | {note} | `{r['run_dir']}` |"
        )
    return lines


def _gpu_note() -> str:
    import torch

    if torch.cuda.is_available():
        return (
            "GPU backends: this machine has a GPU, but the bench stage times CPU backends only (ONNX Runtime's CPU "
            "provider, torch eager on CPU); no GPU figure is in these tables."
        )
    return "GPU backends: not measured (no GPU on the machine that generated this file); every latency here is CPU."


def _benched_line(group: list[dict[str, Any]]) -> list[str]:
    """When and where the section's latencies were measured, from the runs' bench.json (records older than the field
    say nothing)."""
    benched = [r["benched"] for r in group if r.get("benched")]
    if not benched:
        return []
    times = sorted(b["utc"] for b in benched)
    machines = sorted({f"{cpu_label(b)}, {b['cores']} cores" for b in benched})
    span = times[0] if times[0] == times[-1] else f"{times[0]} – {times[-1]}"
    return [
        "",
        f"Benched {span} UTC on {' / '.join(machines)} (each run's bench.json; {len(benched)} of {len(group)} runs).",
    ]


def _command(group: list[dict[str, Any]]) -> str:
    """The compare calls that make these records: one per set of seeds the peers ran on (VIB runs with each)."""
    seeds: dict[str, set[int]] = {}
    for r in group:
        seeds.setdefault(r["method"], set()).add(r["seed"])
    calls: dict[tuple[int, ...], list[str]] = {}
    for method in sorted(set(seeds) - {"vib"}, key=_method_order):
        calls.setdefault(tuple(sorted(seeds[method])), []).append(method)
    alone = seeds.get("vib", set()) - {s for m in seeds if m != "vib" for s in seeds[m]}  # VIB seeds without peers
    if alone:
        calls[tuple(sorted(alone))] = []
    sets = "".join(f" --set {o}" for o in group[0].get("overrides", []))
    pipeline = group[0].get("pipeline_file", "PIPELINE")
    return "` and `".join(
        f"vib-deploy compare {pipeline} --methods {','.join(dict.fromkeys(['vib', *methods]))} --match-flops "
        f"--seeds {','.join(map(str, s))}{sets}"
        for s, methods in calls.items()
    )


def _kept_epoch(r: dict[str, Any]) -> str:
    epoch = r.get("kept_epoch")
    return "–" if epoch is None else f"{epoch} of {r['finetune']['epochs']}" if r.get("finetune") else str(epoch)


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def plot_comparison(records: list[dict[str, Any]], path: Path) -> Path:
    """Left: error vs KFLOPs per method (every seed); right: ORT p50 per method at batch 1 and 64."""
    plt = pyplot()
    methods = sorted({r["method"] for r in records}, key=_method_order)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4))
    for i, m in enumerate(methods):  # FLOPs are matched, so the x axis is the method: mean bar, a dot per seed
        errors = [100 * r["error"] for r in records if r["method"] == m]
        mean, std = mean_std(errors)
        ax.bar(i, mean, yerr=std, capsize=4, color=f"C{i}", alpha=0.6)
        ax.scatter([i] * len(errors), errors, color="black", s=10, zorder=3)
    kflops = mean_std([r["flops"] / 1e3 for r in records if r["method"] == "vib"] or [0.0])[0]
    ax.set_xticks(range(len(methods)), methods, rotation=20, fontsize=8)
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{records[0]['pipeline']}: error at ~{kflops:.1f} KFLOPs (bar: mean ± std, dot: a seed)", fontsize=9)
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        group = [r for r in records if r["method"] == m]
        vals = [
            mean_std([v for r in group if (v := _p50(r, "onnxruntime", b)) is not None] or [0.0])[0] for b in (1, 64)
        ]
        bx.bar([i + j * width for i in range(2)], vals, width, label=m)
    dense = [
        mean_std([v for r in records if (v := _p50(r, "onnxruntime", b, "dense")) is not None] or [0.0])[0]
        for b in (1, 64)
    ]
    for i, d in enumerate(dense):
        bx.hlines(d, i - width / 2, i + width * (len(methods) - 0.5), color="black", label="dense" if i == 0 else None)
    bx.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(2)], ["batch 1", "batch 64"])
    bx.set_yscale("log")
    bx.set_ylabel("ORT CPU p50 (ms)")
    bx.set_title("measured latency (pruned; dense marked)", fontsize=9)
    bx.legend(fontsize=7)
    save_png(fig, path)
    return path
