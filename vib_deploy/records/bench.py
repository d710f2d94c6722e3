"""bench.json: one `BenchRecord` per (backend, batch, variant[, precision]), the speedups and the machine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vib_deploy.records.base import RECORD_VERSION, JsonRecord, check_version

_BENCH_KEYS = (
    "backend",
    "device",
    "batch",
    "variant",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "throughput",
    "peak_memory_bytes",
    "threads",
    "calls",
)


@dataclass(frozen=True)
class BenchRecord:
    """One (backend, batch, variant) measurement of `bench.run_bench`; keys it does not know are kept in `extra`."""

    backend: str
    batch: int
    variant: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float
    device: str = "cpu"
    peak_memory_bytes: int | None = None
    threads: int | None = None
    calls: int | None = None
    precision: str | None = None  # fp32 | int8 (quantize stage); None: a record made before precisions, fp32
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """'backend/b<batch>/variant[/precision]': how sweep.json and the docs' tables name a measurement."""
        return f"{self.backend}/b{self.batch}/{self.variant}" + (
            "" if self.precision in (None, "fp32") else f"/{self.precision}"
        )

    def to_json(self) -> dict[str, Any]:
        precision = {} if self.precision is None else {"precision": self.precision}
        return {**{k: getattr(self, k) for k in _BENCH_KEYS}, **precision, **self.extra}

    @staticmethod
    def from_json(d: dict[str, Any]) -> BenchRecord:
        return BenchRecord(
            **{k: d[k] for k in _BENCH_KEYS if k in d},
            precision=d.get("precision"),
            extra={k: v for k, v in d.items() if k not in _BENCH_KEYS and k != "precision"},
        )


@dataclass(frozen=True)
class Speedup(JsonRecord):
    """dense fp32 p50 / this variant's p50 on one backend and batch (`bench.speedups`)."""

    backend: str
    batch: int
    variant: str
    speedup: float
    precision: str | None = None  # None: a record made before precisions (fp32)
    OMIT_NONE = frozenset({"precision"})


@dataclass(frozen=True)
class BenchFile(JsonRecord):
    """bench.json: the measurements, dense/variant speedups and the machine they were made on."""

    FILE = "bench.json"

    records: tuple[BenchRecord, ...]
    speedup: tuple[Speedup, ...]
    machine: dict[str, Any]
    model_files: dict[str, str] | None = None  # variant -> the .pt it was made from (None: a file made before finetune)
    record_version: int = RECORD_VERSION

    def p50_by_key(self) -> dict[str, float]:
        return {r.key: r.p50_ms for r in self.records}

    def to_json(self) -> dict[str, Any]:
        files = {} if self.model_files is None else {"model_files": self.model_files}
        return {
            "record_version": self.record_version,
            "records": [r.to_json() for r in self.records],
            "speedup": [s.to_json() for s in self.speedup],
            "machine": self.machine,
            **files,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BenchFile:  # type: ignore[override]
        check_version(d, "bench.json")
        return BenchFile(
            tuple(BenchRecord.from_json(r) for r in d["records"]),
            tuple(Speedup.from_json(s) for s in d["speedup"]),
            d["machine"],
            d.get("model_files"),
            d.get("record_version", 0),
        )
