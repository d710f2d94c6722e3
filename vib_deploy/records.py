"""The JSON records stages hand each other, as frozen dataclasses: one writer, one reader per file.

Each record's `to_json` is the only place its file's keys are spelled when writing, `from_json` the only
place they are read. Files carry `record_version`; files written before it existed (version 0) read with
the missing fields defaulted, so run directories made by earlier versions load, verify and stay cached
(their bytes are never rewritten). A file from a newer vib-deploy is refused with one line.

    prune.json  `PruneRecord`: VIB pruning (with its exactness check) or a peer method (studies/peers.py)
    bench.json  `BenchFile`: one `BenchRecord` per (backend, batch, variant), speedups, machine
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vib_deploy.errors import UserError
from vib_deploy.runs import RunDir, atomic_write_json

RECORD_VERSION = 1
MNIST_INPUT = (1, 28, 28)  # prune.json files made before `input_shape` was recorded were all LeNets on MNIST


def _check_version(data: dict[str, Any], name: str) -> None:
    version = data.get("record_version", 0)
    if not isinstance(version, int) or version > RECORD_VERSION:
        raise UserError(
            f"{name} has record_version {version!r}; this vib-deploy reads up to {RECORD_VERSION}: upgrade it"
        )


@dataclass(frozen=True)
class Cost:
    flops: int  # per sample, 2 x MACs of Conv/Linear
    params: int  # deployable weights and biases


@dataclass(frozen=True)
class ExactCheck:
    """`prune.result.check_exact`: the pruned model against the VIB model on the test set (VIB runs only)."""

    tolerance: float
    logit_scale: float
    vib_fp32_rounding: float
    max_abs_diff: float
    max_abs_diff_float64: float
    argmax_agreement: float
    reduced_max_abs_diff: float | None = None  # the reduced-input model (input-gated nets only)
    reduced_max_abs_diff_float64: float | None = None
    reduced_argmax_agreement: float | None = None
    float64_samples: int | None = None  # images of the float64 check; None: every test image (records before sampling)

    def to_json(self) -> dict[str, Any]:
        optional = {"float64_samples"}
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not ((f.name.startswith("reduced_") or f.name in optional) and getattr(self, f.name) is None)
        }


@dataclass(frozen=True)
class PeerInfo:
    """How a peer method (studies/peers.py) pruned and fine-tuned."""

    method: str
    vib_run: str
    target_flops: int
    flops_mismatch: float
    test_error_before_finetune: float
    sparsity_epochs: int
    finetune_epochs: int
    history: dict[str, Any]
    seconds: float
    budget_epochs: int | None = (
        None  # the epochs the peer was given (VIB's post-dense budget); None: made before budgets
    )
    kept_epoch: int | None = (
        None  # the fine-tune epoch kept by validation (0: as pruned); None: made when the last was kept
    )


_EXACT = tuple(f.name for f in fields(ExactCheck))
_PEER = tuple(f.name for f in fields(PeerInfo))


@dataclass(frozen=True)
class PruneRecord:
    """prune.json: what pruning kept and what it costs; `exact` for VIB runs, `peer` for peer methods."""

    architecture: list[int]  # kept units per gate (VIB) or per layer (peers), input first where gated
    dense_architecture: list[int]
    kept_pixels: list[int] | None
    test_error: float
    samples: int  # test images
    dense: Cost
    pruned: Cost
    input_shape: tuple[int, ...] = MNIST_INPUT
    scales_left: int | None = None  # ChannelScales left unfolded (VIB Sequentials, slimming)
    kept_indices: list[list[int]] | None = None  # VIB: kept units per gate
    pruning: list[dict[str, Any]] | None = None  # VIB module models: the record `apply_pruning` replays
    exact: ExactCheck | None = None
    peer: PeerInfo | None = None
    round_to: int | str | None = None  # prune.round_to when not 1 (hardware-aware widths), with each layer's choice
    widths: list[dict[str, Any]] | None = None
    record_version: int = RECORD_VERSION

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"record_version": self.record_version}
        if self.exact is not None:
            out.update(self.exact.to_json())
        if self.peer is not None:
            out.update(
                {
                    k: getattr(self.peer, k)
                    for k in _PEER
                    if not (k in ("budget_epochs", "kept_epoch") and getattr(self.peer, k) is None)
                }
            )
        out.update(
            {
                "architecture": self.architecture,
                "dense_architecture": self.dense_architecture,
                "kept_pixels": self.kept_pixels,
                "test_error": self.test_error,
                "samples": self.samples,
                "input_shape": list(self.input_shape),
                "dense": {"flops": self.dense.flops, "params": self.dense.params},
                "pruned": {"flops": self.pruned.flops, "params": self.pruned.params},
            }
        )
        if self.exact is not None:  # VIB runs have always written these, None or not
            out.update({"kept_indices": self.kept_indices, "scales_left": self.scales_left, "pruning": self.pruning})
        elif self.scales_left is not None:
            out["scales_left"] = self.scales_left
        if self.round_to is not None:
            out.update({"round_to": self.round_to, "widths": self.widths})
        return out

    @staticmethod
    def from_json(d: dict[str, Any]) -> PruneRecord:
        _check_version(d, "prune.json")
        return PruneRecord(
            architecture=list(d["architecture"]),
            dense_architecture=list(d["dense_architecture"]),
            kept_pixels=d.get("kept_pixels"),
            test_error=d["test_error"],
            samples=d["samples"],
            dense=Cost(**d["dense"]),
            pruned=Cost(**d["pruned"]),
            input_shape=tuple(d.get("input_shape", MNIST_INPUT)),
            scales_left=d.get("scales_left"),
            kept_indices=d.get("kept_indices"),
            pruning=d.get("pruning"),
            exact=ExactCheck(**{k: d[k] for k in _EXACT if k in d}) if "max_abs_diff_float64" in d else None,
            peer=PeerInfo(**{k: d[k] for k in _PEER if k in d}) if "method" in d else None,
            round_to=d.get("round_to"),
            widths=d.get("widths"),
            record_version=d.get("record_version", 0),
        )

    def write(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())

    @staticmethod
    def read(run: RunDir) -> PruneRecord:
        return PruneRecord.from_json(run.read_json("prune.json"))


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
class BenchFile:
    """bench.json: the measurements, dense/variant speedups and the machine they were made on."""

    records: tuple[BenchRecord, ...]
    speedup: list[dict[str, Any]]
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
            "speedup": self.speedup,
            "machine": self.machine,
            **files,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> BenchFile:
        _check_version(d, "bench.json")
        return BenchFile(
            tuple(BenchRecord.from_json(r) for r in d["records"]),
            d["speedup"],
            d["machine"],
            d.get("model_files"),
            d.get("record_version", 0),
        )

    def write(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())

    @staticmethod
    def read(run: RunDir) -> BenchFile:
        return BenchFile.from_json(run.read_json("bench.json"))
