"""Latency lookup tables (`train.vib.kl_weighting: latency`): what a layer's channel costs on `deploy.target`.

After HALP (Shen et al., NeurIPS 2022: a per-layer latency lookup table over input and output channel counts) and
NetAdapt (Yang et al., ECCV 2018: empirical per-layer measurements on the target instead of a proxy). Each
weighted layer a gate touches is built alone as a tiny ONNX model -- Conv + bias (a BatchNorm after it folds into
it on every engine) + ReLU, or a Linear (Gemm) + ReLU -- at a grid of (input width, output width), converted for
the target's precision as the pipeline does (int8: `cpu_deploy.quantize_onnx`, the quantize stage's QDQ, on
random calibration inputs: the values do not change the kernels), run by the target's runner (`backends`) at the
target's batch size and timed by the timing core (`timing.alternate`, p50 in ms). Layers of one shape share their
entries (a ResNet stage's convs are timed once).

Grid: a gated side takes the widths `step, 2 step, ... < dense` and the dense width, with `step` a whole number of
the engine's channel blocks (16 channels on a CPU with AVX-512, else 8: oneDNN's blocked layouts, which both
ONNX Runtime and OpenVINO use) and at most `MAX_POINTS` widths (a wide side steps by several blocks); a side
narrower than one step takes half its width and all of it. A side no gate touches keeps its dense width.

Slope (ms per channel): a blocked engine's latency is a staircase in the width, so a per-width finite difference is
noise or zero. Along each side the table is first made non-decreasing in the width (least squares,
pool-adjacent-violators: one more channel never makes a layer faster), then the slope at a width is that of the
grid interval holding it, i.e. over a window of at least one block; across the other side's width it is linearly
interpolated between grid rows (held constant outside them).

Cache: one JSON file per (engine, engine version, precision, batch, threads, CPU model and ISA flags, quantizer
settings) under `$XDG_CACHE_HOME/vib-deploy/latency/` (default `~/.cache/...`), its entries keyed by layer shape
and widths; a second build with the same layers times nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

FORMAT = 1  # the table's file format and what a layer's model is; in the key
MAX_POINTS = 8  # widths per side at most
ROUNDS, ITERS, WARMUP = 5, 5, 3  # timing core settings per layer shape (all its widths alternate in the rounds)

Pair = tuple[int, int]  # (input width, output width)
Measure = Callable[["LayerShape", list[Pair]], list[float]]  # p50 ms of each pair


@dataclass(frozen=True)
class LayerShape:
    """A Conv/Linear layer as the table times it, but for its two widths.

    kind: "conv", "dwconv" (depthwise: its input width is its output width) or "linear"; spatial: one sample's
    input dims besides the channels (a conv's H, W; a Linear's leading dims, () on flat features).
    """

    kind: str
    spatial: tuple[int, ...]
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1

    def key(self) -> str:
        dims = lambda t: "x".join(map(str, t))  # noqa: E731
        if self.kind == "linear":
            return f"linear in{dims(self.spatial) or '-'}"
        pad = self.padding if isinstance(self.padding, str) else dims(self.padding)
        return (
            f"{self.kind} k{dims(self.kernel)} s{dims(self.stride)} p{pad} d{dims(self.dilation)} g{self.groups}"
            f" in{dims(self.spatial)}"
        )


def channel_block() -> int:
    """Channels per block of the CPU engines' blocked layouts here: 16 with AVX-512, else 8."""
    from vib_deploy.measure.machine import cpu_facts

    return 16 if "avx512f" in cpu_facts().isa else 8


def axis_grid(dense: int, unit: int = 1, block: int | None = None, max_points: int = MAX_POINTS) -> tuple[int, ...]:
    """The widths a gated side is timed at (see the module docstring); `unit`: widths must be multiples of it."""
    step = math.lcm(block or channel_block(), unit)
    step *= -(-dense // (step * max_points))
    points = list(range(step, dense, step)) + [dense]
    if len(points) == 1 and dense >= 2 * unit:
        points = [dense // 2 // unit * unit, dense]
    return tuple(points)


def monotone(values: Sequence[float]) -> list[float]:
    """The least-squares non-decreasing fit of `values` (pool adjacent violators)."""
    pools: list[list[float]] = []  # [mean, count]
    for v in values:
        pools.append([float(v), 1.0])
        while len(pools) > 1 and pools[-2][0] > pools[-1][0]:
            mean, count = pools.pop()
            pools[-1] = [(pools[-1][0] * pools[-1][1] + mean * count) / (pools[-1][1] + count), pools[-1][1] + count]
    return [mean for mean, count in pools for _ in range(int(count))]


def _slope(grid: Sequence[int], values: Sequence[float], width: float) -> float:
    """Slope of `values` over the grid interval holding `width` (the first or last one outside the grid)."""
    if len(grid) < 2:
        return 0.0
    k = min(max(bisect_right(grid, width) - 1, 0), len(grid) - 2)
    return (values[k + 1] - values[k]) / (grid[k + 1] - grid[k])


def _interp(grid: Sequence[int], values: Sequence[float], x: float) -> float:
    """Linear interpolation over `grid`, constant outside it."""
    if x <= grid[0]:
        return values[0]
    if x >= grid[-1]:
        return values[-1]
    k = bisect_right(grid, x) - 1
    t = (x - grid[k]) / (grid[k + 1] - grid[k])
    return values[k] + t * (values[k + 1] - values[k])


@dataclass(frozen=True)
class LayerTable:
    """One layer's latencies: ms[i][j] at input width in_grid[i] and output width out_grid[j]."""

    in_grid: tuple[int, ...]
    out_grid: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]

    @cached_property
    def _rows(self) -> list[list[float]]:  # non-decreasing along the output width, per input width
        return [monotone(row) for row in self.ms]

    @cached_property
    def _columns(self) -> list[list[float]]:  # non-decreasing along the input width, per output width
        return [monotone([row[j] for row in self.ms]) for j in range(len(self.out_grid))]

    def slopes(self, n_in: float, n_out: float) -> tuple[float, float]:
        """(ms per input channel, ms per output channel) at these widths (see the module docstring)."""
        per_out = [_slope(self.out_grid, row, n_out) for row in self._rows]
        per_in = [_slope(self.in_grid, column, n_in) for column in self._columns]
        return _interp(self.out_grid, per_in, n_out), _interp(self.in_grid, per_out, n_in)

    def latency(self, n_in: float, n_out: float) -> float:
        """ms at these widths: the monotone rows interpolated along the output width, then across the input width
        (held at the grid's ends: a width below the smallest timed one costs what that one does)."""
        return _interp(self.in_grid, [_interp(self.out_grid, row, n_out) for row in self._rows], n_in)


def engine_version(engine: str) -> str:
    """The installed version of an ONNX engine's package (read from its metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    for package in {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "openvino": ("openvino",)}.get(engine, ()):
        try:
            return version(package)
        except PackageNotFoundError:
            continue
    return "unknown"


def table_key(engine: str, precision: str, batch: int, threads: int, per_channel: bool) -> dict[str, Any]:
    """What a table's timings depend on besides the layers: its cache file's key (and the train-vib stage's)."""
    from vib_deploy.measure.machine import cpu_info

    key = {"format": FORMAT, "engine": engine, "engine_version": engine_version(engine), "precision": precision}
    key |= {"batch": batch, "threads": threads, **cpu_info()}
    if precision == "int8":  # the quantizer makes the QDQ graph that is timed
        key |= {"quantizer": f"onnxruntime {engine_version('onnxruntime')}", "per_channel": per_channel}
    return key


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def cache_file(key: dict[str, Any]) -> Path:
    from vib_deploy.runs.files import user_cache

    name = f"{key['engine']}-{key['precision']}-b{key['batch']}-{_digest(key)[:16]}"
    return user_cache("latency", name).with_suffix(".json")


def _read_cache(path: Path, key: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The cached entries {shape key: {"IxO": ms}} of the table under `key` (none when the file is another's)."""
    from vib_deploy.runs.files import read_json_file

    if not path.is_file():
        return {}
    data = read_json_file(path, "delete it: the next build times its layers again")
    return data["entries"] if isinstance(data, dict) and data.get("key") == key else {}


@dataclass(frozen=True)
class TableRequest:
    """A layer to look up: its name, shape and the widths of each side to time."""

    name: str
    shape: LayerShape
    in_grid: tuple[int, ...]
    out_grid: tuple[int, ...]

    def pairs(self) -> list[Pair]:
        return [(i, o) for i in self.in_grid for o in self.out_grid]


@dataclass(frozen=True)
class LatencyTables:
    """The tables of a net's layers on one target, and what identifies them (recorded in train-vib.json)."""

    layers: dict[str, LayerTable]
    key: dict[str, Any]
    sha256: str  # of the entries used, {shape key: {"IxO": ms}}
    entries: int
    timed: int  # of them measured by this build (0: all from the cache)
    file: str

    def identity(self) -> dict[str, Any]:
        return {"key": self.key, "sha256": self.sha256, "entries": self.entries, "timed": self.timed}


def build_tables(
    requests: Sequence[TableRequest], key: dict[str, Any], measure: Measure, progress: Any = None
) -> LatencyTables:
    """Every request's table: cached entries read, missing ones timed (`measure`, one call per layer shape) and
    added to the cache file at once, so an interrupted build keeps what it measured."""
    from vib_deploy.runs.files import atomic_write_json

    path = cache_file(key)
    entries = _read_cache(path, key)
    todo: dict[str, tuple[LayerShape, list[Pair]]] = {}
    for r in requests:
        shape_key = r.shape.key()
        missing = [p for p in r.pairs() if f"{p[0]}x{p[1]}" not in entries.get(shape_key, {})]
        seen = todo.setdefault(shape_key, (r.shape, []))[1]
        seen += [p for p in missing if p not in seen]
    todo = {k: v for k, v in todo.items() if v[1]}
    total = sum(len(pairs) for _, pairs in todo.values())
    task = None
    if progress is not None and total:
        task = progress.add_task(f"latency table {key['engine']}-{key['precision']}@{key['batch']}", total=total)
    for shape_key, (shape, pairs) in todo.items():
        times = measure(shape, pairs)
        merged = _read_cache(path, key)  # with what another build may have added meanwhile
        for k, timed in [*entries.items(), (shape_key, {f"{i}x{o}": float(t) for (i, o), t in zip(pairs, times)})]:
            merged[k] = {**merged.get(k, {}), **timed}
        entries = merged
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"key": key, "entries": entries})
        if progress is not None and task is not None:
            progress.advance(task, len(pairs))
    used: dict[str, dict[str, float]] = {}  # layers of one shape share its entries
    for r in requests:
        used.setdefault(r.shape.key(), {}).update(
            {f"{i}x{o}": entries[r.shape.key()][f"{i}x{o}"] for i, o in r.pairs()}
        )
    layers = {
        r.name: LayerTable(
            r.in_grid, r.out_grid, tuple(tuple(used[r.shape.key()][f"{i}x{o}"] for o in r.out_grid) for i in r.in_grid)
        )
        for r in requests
    }
    count = sum(len(v) for v in used.values())
    return LatencyTables(layers, key, _digest(used), count, total, str(path))
