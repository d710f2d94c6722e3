"""The one timing core: alternating rounds over named calls, one clock, one percentile, throughput and speedup.

Every benchmark (bench, gpu-bench, the `prune.round_to: auto` width sweep, the Triton bench, the latency tables of
`train.vib.kl_weighting: latency`) measures with these and reports what they define:

- sample: one call's latency in integer nanoseconds. The host clock is `time.perf_counter_ns` around the call
  (after a device sync on both sides when the call runs on a CUDA device); a runner whose `host_clock` is False
  is timed by a pair of CUDA events on the current stream instead, read once the round is over.
- rounds: after `warmup` untimed calls each, every round calls each name `iters` times, the names in order in
  even rounds and reversed in odd ones, so drifting machine noise hits all alike.
- percentiles: p50, p90, p99 (numpy's linear interpolation) and the mean, in milliseconds.
- throughput: items per second at the median latency, `concurrency * batch / p50`: `concurrency` clients each
  sending batches of `batch` items back to back (one client: `batch / p50`).
- speedup: `baseline p50 / p50` (above 1: faster than the baseline).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)


class Clock(Protocol):
    """Times one call; a reading may be pending until `settle` (CUDA events), then `read` gives nanoseconds."""

    def time(self, call: Callable[[], object]) -> Any: ...

    def settle(self) -> None: ...

    def read(self, reading: Any) -> int: ...


class HostClock:
    """perf_counter_ns around the call; `sync` (a device synchronize) runs before and after it when given."""

    def __init__(self, sync: Callable[[], object] | None = None):
        self.sync = sync

    def time(self, call: Callable[[], object]) -> int:
        if self.sync is not None:
            self.sync()
        t0 = time.perf_counter_ns()
        call()
        if self.sync is not None:
            self.sync()
        return time.perf_counter_ns() - t0

    def settle(self) -> None:
        pass

    def read(self, reading: Any) -> int:
        return int(reading)


class CudaEventClock:
    """A CUDA event recorded before and after the call on the current stream; elapsed time read after a sync."""

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def time(self, call: Callable[[], object]) -> tuple[Any, Any]:
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        return start, end

    def settle(self) -> None:
        self.torch.cuda.synchronize()

    def read(self, reading: Any) -> int:
        start, end = reading
        return round(start.elapsed_time(end) * 1e6)


HOST = HostClock()


def clock_for(device: str, host_clock: bool = True) -> Clock:
    """The clock for calls on `device`: the host clock (synced on CUDA), or CUDA events when not `host_clock`."""
    if not device.startswith("cuda"):
        return HOST
    if not host_clock:
        return CudaEventClock()
    import torch

    return HostClock(torch.cuda.synchronize)


def alternate(
    calls: Mapping[K, Callable[[], object]],
    rounds: int,
    iters: int,
    warmup: int,
    clocks: Mapping[K, Clock] | None = None,
    after_round: Callable[[], object] | None = None,
) -> dict[K, list[int]]:
    """Per-call latencies (ns) of each named call, in rounds whose order flips (see the module docstring).

    `clocks` gives a name its clock (default: the host clock); `after_round` runs after each round (progress).
    """
    names = list(calls)
    clock_of = {name: (clocks or {}).get(name, HOST) for name in names}
    for name in names:
        for _ in range(warmup):
            calls[name]()
    samples: dict[K, list[int]] = {name: [] for name in names}
    for r in range(rounds):
        pending: list[tuple[K, Any]] = []
        for name in names if r % 2 == 0 else names[::-1]:
            call, clock = calls[name], clock_of[name]
            pending += [(name, clock.time(call)) for _ in range(iters)]
        for clock in {id(c): c for c in clock_of.values()}.values():
            clock.settle()
        for name, reading in pending:
            samples[name].append(clock_of[name].read(reading))
        if after_round is not None:
            after_round()
    return samples


def concurrent(calls: Sequence[Callable[[], object]], requests: int, warmup: int = 5) -> list[int]:
    """Per-call latencies (ns, host clock) of `len(calls)` clients, each in its own thread sending `requests` calls
    at the same time (a barrier starts them together)."""
    for call in calls:
        for _ in range(warmup):
            call()
    samples: list[list[int]] = [[] for _ in calls]
    start = threading.Barrier(len(calls) + 1)

    def client(i: int) -> None:
        start.wait()
        samples[i] += [HOST.time(calls[i]) for _ in range(requests)]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()
    return [s for per in samples for s in per]


def percentiles(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50, p90, p99 and mean of the samples, in ms (numpy's linear interpolation between order statistics)."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def throughput(batch: int, p50_ms: float, concurrency: int = 1) -> float:
    """Items per second at the median latency: concurrency * batch / p50 (in seconds)."""
    return concurrency * batch / (p50_ms / 1e3)


def speedup(baseline_p50_ms: float, p50_ms: float) -> float:
    """How many times faster than the baseline: baseline p50 / p50."""
    return baseline_p50_ms / p50_ms


def latency_stats(samples_ns: Sequence[int], batch: int, concurrency: int = 1) -> dict[str, Any]:
    """Percentiles, throughput and the number of calls of one name's samples: the fields every bench record has."""
    stats: dict[str, Any] = percentiles(samples_ns)
    return {
        **stats,
        "throughput": throughput(batch, stats["p50_ms"], concurrency),
        "calls": len(samples_ns),
    }
