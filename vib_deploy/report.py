"""metrics.json (the contract later tools read), report.md, PNG plots, and the final one-screen table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vib_deploy import __version__
from vib_deploy.data import CLASS_NAMES
from vib_deploy.deploy_matrix import headline_short, headlines, plot_speedup_vs_ideal, render_matrix
from vib_deploy.deployed import finetuned
from vib_deploy.plots import pyplot, save_png
from vib_deploy.records import BenchFile, PruneRecord
from vib_deploy.runs import RunDir, atomic_write_json, atomic_write_text

BYTES_PER_PARAM = 4  # fp32


def build_metrics(run: RunDir, config: Any) -> dict[str, Any]:
    """Collect every stage's JSON into the metrics.json contract."""

    dense, vib, export = (run.read_json(n) for n in ("train-dense.json", "train-vib.json", "export.json"))
    pruned, bench = PruneRecord.read(run), BenchFile.read(run)
    tuned = run.read_json("finetune.json") if finetuned(config) else None
    flops_d, flops_p = pruned.dense.flops, pruned.pruned.flops
    params_d, params_p = pruned.dense.params, pruned.pruned.params
    return {
        "model": config.model.name or config.model.factory,
        "dataset": config.data.dataset,
        "version": __version__,
        "test_samples": dense["test_samples"],
        "dense": {
            "error": dense["test_error"],
            "val_error": dense["val_error"],
            "architecture": pruned.dense_architecture,
            "flops": flops_d,
            "params": params_d,
            "bytes": params_d * BYTES_PER_PARAM,
            "epochs": len(dense["history"]),
            "best_epoch": dense["best_epoch"],
            "seconds": dense["seconds"],
        },
        "vib": {
            "error": vib["test_error"],
            "val_error": vib["val_error"],
            "epochs": len(vib["history"]),
            "kl_factor": config.train.vib.kl_factor,
            "seconds": vib["seconds"],
        },
        "pruned": {
            "error": pruned.test_error,
            "architecture": pruned.architecture,
            "flops": flops_p,
            "params": params_p,
            "bytes": params_p * BYTES_PER_PARAM,
            "scales_left": pruned.scales_left,
            **({"round_to": pruned.round_to, "widths": pruned.widths} if pruned.round_to is not None else {}),
        },
        "finetuned": None
        if tuned is None
        else {
            "error": tuned["test_error"],
            **{
                k: tuned[k]
                for k in ("val_error", "pruned_val_error", "epochs", "best_epoch", "lr", "weight_decay", "seconds")
            },
        },
        "deployed": "finetuned.pt" if tuned else "pruned.pt",  # what export, bench and ship use
        "prune": {
            k: getattr(pruned.exact, k, None)
            for k in (
                "max_abs_diff",
                "max_abs_diff_float64",
                "argmax_agreement",
                "reduced_max_abs_diff",
                "reduced_max_abs_diff_float64",
                "tolerance",
                "logit_scale",
                "vib_fp32_rounding",
            )
        }
        | {
            "samples": pruned.samples,
            "float64_samples": getattr(pruned.exact, "float64_samples", None) or pruned.samples,
        },
        "export": {
            "max_abs_diff": max(v["max_abs_diff"] for v in export.values()),
            "argmax_agreement": min(v["argmax_agreement"] for v in export.values()),
            "opset": min(v["opset"] for v in export.values()),
            "variants": export,
        },
        "bench": [r.to_json() for r in bench.records],
        "speedup": bench.speedup,
        "ideal_speedup": flops_d / flops_p,
        "machine": bench.machine,
        "history": {"dense": dense["history"], "vib": vib["history"]},
        # how a client prepares an image (runs before 2026-12 lack it: the IDX datasets' plain [0, 1] scaling)
        "preprocessing": dense.get("preprocessing")
        or {
            "scale": "1/255",
            "pad": config.data.pad,
            "mean": [0.0],
            "std": [1.0],
            "classes": list(CLASS_NAMES.get(config.data.dataset, ())),
        },
        **{
            name: run.read_json(f"{name}.json") for name in ("openvino", "quantize") if name in run.manifest()["stages"]
        },
    }


def arch_string(metrics: dict[str, Any]) -> str:
    return f"{'-'.join(map(str, metrics['dense']['architecture']))} → {'-'.join(map(str, metrics['pruned']['architecture']))}"


def summary_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The final table's rows: one screen that says what was gained."""
    d, v, p = metrics["dense"], metrics["vib"], metrics["pruned"]
    f = metrics.get("finetuned")
    tuned = (" / fine-tuned", f" / {f['error']:.2%}") if f else ("", "")
    rows = [
        (
            f"test error dense / VIB / pruned{tuned[0]}",
            f"{d['error']:.2%} / {v['error']:.2%} / {p['error']:.2%}{tuned[1]}"
            f"  ({metrics['test_samples']:,} test images)",
        ),
        ("architecture kept", arch_string(metrics)),
        (
            "KFLOPs dense → pruned",
            f"{d['flops'] / 1e3:,.1f} → {p['flops'] / 1e3:,.1f}  (ideal speedup {metrics['ideal_speedup']:.1f}×)",
        ),
        ("parameters dense → pruned", f"{d['params']:,} → {p['params']:,}"),
        ("bytes (fp32) dense → pruned", f"{d['bytes']:,} → {p['bytes']:,}"),
        (
            "pruning exact (max |Δlogit|)",
            f"fp32 {metrics['prune']['max_abs_diff']:.2e} (≤ {metrics['prune']['tolerance']:g} × "
            f"{metrics['prune']['logit_scale']:.1f}, {metrics['prune']['samples']:,} images), "
            f"fp64 {metrics['prune']['max_abs_diff_float64']:.1e} ({metrics['prune']['float64_samples']:,} images)",
        ),
        (
            "ONNX parity (max |Δ|, argmax)",
            f"{metrics['export']['max_abs_diff']:.2e}, {metrics['export']['argmax_agreement']:.2%}",
        ),
    ]
    for h in headlines(metrics):
        rows.append((f"b{h['batch']} best dense → pruned", headline_short(h, metrics["ideal_speedup"])))
    return rows


def print_summary(metrics: dict[str, Any]) -> None:
    """Print the final table with rich."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"vib-deploy: {metrics['model']} on {metrics['dataset']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in summary_rows(metrics):
        table.add_row(name, value)
    Console().print(table)


def _plots(out: Callable[[str], Path], metrics: dict[str, Any]) -> list[str]:
    # long function: four small figures (units, latency, training, speedup vs ideal), each a few matplotlib calls
    plt = pyplot()
    written = []

    def save(fig: Any, name: str) -> None:
        save_png(fig, out(name))
        written.append(name)

    dense_arch, kept = metrics["dense"]["architecture"], metrics["pruned"]["architecture"]
    labels = [f"gate {i + 1}" for i in range(len(kept))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(labels, dense_arch, color="#cccccc", label="dense")
    ax.bar(labels, kept, color="#1f77b4", label="kept")
    for i, (n, k) in enumerate(zip(dense_arch, kept)):
        ax.text(i, k, f"{k}/{n}", ha="center", va="bottom")
    ax.set_ylabel("units")
    ax.set_yscale("log")
    ax.set_title("Units kept per gated layer")
    ax.legend()
    save(fig, "plots/units.png")

    fig, axes = plt.subplots(1, len({r["backend"] for r in metrics["bench"]}), figsize=(10, 3.5), squeeze=False)
    for ax, backend in zip(axes[0], sorted({r["backend"] for r in metrics["bench"]})):
        recs = [r for r in metrics["bench"] if r["backend"] == backend and r.get("precision", "fp32") == "fp32"]
        batches = sorted({r["batch"] for r in recs})
        variants = sorted({r["variant"] for r in recs}, key=["dense", "pruned", "pruned_reduced"].index)
        width = 0.8 / len(variants)
        for j, variant in enumerate(variants):
            vals = [next(r["p50_ms"] for r in recs if r["batch"] == b and r["variant"] == variant) for b in batches]
            ax.bar([i + j * width for i in range(len(batches))], vals, width, label=variant)
        ax.set_xticks(
            [i + width * (len(variants) - 1) / 2 for i in range(len(batches))], [f"batch {b}" for b in batches]
        )
        ax.set_ylabel("p50 latency (ms)")
        ax.set_yscale("log")
        ax.set_title(backend)
        ax.legend()
    save(fig, "plots/latency.png")

    fig, ax = plt.subplots(figsize=(5, 4.5))
    plot_speedup_vs_ideal(ax, metrics)
    ax.set_title("Measured vs FLOPs-ideal speedup")
    save(fig, "plots/speedup.png")

    hist = metrics["history"]["vib"]
    epochs = [h["epoch"] for h in hist]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    axes[0].plot(
        [h["epoch"] for h in metrics["history"]["dense"]],
        [h["val_acc"] for h in metrics["history"]["dense"]],
        label="dense",
    )
    axes[0].plot([e + len(metrics["history"]["dense"]) for e in epochs], [h["val_acc"] for h in hist], label="VIB")
    axes[0].set_title("validation accuracy")
    axes[0].set_xlabel("epoch (dense, then VIB)")
    axes[0].legend()
    axes[1].plot(epochs, [h["kl"] for h in hist])
    axes[1].set_yscale("log")
    axes[1].set_title("KL (sum over gates)")
    axes[1].set_xlabel("VIB epoch")
    for i in range(len(hist[0]["units_alive"])):
        axes[2].plot(epochs, [h["units_alive"][i] for h in hist], label=f"gate {i + 1}")
    axes[2].set_yscale("log")
    axes[2].set_title("units alive")
    axes[2].set_xlabel("VIB epoch")
    axes[2].legend()
    save(fig, "plots/training.png")
    return written


def render_markdown(metrics: dict[str, Any], config: Any) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary_rows(metrics))
    bench_rows = "\n".join(
        f"| {r['backend']} | {r['batch']} | {r['variant']} | {r.get('precision', 'fp32')} | {r['p50_ms']:.4f} | {r['p90_ms']:.4f} | {r['p99_ms']:.4f} | "
        f"{r['throughput']:,.0f} | {r['peak_memory_bytes'] if r['peak_memory_bytes'] is not None else 'not measured'} |"
        for r in metrics["bench"]
    )
    limited = " (a limited test set: not comparable with published numbers)" if config.data.test_limit else ""
    f = metrics.get("finetuned")
    tuned = (
        ""
        if not f
        else (
            f"\nFine-tuned {f['epochs']} epochs (Adam lr {f['lr']:g}, weight decay {f['weight_decay']:g}, cosine); validation kept "
            + (f"epoch {f['best_epoch']}." if f["best_epoch"] else "the pruned weights (no epoch beat them).")
            + f" Exported, timed and shipped: `{metrics['deployed']}`."
        )
    )
    m = metrics["machine"]
    pre = metrics["preprocessing"]
    return f"""# vib-deploy report: {config.name}

Model `{metrics["model"]}` on `{metrics["dataset"]}`, kl_factor {metrics["vib"]["kl_factor"]:g},
dense {metrics["dense"]["epochs"]} epochs (best validation epoch {metrics["dense"]["best_epoch"]}), VIB {metrics["vib"]["epochs"]} epochs (last epoch kept).{tuned}

| | |
|---|---|
{rows}

Classes ({len(pre["classes"])}): {", ".join(pre["classes"])}. Input: pixels / 255, zero border {pre["pad"]}, then minus
mean ({", ".join(f"{v:.4f}" for v in pre["mean"])}) and divided by std ({", ".join(f"{v:.4f}" for v in pre["std"])}) per channel (computed on the training split; in every ONNX
model's metadata as `vib_deploy.preprocessing`).

Errors are on the {metrics["test_samples"]:,}-image test set{limited}, measured once per final model.
The validation split (last {config.data.val_size:,} training images) chose the dense {"and fine-tuned epochs" if f else "epoch"}; the test set chose nothing.
Published VIB numbers are the best test error seen during training, which this report does not do.

## Latency (measured on {m["cpu"]}, {m["cores"]} cores, {metrics["bench"][0]["threads"]} thread(s))

Dense and pruned were timed in alternating rounds in one process. `pruned_reduced` takes only the kept
input pixels (indices in its ONNX metadata `vib_deploy.kept_pixels`); `pruned` gathers them in-graph.
Peak memory is the peak-RSS growth of a fresh process that loads the model and runs the batch.

| backend | batch | variant | precision | p50 ms | p90 ms | p99 ms | samples/s | peak memory bytes |
|---|---|---|---|---|---|---|---|---|
{bench_rows}

{render_matrix(metrics)}
![units](plots/units.png)
![latency](plots/latency.png)
![speedup](plots/speedup.png)
![training](plots/training.png)
"""


def write_report(run: RunDir, config: Any, out: Callable[[str], Path] | None = None) -> list[str]:
    """Write metrics.json, report.md and the plots (to `out(name)`, default the run directory); returns their names."""
    out = out or run.file
    metrics = build_metrics(run, config)
    atomic_write_json(out("metrics.json"), metrics)
    plots = _plots(out, metrics)
    atomic_write_text(out("report.md"), render_markdown(metrics, config))
    return ["metrics.json", "report.md", *plots]


def load_metrics(run_dir: Path) -> dict[str, Any]:
    return RunDir(Path(run_dir)).read_json("metrics.json")
