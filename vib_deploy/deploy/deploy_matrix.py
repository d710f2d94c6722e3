"""The deploy matrix (backend x precision x variant x batch) and the honest headline per batch size.

The headline compares the *best* dense deployment with the *best* pruned one across every engine and
precision, so a slow dense baseline (one engine's) cannot flatter the pruned net. bench.json records made
before `precision`, `widths`, `error` and `bytes` existed are read as fp32 with the run's own figures.
"""

from __future__ import annotations

from typing import Any

from vib_deploy.deploy.deployed import int8_deployment
from vib_deploy.measure.timing import speedup
from vib_deploy.records import RunSummary


def full_records(summary: RunSummary) -> list[dict[str, Any]]:
    """Bench records as table rows with precision, widths, error, the speedup vs dense fp32 (same backend, batch)
    and measured/ideal."""
    widths = {"dense": summary.dense.architecture, "pruned": summary.pruned.architecture}
    errors = {"dense": summary.dense.error, "pruned": summary.pruned.error}
    out = [
        {
            "precision": "fp32",
            "widths": widths.get(r.variant, widths["pruned"]),
            "error": errors.get(r.variant, errors["pruned"]),
            "bytes": None,
            **r.to_json(),
        }
        for r in summary.bench
    ]
    quant = summary.quantize.variants if summary.quantize is not None else {}
    for r in out:  # the INT8 deployment's make where it is not the QDQ file (OpenVINO: NNCF)
        q = quant.get(r["variant"]) if r["precision"] == "int8" else None
        r["method"] = int8_deployment(q, r["backend"]).method if q is not None else None
    base = {(r["backend"], r["batch"]): r["p50_ms"] for r in out if (r["variant"], r["precision"]) == ("dense", "fp32")}
    for r in out:
        b = base.get((r["backend"], r["batch"]))
        r["speedup"] = speedup(b, r["p50_ms"]) if b is not None else None
        ideal = 1.0 if r["variant"] == "dense" else summary.ideal_speedup  # a dense net's FLOPs do not change
        r["measured_over_ideal"] = r["speedup"] / ideal if r["speedup"] is not None else None
    return out


def label(r: dict[str, Any], engine: str | None = None) -> str:
    """`openvino int8 (NNCF, 2 ops kept fp32) pruned`: engine (or `engine` as given), precision, make, variant."""
    method = f" ({r['method']})" if r.get("method") else ""
    return f"{engine or r['backend']} {r['precision']}{method} {r['variant']}"


def headlines(summary: RunSummary) -> list[dict[str, Any]]:
    """Per batch size: the fastest (p50) dense deployment and the fastest pruned one, over every engine and precision."""
    records = full_records(summary)
    out = []
    for batch in sorted({r["batch"] for r in records}):
        dense = [r for r in records if r["batch"] == batch and r["variant"] == "dense"]
        pruned = [r for r in records if r["batch"] == batch and r["variant"] != "dense"]
        if dense and pruned:
            best_d, best_p = (min(rs, key=lambda r: r["p50_ms"]) for rs in (dense, pruned))
            out.append(
                {
                    "batch": batch,
                    "dense": best_d,
                    "pruned": best_p,
                    "speedup": speedup(best_d["p50_ms"], best_p["p50_ms"]),
                }
            )
    return out


def headline_text(h: dict[str, Any], ideal: float) -> str:
    d, p = h["dense"], h["pruned"]
    error = f", error {d['error']:.2%} → {p['error']:.2%}" if d["error"] is not None and p["error"] is not None else ""
    return (
        f"{label(d)} {d['p50_ms']:.4f} ms → {label(p)} {p['p50_ms']:.4f} ms: {h['speedup']:.2f}× of an ideal "
        f"{ideal:.1f}× (measured/ideal {h['speedup'] / ideal:.2f}){error}"
    )


ENGINE_SHORT = {"onnxruntime": "ORT", "openvino": "OV"}


def headline_short(h: dict[str, Any], ideal: float) -> str:
    """The headline in one console cell: engines abbreviated (ORT, OV), 3 decimals."""

    def name(r: dict[str, Any]) -> str:
        return label(r, ENGINE_SHORT.get(r["backend"], r["backend"]))

    d, p = h["dense"], h["pruned"]
    error = f"; {d['error']:.2%} → {p['error']:.2%}" if d["error"] is not None and p["error"] is not None else ""
    return (
        f"{name(d)} {d['p50_ms']:.3f} → {name(p)} {p['p50_ms']:.3f} ms: {h['speedup']:.2f}× of {ideal:.1f}× "
        f"({h['speedup'] / ideal:.2f}){error}"
    )


def _cell(value: Any, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def render_matrix(summary: RunSummary) -> str:
    """The markdown section: headlines, then the full matrix, then the INT8 accuracy table (when quantized)."""
    ideal = summary.ideal_speedup
    lines = [
        "## Deploy matrix",
        "",
        "Best dense deployment vs best pruned deployment per batch size, across every engine and precision:",
        "",
    ]
    lines += [f"- batch {h['batch']}: {headline_text(h, ideal)}" for h in headlines(summary)]
    if summary.pruned.round_to:
        w = summary.pruned.widths or []
        why = "; ".join(f"gate {r['gate']}: {r['why']}" for r in w)
        lines += [
            "",
            f"Widths rounded up to multiples of {summary.pruned.round_to} (`prune.round_to`): VIB "
            f"{'-'.join(str(r['vib']) for r in w)} → {'-'.join(str(r['kept']) for r in w)} ({why}); "
            "the pruned error is the rounded net's, measured.",
        ]
    lines += [
        "",
        f"Speedup is against dense fp32 on the same backend and batch; measured/ideal divides it by the "
        f"FLOPs ratio ({ideal:.1f}× for the pruned nets, 1 for dense; the same for int8). Bytes are the file timed. Error is on the full test "
        "set, measured on the engine that ran the model (int8) or once in torch (fp32: every engine agrees "
        "within the parity tolerance).",
        "",
        "| backend | precision | variant | widths | convs | batch | p50 ms | p99 ms | samples/s | peak memory bytes | "
        "test error | bytes | speedup | measured/ideal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    convs = {"dense": summary.dense.convs, "pruned": summary.pruned.convs}  # the ONNX model's Conv nodes
    for r in sorted(full_records(summary), key=lambda r: (r["batch"], r["backend"], r["precision"], r["variant"])):
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['variant']} | {'-'.join(map(str, r['widths'] or []))} | "
            f"{_cell(convs.get(r['variant'], convs['pruned']), ',')} | {r['batch']} | {r['p50_ms']:.4f} | {r['p99_ms']:.4f} | {r['throughput']:,.0f} | "
            f"{_cell(r['peak_memory_bytes'], ',')} | {_cell(r['error'], '.2%')} | {_cell(r['bytes'], ',')} | "
            f"{_cell(r['speedup'], '.2f')} | {_cell(r['measured_over_ideal'], '.2f')} |"
        )
    quant = summary.quantize
    if quant:
        lines += [
            "",
            f"INT8: ONNX Runtime static quantization ({quant.format}, {quant.weights} weights, "
            f"{quant.activations} activations), calibrated on {quant.calibration['images']} training images.",
            "",
            "| model | fp32 error | int8 error (per engine) | fp32 bytes | int8 bytes |",
            "|---|---|---|---|---|",
        ]
        for variant in ("dense", "pruned"):
            q = quant.variants[variant]
            per_engine = ", ".join(f"{e} {v:.2%}" for e, v in q.error.items())
            lines.append(f"| {variant} | {q.fp32_error:.2%} | {per_engine} | {q.fp32_bytes:,} | {q.bytes:,} |")
        lines += nncf_lines(quant)
    return "\n".join(lines) + "\n"


def nncf_lines(quant: Any) -> list[str]:
    """The INT8 section's NNCF table (quantize.openvino: nncf): OpenVINO's INT8 deployment per variant."""
    made = {v: q.openvino for v, q in quant.variants.items() if q.openvino is not None}
    if not made:
        return []
    lines = [
        "",
        "OpenVINO INT8: NNCF with accuracy control on the fp32 IR, its validation error held within the error "
        "budget (`max_drop`: what the budget leaves over the fp32 IR's error); the bench times and the choice judges "
        "this IR on OpenVINO, the QDQ file on ONNX Runtime.",
        "",
        "| model | fp32 val error | budget | max drop | int8 val error | int8 test error | ops kept fp32 | int8 bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, m in made.items():
        kept = f"{len(m.kept_fp32)} of {len(m.quantized)}" + (f": {', '.join(m.kept_fp32)}" if m.kept_fp32 else "")
        lines.append(
            f"| {variant} | {m.fp32_val_error:.2%} | {m.budget:.2%} | {m.max_drop * 100:.2f} pt | {m.val_error:.2%} | "
            f"{m.error:.2%} | {kept} | {m.bytes:,} |"
        )
    return lines


def plot_speedup_vs_ideal(ax: Any, summary: RunSummary) -> None:
    """Measured speedup of each pruned deployment vs the FLOPs-ideal one, per engine; the diagonal drawn."""
    ideal = summary.ideal_speedup
    records = [r for r in full_records(summary) if r["variant"] != "dense" and r["speedup"] is not None]
    for engine in sorted({(r["backend"], r["precision"]) for r in records}):
        rs = [r for r in records if (r["backend"], r["precision"]) == engine]
        ax.scatter([ideal] * len(rs), [r["speedup"] for r in rs], label=f"{engine[0]} {engine[1]}")
        for r in rs:
            ax.annotate(f"b{r['batch']}", (ideal, r["speedup"]), fontsize=7, xytext=(4, 0), textcoords="offset points")
    top = max([ideal] + [r["speedup"] for r in records]) * 1.1
    ax.plot([0, top], [0, top], color="gray", linestyle="--", label="ideal (FLOPs)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("FLOPs-ideal speedup")
    ax.set_ylabel("measured speedup (vs dense fp32, same engine)")
    ax.legend(fontsize=7)
