"""The timing core: alternation, clocks, and the percentile / throughput / speedup definitions, by hand."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest

from vib_deploy.measure.timing import (
    HostClock,
    alternate,
    clock_for,
    concurrent,
    latency_stats,
    percentiles,
    speedup,
    throughput,
)

PACKAGE = Path(__file__).resolve().parents[2] / "vib_deploy"


class StepClock:
    """A clock whose n-th reading is n ms (pending until `settle`), counting settles."""

    def __init__(self):
        self.n, self.settled = 0, 0

    def time(self, call):
        call()
        self.n += 1
        return self.n

    def settle(self):
        self.settled += 1

    def read(self, reading):
        assert self.settled, "read before the round settled"
        return reading * 1_000_000


def test_rounds_alternate_order_after_untimed_warmup():
    log: list[str] = []
    calls = {"dense": lambda: log.append("dense"), "pruned": lambda: log.append("pruned")}
    samples = alternate(calls, rounds=4, iters=2, warmup=1)
    warm = ["dense", "pruned"]
    assert log == warm + ["dense"] * 2 + ["pruned"] * 4 + ["dense"] * 4 + ["pruned"] * 4 + ["dense"] * 2
    assert {k: len(v) for k, v in samples.items()} == {"dense": 8, "pruned": 8}  # warm-up calls are not samples
    assert all(isinstance(s, int) and s >= 0 for s in samples["dense"])


def test_each_name_reads_its_own_clock_settled_once_per_round():
    shared, other = StepClock(), StepClock()
    rounds: list[int] = []
    samples = alternate(
        {"a": lambda: None, "b": lambda: None, "c": lambda: None},
        rounds=2,
        iters=2,
        warmup=0,
        clocks={"a": shared, "b": shared, "c": other},
        after_round=lambda: rounds.append(shared.settled),
    )
    # round 0: a a b b (shared readings 1-4), c c (other 1-2); round 1 reversed: c c (other 3-4), b b (shared 5-6), a a
    assert samples == {
        "a": [1_000_000, 2_000_000, 7_000_000, 8_000_000],
        "b": [3_000_000, 4_000_000, 5_000_000, 6_000_000],
        "c": [1_000_000, 2_000_000, 3_000_000, 4_000_000],
    }
    assert rounds == [1, 2] and other.settled == 2  # a clock shared by two names settles once per round


def test_host_clock_syncs_before_and_after_each_call():
    events: list[str] = []
    ns = HostClock(lambda: events.append("sync")).time(lambda: events.append("call"))
    assert events == ["sync", "call", "sync"] and isinstance(ns, int) and ns >= 0


def test_clock_for_cpu_is_the_host_clock():
    clock = clock_for("cpu", host_clock=False)  # a device runner's dry run on the CPU
    assert isinstance(clock, HostClock) and clock.sync is None


def test_percentiles_by_hand():
    stats = percentiles([4_000_000, 1_000_000, 3_000_000, 2_000_000])  # 1, 2, 3, 4 ms
    # numpy's linear interpolation: p at rank p/100 * (n - 1) between the sorted samples
    assert stats == pytest.approx({"p50_ms": 2.5, "p90_ms": 3.7, "p99_ms": 3.97, "mean_ms": 2.5})


def test_throughput_is_items_per_second_at_p50():
    assert throughput(64, 2.0) == pytest.approx(32_000.0)  # 64 items every 2 ms
    assert throughput(8, 4.0, concurrency=4) == pytest.approx(8_000.0)  # 4 clients x 8 items every 4 ms
    stats = latency_stats([1_000_000, 2_000_000, 3_000_000, 10_000_000], batch=10)
    assert stats["p50_ms"] == 2.5 and stats["mean_ms"] == 4.0
    assert stats["throughput"] == pytest.approx(4_000.0) and stats["calls"] == 4  # from p50, not the mean


def test_speedup_is_baseline_p50_over_p50():
    assert speedup(4.0, 1.0) == 4.0
    assert speedup(1.0, 2.0) == 0.5


def test_concurrent_clients_run_at_once():
    barrier = threading.Barrier(3, timeout=10)  # passes only if the three clients' first calls overlap
    seen: list[int] = []

    def client(i: int):
        def call():
            if len(seen) < 3:
                seen.append(i)
                barrier.wait()

        return call

    samples = concurrent([client(0), client(1), client(2)], requests=4, warmup=0)
    assert len(samples) == 12 and sorted(seen) == [0, 1, 2]


def test_one_clock_and_one_percentile_in_the_package():
    """perf_counter_ns and np.percentile appear in the timing core only (no second timing loop elsewhere)."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "timing.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("perf_counter_ns", "percentile"):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.attr}")
    assert not found, found
