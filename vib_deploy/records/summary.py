"""metrics.json: `RunSummary`, the one summary of a finished run (built by `report.build_summary`).

The report, the deploy matrix, Triton packaging, experiment tracking, the GPU day and the studies read a run's
figures from it. Its keys are the metrics.json contract that tools outside vib-deploy read too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vib_deploy.records.base import RECORD_VERSION, DictOf, JsonRecord, ListOf
from vib_deploy.records.bench import BenchRecord, Speedup
from vib_deploy.records.deploy import ExportedModel, OpenvinoRecord, QuantizeRecord


@dataclass(frozen=True)
class DenseSummary(JsonRecord):
    error: float
    val_error: float
    architecture: list[int]
    flops: int
    params: int
    bytes: int  # fp32 weights
    epochs: int
    best_epoch: int | None
    seconds: float


@dataclass(frozen=True)
class VibSummary(JsonRecord):
    error: float
    val_error: float
    epochs: int
    kl_factor: float
    seconds: float


@dataclass(frozen=True)
class PrunedSummary(JsonRecord):
    error: float
    architecture: list[int]
    flops: int
    params: int
    bytes: int
    scales_left: int | None
    round_to: int | str | None = None  # set when prune.round_to is not 1, with each layer's chosen width
    widths: list[dict[str, Any]] | None = None
    OMIT_NONE = frozenset({"round_to", "widths"})


@dataclass(frozen=True)
class FinetunedSummary(JsonRecord):
    error: float
    val_error: float
    pruned_val_error: float | None
    epochs: int
    best_epoch: int | None
    lr: float
    weight_decay: float
    seconds: float


@dataclass(frozen=True)
class ExactSummary(JsonRecord):
    """The prune stage's exactness check (None throughout for a peer method's run)."""

    max_abs_diff: float | None = None
    max_abs_diff_float64: float | None = None
    argmax_agreement: float | None = None
    reduced_max_abs_diff: float | None = None
    reduced_max_abs_diff_float64: float | None = None
    tolerance: float | None = None
    logit_scale: float | None = None
    vib_fp32_rounding: float | None = None
    float64_samples: int | None = None  # images of the float64 check (None: every test image, older runs)

    OMIT_NONE = frozenset({"float64_samples"})


@dataclass(frozen=True)
class ExportSummary(JsonRecord):
    max_abs_diff: float  # the worst variant's
    argmax_agreement: float
    opset: int
    variants: dict[str, ExportedModel]
    NESTED = {"variants": DictOf(ExportedModel)}


@dataclass(frozen=True)
class Histories(JsonRecord):
    dense: list[dict[str, Any]]
    vib: list[dict[str, Any]]


@dataclass(frozen=True)
class RunSummary(JsonRecord):
    """metrics.json: errors, sizes and costs per model, the checks, every measurement and the machine."""

    FILE = "metrics.json"
    model: str | None
    dataset: str
    version: str
    test_samples: int
    dense: DenseSummary
    vib: VibSummary
    pruned: PrunedSummary
    finetuned: FinetunedSummary | None
    deployed: str  # the .pt export, bench and ship use
    prune: ExactSummary
    export: ExportSummary
    bench: list[BenchRecord]
    speedup: list[Speedup]
    ideal_speedup: float
    machine: dict[str, Any]
    history: Histories
    preprocessing: dict[str, Any]  # how a client prepares an image
    openvino: OpenvinoRecord | None = None  # openvino.json, where that stage ran
    quantize: QuantizeRecord | None = None
    record_version: int = RECORD_VERSION
    OMIT_NONE = frozenset({"openvino", "quantize"})
    NESTED = {
        "dense": DenseSummary,
        "vib": VibSummary,
        "pruned": PrunedSummary,
        "finetuned": FinetunedSummary,
        "prune": ExactSummary,
        "export": ExportSummary,
        "bench": ListOf(BenchRecord),
        "speedup": ListOf(Speedup),
        "history": Histories,
        "openvino": OpenvinoRecord,
        "quantize": QuantizeRecord,
    }

    @property
    def deployed_error(self) -> float:
        """Test error of the deployed pruned net (the fine-tuned one's when that stage ran)."""
        return self.finetuned.error if self.finetuned else self.pruned.error
