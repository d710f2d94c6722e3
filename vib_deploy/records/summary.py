"""metrics.json: `RunSummary`, the one summary of a finished run (built by `report.build_summary`).

The report, the deploy matrix, the deployment choice, Triton packaging, experiment tracking, the GPU day and the
studies read a run's figures from it. Its keys are the metrics.json contract that tools outside vib-deploy read too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    convs: int | None = None  # Conv nodes of the exported ONNX model (None: a metrics.json made before it)
    OMIT_NONE = frozenset({"convs"})


@dataclass(frozen=True)
class VibSummary(JsonRecord):
    error: float
    val_error: float
    epochs: int
    kl_factor: float
    seconds: float
    target: dict[str, Any] | None = None  # train.vib.target: asked, reached, within ±10 % or why not (report/target.py)
    OMIT_NONE = frozenset({"target"})


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
    val_error: float | None = None  # None: a prune.json made before it was recorded
    convs: int | None = None  # Conv nodes of the exported ONNX model (None: a metrics.json made before it)
    OMIT_NONE = frozenset({"round_to", "widths", "val_error", "convs"})


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
class Deployment(JsonRecord):
    """One benched deployment: a variant on an engine at a precision and batch, its p50 and its errors."""

    engine: str
    precision: str  # fp32 | int8
    variant: str  # dense | pruned
    batch: int
    p50_ms: float
    val_error: float  # what the choice compared with the budget
    error: float | None  # test error: reported, never used to choose
    widths: list[int]
    method: str | None = None  # how the INT8 model was made where it is not the QDQ file ("NNCF, 2 ops kept fp32")
    OMIT_NONE = frozenset({"method"})


@dataclass(frozen=True)
class DeploymentChoice(JsonRecord):
    """The deployment chosen for the user (`vib_deploy.deploy.choose`) and the best dense one, at one batch size.

    `chosen` is None when no pruned deployment is within the budget (`why_none` says why); `budget` is the
    validation error ceiling, the dense fp32 net's validation error plus `max_error_increase`.
    """

    target: str  # deploy.target: auto or <engine>-<precision>@<batch>
    batch: int
    max_error_increase: float
    dense_val_error: float
    budget: float
    chosen: Deployment | None
    best_dense: Deployment | None
    speedup: float | None  # best dense p50 / chosen p50
    ideal_speedup: float
    measured_over_ideal: float | None
    why_none: str | None = None
    notes: list[str] = field(default_factory=list)  # deployments left out for want of a validation error
    NESTED = {"chosen": Deployment, "best_dense": Deployment}


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
    choice: DeploymentChoice | None = None  # None: a metrics.json made before the choice was recorded
    record_version: int = RECORD_VERSION
    OMIT_NONE = frozenset({"openvino", "quantize", "choice"})
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
        "choice": DeploymentChoice,
    }

    @property
    def deployed_error(self) -> float:
        """Test error of the deployed pruned net (the fine-tuned one's when that stage ran)."""
        return self.finetuned.error if self.finetuned else self.pruned.error
