"""gpu-bench's result as figures: dense-vs-pruned speedup rows, the launch-overhead table and the Markdown table."""

from __future__ import annotations

from typing import Any

from vib_deploy.measure.timing import speedup


def speedup_rows(records: list[dict[str, Any]], ideal: float) -> list[dict[str, Any]]:
    """dense p50 / pruned p50 per backend, precision and batch, with measured/ideal (ideal = FLOPs ratio)."""
    by = {(r["backend"], r["precision"], r["batch"], r["variant"]): r for r in records}
    out = []
    for (backend, precision, batch, variant), r in by.items():
        dense = by.get((backend, precision, batch, "dense"))
        if variant != "dense" and dense is not None:
            s = speedup(dense["p50_ms"], r["p50_ms"])
            out.append(
                {
                    "backend": backend,
                    "precision": precision,
                    "batch": batch,
                    "variant": variant,
                    "speedup": s,
                    "measured_over_ideal": s / ideal,
                }
            )
    return out


def _bytes(v: Any) -> str:
    return f"{v / 2**20:,.1f} MiB" if isinstance(v, (int, float)) else str(v if v is not None else "not available")


def launch_overhead(by: dict[tuple[Any, ...], dict[str, Any]]) -> list[str]:
    """Eager vs CUDA-graph p50 per precision, batch and variant: the share of eager time that is kernel launches
    (what bounds a pruned net's speedup at small batch, where its kernels are too short to hide the launches)."""
    rows = []
    for (backend, precision, batch, variant), eager in sorted(
        by.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3])
    ):
        graph = by.get(("torch-cuda-graphs", precision, batch, variant))
        if backend == "torch-cuda" and graph is not None:
            share = max(0.0, 1 - graph["p50_ms"] / eager["p50_ms"])
            rows.append(
                f"| {precision} | {batch} | {variant} | {eager['p50_ms']:.4f} | {graph['p50_ms']:.4f} | {share:.0%} |"
            )
    if not rows:
        return []
    return [
        "",
        "Launch overhead: eager vs CUDA-graph replay (same kernels, launched once as a graph)",
        "",
        "| precision | batch | variant | eager p50 ms | graph p50 ms | eager time that is launch overhead |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def markdown(result: dict[str, Any]) -> str:
    """One table per run: backend, precision, batch, p50/p99 and throughput of dense and pruned, memory, measured/ideal."""
    m = result["machine"]
    lines = [
        f"### {result['run']}: dense vs pruned (ideal speedup {result['ideal_speedup']:.2f}x = FLOPs ratio)",
        "",
        f"GPU {m['gpu']}, driver {m['driver']}, CUDA {m['cuda']}, torch {m['torch']}, device {m['device']}",
        "",
        "| backend | precision | batch | dense p50 / p99 ms | pruned p50 / p99 ms | dense img/s | pruned img/s | speedup "
        "| measured/ideal | weights dense / pruned | max allocated dense / pruned | NVML used (pruned) | parity |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["backend"], r["precision"], r["batch"], r["variant"]): r for r in result["records"]}
    for s in result["speedup"]:
        d = by[(s["backend"], s["precision"], s["batch"], "dense")]
        p = by[(s["backend"], s["precision"], s["batch"], s["variant"])]
        ok = "ok" if d["parity"]["ok"] and p["parity"]["ok"] else "FAILED"
        lines.append(
            f"| {s['backend']} | {s['precision']} | {s['batch']} | {d['p50_ms']:.4f} / {d['p99_ms']:.4f} | "
            f"{p['p50_ms']:.4f} / {p['p99_ms']:.4f} | {d['throughput']:,.0f} | {p['throughput']:,.0f} | "
            f"{s['speedup']:.2f}x | {s['measured_over_ideal']:.2f} | {_bytes(d['weight_bytes'])} / {_bytes(p['weight_bytes'])} | "
            f"{_bytes(d['max_memory_allocated_bytes'])} / {_bytes(p['max_memory_allocated_bytes'])} | "
            f"{_bytes(p['nvml_used_bytes'])} | {ok} (max abs diff {max(d['parity']['max_abs_diff'], p['parity']['max_abs_diff']):.2g}) |"
        )
    for u in result["unavailable"]:
        why = u["why"] if u.get("failed") else f"not available: {u['why']}"
        lines.append(f"| {u['backend']} | {u['precision']} | - | {why} | | | | | | | | | |")
    lines += launch_overhead(by)
    lines += [
        "",
        "p50/p99: CUDA events per call after warm-up, dense and pruned alternating; img/s at p50; measured/ideal: "
        "speedup over the FLOPs ratio; max allocated: torch's allocator peak during 3 calls beyond what was allocated "
        "before them (a CUDA graph's pool is allocated at capture, so ~0 there); NVML used: the whole device's, "
        "sampled every ms; parity: vs the fp32 torch model on CPU, 256 test images.",
    ]
    return "\n".join(lines) + "\n"
