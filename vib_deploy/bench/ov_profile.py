"""OpenVINO's own per-node profile (PERF_COUNT) of a model as the bench runs it, grouped by resolution.

The model is compiled for this CPU at the given batch (intra-op threads as given, 1 stream, latency hint), run
WARMUP times, then `runs` times on random input (timing does not depend on the values); each node's mean time per
run comes from OpenVINO's profiler, its resolution (H x W of its output) from the compiled runtime model. The
per-node sum is OpenVINO's count, not the bench's p50. Moved here from docs/scripts/ov_profile.py."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

WARMUP = 10


def _resolution(shape: Any) -> str:
    """`HxW` of a rank-4 (N, C, H, W) output, `-` for anything else (a Linear's, a pooled one's 1x1 included)."""
    dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
    return f"{dims[2]}x{dims[3]}" if len(dims) == 4 and None not in dims[2:] else "-"


def profile_openvino(path: Path, x: np.ndarray, runs: int = 30, threads: int = 1) -> list[dict[str, Any]]:
    """One record per executed node (node, op, kernel, resolution, mean µs per run, share), largest first."""
    import openvino as ov

    from vib_deploy.backends.openvino import lower_row_gathers

    core = ov.Core()
    model = core.read_model(str(path))
    lower_row_gathers(model)
    model.reshape({model.inputs[0].get_any_name(): list(x.shape)})
    config = {"PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(model, "CPU", config)
    resolution = {
        op.get_friendly_name(): _resolution(op.get_output_partial_shape(0))
        for op in compiled.get_runtime_model().get_ordered_ops()
        if op.get_output_size()
    }
    request = compiled.create_infer_request()
    for _ in range(WARMUP):
        request.infer({0: x})
    total_us: dict[str, float] = defaultdict(float)
    kind: dict[str, tuple[str, str]] = {}
    for _ in range(runs):
        request.infer({0: x})
        for p in request.get_profiling_info():
            total_us[p.node_name] += p.real_time.total_seconds() * 1e6
            kind[p.node_name] = (p.node_type, p.exec_type)
    total = sum(total_us.values()) or 1.0
    out = [
        {
            "node": node,
            "op": kind[node][0],
            "kernel": kind[node][1],
            "resolution": resolution.get(node, "-"),
            "mean_us": us / runs,
            "share": us / total,
        }
        for node, us in total_us.items()
        if us > 0
    ]
    return sorted(out, key=lambda r: -r["mean_us"])


def by_resolution(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-node records summed per output resolution: µs per run, share, nodes and convolutions there."""
    groups: dict[str, dict[str, Any]] = {}
    for r in records:
        g = groups.setdefault(r["resolution"], {"resolution": r["resolution"], "mean_us": 0.0, "share": 0.0})
        g["mean_us"] += r["mean_us"]
        g["share"] += r["share"]
        g["nodes"] = g.get("nodes", 0) + 1
        g["convs"] = g.get("convs", 0) + (r["op"] == "Convolution")
    return sorted(groups.values(), key=lambda g: -g["mean_us"])
