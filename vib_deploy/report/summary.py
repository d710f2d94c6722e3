"""metrics.json (`RunSummary`, the contract later tools read), report.md, PNG plots, and the final one-screen table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from vib_deploy import __version__
from vib_deploy.data.datasets import CLASS_NAMES
from vib_deploy.deploy.choose import choice_markdown, choice_rows, choose
from vib_deploy.deploy.deploy_matrix import headline_short, headlines, plot_speedup_vs_ideal, render_matrix
from vib_deploy.deploy.deployed import deployed_file, finetuned
from vib_deploy.measure.machine import cpu_label
from vib_deploy.records import (
    BenchFile,
    ExportRecord,
    FinetuneRecord,
    OpenvinoRecord,
    PruneRecord,
    QuantizeRecord,
    RunSummary,
    TrainDenseRecord,
    TrainVibRecord,
)
from vib_deploy.records.summary import (
    DenseSummary,
    ExactSummary,
    ExportSummary,
    FinetunedSummary,
    Histories,
    PrunedSummary,
    VibSummary,
)
from vib_deploy.report.plots import pyplot, save_png
from vib_deploy.report.target import target_outcome, target_row
from vib_deploy.runs.directory import RunDir, atomic_write_text

BYTES_PER_PARAM = 4  # fp32


def _plain_scaling(config: Any) -> dict[str, Any]:
    """The preprocessing of runs made before train-dense.json recorded it: the IDX datasets' plain [0, 1] scaling."""
    classes = list(CLASS_NAMES.get(config.data.dataset, ()))
    return {"scale": "1/255", "pad": config.data.pad, "mean": [0.0], "std": [1.0], "classes": classes}


def _dense(dense: TrainDenseRecord, pruned: PruneRecord) -> DenseSummary:
    params = pruned.dense.params
    arch, flops, epochs = pruned.dense_architecture, pruned.dense.flops, len(dense.history)
    bytes_ = params * BYTES_PER_PARAM
    return DenseSummary(
        dense.test_error, dense.val_error, arch, flops, params, bytes_, epochs, dense.best_epoch, dense.seconds
    )


def _pruned(p: PruneRecord) -> PrunedSummary:
    widths = p.widths if p.round_to is not None else None
    cost = p.pruned
    return PrunedSummary(
        p.test_error, p.architecture, cost.flops, cost.params, cost.params * BYTES_PER_PARAM, p.scales_left,
        p.round_to, widths, p.val_error,
    )  # fmt: skip


def conv_count(path: Path) -> int:
    """Conv nodes of an ONNX model (float or quantized): what a depth-pruned deployment runs fewer of."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(n.op_type in ("Conv", "ConvInteger", "QLinearConv") for n in graph.node)


def _finetuned(t: FinetuneRecord | None) -> FinetunedSummary | None:
    if t is None:
        return None
    return FinetunedSummary(
        t.test_error, t.val_error, t.pruned_val_error, t.epochs, t.best_epoch, t.lr, t.weight_decay, t.seconds
    )


def build_summary(run: RunDir, config: Any) -> RunSummary:
    """The run's `RunSummary` (metrics.json) from every stage's record: the one place a run is summarised."""
    dense, vib, export = TrainDenseRecord.read(run), TrainVibRecord.read(run), ExportRecord.read(run)
    pruned, bench = PruneRecord.read(run), BenchFile.read(run)
    tuned = FinetuneRecord.read(run) if finetuned(config) else None
    view = run.view()
    models = export.variants.values()
    exact = {f.name: getattr(pruned.exact, f.name, None) for f in fields(ExactSummary)}
    convs = {v: conv_count(run.verified(f"{v}.onnx")) if view.has(f"{v}.onnx") else None for v in ("dense", "pruned")}
    summary = RunSummary(
        model=config.model.name or config.model.factory,
        dataset=config.data.dataset,
        version=__version__,
        test_samples=dense.test_samples,
        dense=replace(_dense(dense, pruned), convs=convs["dense"]),
        vib=VibSummary(
            vib.test_error,
            vib.val_error,
            len(vib.history),
            config.train.vib.kl_factor,
            vib.seconds,
            target_outcome(vib, pruned, list(bench.speedup), config.target()),
        ),  # fmt: skip
        pruned=replace(_pruned(pruned), convs=convs["pruned"]),
        finetuned=_finetuned(tuned),
        deployed=deployed_file(config, "pruned"),
        prune=ExactSummary(**exact),
        export=ExportSummary(
            max(m.max_abs_diff for m in models),
            min(m.argmax_agreement for m in models),
            min(m.opset for m in models),
            dict(export.variants),
        ),
        bench=list(bench.records),
        speedup=list(bench.speedup),
        ideal_speedup=pruned.dense.flops / pruned.pruned.flops,
        machine=bench.machine,
        history=Histories(dense.history, vib.history),
        preprocessing=dense.preprocessing or _plain_scaling(config),
        openvino=OpenvinoRecord.read(run) if view.ran("openvino") else None,
        quantize=QuantizeRecord.read(run) if view.ran("quantize") else None,
    )
    return replace(summary, choice=choose(summary, config.target(), config.deploy.max_error_increase))


def arch_string(s: RunSummary) -> str:
    return f"{'-'.join(map(str, s.dense.architecture))} → {'-'.join(map(str, s.pruned.architecture))}"


def summary_rows(s: RunSummary) -> list[tuple[str, str]]:
    """The final table's rows: one screen that says what was gained."""
    d, v, p, f, x = s.dense, s.vib, s.pruned, s.finetuned, s.prune
    tuned = (" / fine-tuned", f" / {f.error:.2%}") if f else ("", "")
    rows = [
        (
            f"test error dense / VIB / pruned{tuned[0]}",
            f"{d.error:.2%} / {v.error:.2%} / {p.error:.2%}{tuned[1]}  ({s.test_samples:,} test images)",
        ),
        ("architecture kept", arch_string(s)),
        (
            "KFLOPs dense → pruned",
            f"{d.flops / 1e3:,.1f} → {p.flops / 1e3:,.1f}  (ideal speedup {s.ideal_speedup:.1f}×)",
        ),
        ("parameters dense → pruned", f"{d.params:,} → {p.params:,}"),
        ("bytes (fp32) dense → pruned", f"{d.bytes:,} → {p.bytes:,}"),
        (
            "pruning exact (max |Δlogit|)",
            f"fp32 {x.max_abs_diff:.2e} (≤ {x.tolerance:g} × {x.logit_scale:.1f}, {s.test_samples:,} images), "
            f"fp64 {x.max_abs_diff_float64:.1e} ({x.float64_samples or s.test_samples:,} images)",
        ),
        ("ONNX parity (max |Δ|, argmax)", f"{s.export.max_abs_diff:.2e}, {s.export.argmax_agreement:.2%}"),
    ]
    if v.target is not None:
        rows.append(target_row(v.target))
    for h in headlines(s):
        rows.append((f"b{h['batch']} best dense → pruned", headline_short(h, s.ideal_speedup)))
    return rows + (choice_rows(s.choice) if s.choice is not None else [])


def print_summary(summary: RunSummary) -> None:
    """Print the final table with rich."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"vib-deploy: {summary.model} on {summary.dataset}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in summary_rows(summary):
        table.add_row(name, value)
    Console().print(table)


def _plots(out: Callable[[str], Path], summary: RunSummary) -> list[str]:
    # long function: four small figures (units, latency, training, speedup vs ideal), each a few matplotlib calls
    plt = pyplot()
    written = []

    def save(fig: Any, name: str) -> None:
        save_png(fig, out(name))
        written.append(name)

    dense_arch, kept = summary.dense.architecture, summary.pruned.architecture
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

    backends = sorted({r.backend for r in summary.bench})
    fig, axes = plt.subplots(1, len(backends), figsize=(10, 3.5), squeeze=False)
    for ax, backend in zip(axes[0], backends):
        recs = [r for r in summary.bench if r.backend == backend and r.precision in (None, "fp32")]
        batches = sorted({r.batch for r in recs})
        variants = sorted({r.variant for r in recs}, key=["dense", "pruned", "pruned_reduced"].index)
        width = 0.8 / len(variants)
        for j, variant in enumerate(variants):
            vals = [next(r.p50_ms for r in recs if r.batch == b and r.variant == variant) for b in batches]
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
    plot_speedup_vs_ideal(ax, summary)
    ax.set_title("Measured vs FLOPs-ideal speedup")
    save(fig, "plots/speedup.png")

    hist, dense_hist = summary.history.vib, summary.history.dense
    epochs = [h["epoch"] for h in hist]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    axes[0].plot(
        [h["epoch"] for h in dense_hist],
        [h["val_acc"] for h in dense_hist],
        label="dense",
    )
    axes[0].plot([e + len(dense_hist) for e in epochs], [h["val_acc"] for h in hist], label="VIB")
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


def render_markdown(summary: RunSummary, config: Any) -> str:
    """report.md."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary_rows(summary))
    bench_rows = "\n".join(
        f"| {r.backend} | {r.batch} | {r.variant} | {r.precision or 'fp32'} | {r.p50_ms:.4f} | {r.p90_ms:.4f} | "
        f"{r.p99_ms:.4f} | {r.throughput:,.0f} | "
        f"{r.peak_memory_bytes if r.peak_memory_bytes is not None else 'not measured'} |"
        for r in summary.bench
    )
    limited = " (a limited test set: not comparable with published numbers)" if config.data.test_limit else ""
    f = summary.finetuned
    tuned = (
        ""
        if not f
        else (
            f"\nFine-tuned {f.epochs} epochs (Adam lr {f.lr:g}, weight decay {f.weight_decay:g}, cosine); validation kept "
            + (f"epoch {f.best_epoch}." if f.best_epoch else "the pruned weights (no epoch beat them).")
            + f" Exported, timed and shipped: `{summary.deployed}`."
        )
    )
    m, pre, d, v = summary.machine, summary.preprocessing, summary.dense, summary.vib
    return f"""# vib-deploy report: {config.name}

Model `{summary.model}` on `{summary.dataset}`, kl_factor {v.kl_factor:g}{" (the start of train.vib.target's multiplier)" if v.target else ""},
dense {d.epochs} epochs (best validation epoch {d.best_epoch}), VIB {v.epochs} epochs (last epoch kept).{tuned}

| | |
|---|---|
{rows}

Classes ({len(pre["classes"])}): {", ".join(pre["classes"])}. Input: pixels / 255, zero border {pre["pad"]}, then minus
mean ({", ".join(f"{v:.4f}" for v in pre["mean"])}) and divided by std ({", ".join(f"{v:.4f}" for v in pre["std"])}) per channel (computed on the training split; in every ONNX
model's metadata as `vib_deploy.preprocessing`).

Errors are on the {summary.test_samples:,}-image test set{limited}, measured once per final model.
The validation split (last {config.data.val_size:,} training images) chose the dense {"and fine-tuned epochs" if f else "epoch"}; the test set chose nothing.
Published VIB numbers are the best test error seen during training, which this report does not do.

## Latency (measured on {cpu_label(m)}, {m["cores"]} cores, {summary.bench[0].threads} thread(s))

Dense and pruned were timed in alternating rounds in one process. `pruned_reduced` takes only the kept
input pixels (indices in its ONNX metadata `vib_deploy.kept_pixels`); `pruned` gathers them in-graph.
Peak memory is the peak-RSS growth of a fresh process that loads the model and runs the batch.

| backend | batch | variant | precision | p50 ms | p90 ms | p99 ms | samples/s | peak memory bytes |
|---|---|---|---|---|---|---|---|---|
{bench_rows}

{render_matrix(summary)}
{choice_markdown(summary.choice) if summary.choice is not None else ""}
![units](plots/units.png)
![latency](plots/latency.png)
![speedup](plots/speedup.png)
![training](plots/training.png)
"""


def write_report(run: RunDir, config: Any, out: Callable[[str], Path] | None = None) -> list[str]:
    """Write metrics.json, report.md and the plots (to `out(name)`, default the run directory); returns their names."""
    out = out or run.file
    summary = build_summary(run, config)
    summary.write(out(RunSummary.FILE))
    plots = _plots(out, summary)
    atomic_write_text(out("report.md"), render_markdown(summary, config))
    return [RunSummary.FILE, "report.md", *plots]


def load_summary(run_dir: Path) -> RunSummary:
    """A finished run's metrics.json."""
    return RunSummary.read(RunDir(Path(run_dir)))
