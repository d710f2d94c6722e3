"""The target's channel block (`prune.round_to: block`): the width step at which a conv's time on the target jumps.

Blocked CPU kernels work in blocks of channels (OpenVINO's INT8 convs: 16 int32 accumulators with AVX-512, 8 with
AVX2; TensorRT pads INT8 channels to 32, fp16 to 8), so a conv's latency is a staircase in its width. One 3x3 conv
(in = out = w channels, 32x32 map) is timed on the target at w = 1..2 x MAX_BLOCK, and the block is the largest
candidate b whose staircase t(w) = a + c * ceil(w / b) fits the times within FIT of the best candidate's fit
(least squares). Cached per target identity (engine, version, precision, batch, threads, CPU) in the user cache."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

CANDIDATES = (1, 2, 4, 8, 16, 32)
MAX_BLOCK = 32  # widths 1..2 x this are timed
FIT = 1.1  # a larger block wins while its squared residual is within this factor of the best


def _rss(times: Sequence[float], block: int) -> float:
    """Squared residual of the least-squares fit t(w) = a + c * ceil(w / block) over w = 1..len(times)."""
    steps = [math.ceil(w / block) for w in range(1, len(times) + 1)]
    n = len(times)
    mean_s, mean_t = sum(steps) / n, sum(times) / n
    var = sum((s - mean_s) ** 2 for s in steps)
    c = sum((s - mean_s) * (t - mean_t) for s, t in zip(steps, times)) / var if var else 0.0
    a = mean_t - c * mean_s
    return sum((t - a - c * s) ** 2 for s, t in zip(steps, times))


def block_of(times: Sequence[float]) -> int:
    """The channel block of latencies `times` at widths 1..len(times) (module docstring)."""
    fits = {b: _rss(times, b) for b in CANDIDATES if b <= len(times) // 2}
    best = min(fits.values())
    return max(b for b, r in fits.items() if r <= FIT * best + 1e-12 * max(times) ** 2)


def measured_block(key: dict[str, Any], measure: Callable[[Any, list[tuple[int, int]]], list[float]]) -> dict[str, Any]:
    """{"block", "ms" per width}: read from the cache under `key`, else timed by `measure` (latency.onnx_measure)."""
    from vib_deploy.measure.latency import LayerShape, _digest
    from vib_deploy.runs.files import atomic_write_json, read_json_file, user_cache

    path = user_cache("latency", f"block-{key['engine']}-{key['precision']}-{_digest(key)[:16]}").with_suffix(".json")
    if path.is_file():
        data = read_json_file(path, "delete it: the next run times the block again")
        if isinstance(data, dict) and data.get("key") == key:
            return {"block": data["block"], "ms": data["ms"], "cached": True}
    shape = LayerShape("conv", (32, 32), (3, 3), (1, 1), (1, 1), (1, 1), 1)
    widths = list(range(1, 2 * MAX_BLOCK + 1))
    ms = [float(t) for t in measure(shape, [(w, w) for w in widths])]
    found = {"block": block_of(ms), "ms": ms}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"key": key, **found})
    return {**found, "cached": False}
