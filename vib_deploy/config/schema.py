"""The pipeline file's schema: pydantic models of every section (`extra=forbid`: a typo is an error naming the key)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from vib_deploy.model.zoo_names import SEQUENTIAL_ZOO, ZOO_NAMES


def _zoo_model(name: str) -> str:
    """A name from the zoo's registry (vib_deploy/model/zoo_names.py)."""
    if name not in ZOO_NAMES:
        raise PydanticCustomError(
            "unknown_name", "unknown model; the zoo has {allowed}", {"allowed": ", ".join(ZOO_NAMES)}
        )
    return name


def _bench_backend(name: str) -> str:
    """A backend the registry lets the bench stage time (vib_deploy/backends: `bench_stage`)."""
    from vib_deploy.backends import BACKENDS, bench_stage_backends

    allowed = bench_stage_backends()
    if name not in allowed:
        why = "the bench stage does not run this backend" if name in BACKENDS else "unknown backend"
        raise PydanticCustomError(
            "unknown_name", "{why}; bench.backends takes {allowed}", {"why": why, "allowed": ", ".join(allowed)}
        )
    return name


ZooName = Annotated[str, AfterValidator(_zoo_model)]
BenchBackend = Annotated[str, AfterValidator(_bench_backend)]


# pyright: reportCallIssue=false
# (pyright does not read a positional default in pydantic's Field(10, ge=1), so a section built with its defaults,
# e.g. `dense: DenseTrainConfig = DenseTrainConfig()`, looks like a call missing its arguments)
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # .inf/.nan: never a usable setting


class ModelConfig(_Strict):
    # exactly one of: a zoo model (see vib_deploy/zoo), or a factory returning an nn.Module
    name: ZooName | None = None  # a zoo net: vib_deploy/model/zoo_names.py
    factory: str | None = Field(None, min_length=3)  # "path/to/my_net.py:build" or "package.module:build"
    kwargs: dict[str, Any] = {}  # keyword arguments for the factory (or zoo function)
    input_shape: list[int] | None = None  # (C, H, W) of one sample; default: the data's (1, 28 + 2 pad, ...)
    ignore: list[str] = []  # module names whose output channels are never pruned (the output layer never is)
    depth_gates: bool = False  # also one VIB gate per residual branch: a branch it switches off goes whole

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.name is None and self.factory is None:
            raise PydanticCustomError("model_source_missing", "a zoo model name or a factory")
        if self.name is not None and self.factory is not None:
            raise ValueError("give exactly one of model.name (a zoo model) and model.factory (your own nn.Module)")
        if self.name in SEQUENTIAL_ZOO and (self.kwargs or self.input_shape or self.ignore or self.depth_gates):
            raise ValueError(f"model {self.name} takes no kwargs, input_shape, ignore or depth_gates")
        if self.input_shape is not None and (len(self.input_shape) != 3 or min(self.input_shape) < 1):
            raise ValueError(
                f"input_shape must be [channels, height, width] of positive integers, got {self.input_shape}"
            )
        return self


class DataConfig(_Strict):
    dataset: Literal["mnist", "fashion-mnist", "folder", "arrays"] = "mnist"  # folder/arrays: your own (README)
    root: str | None = None  # folder with the data (IDX files: else $VIB_DEPLOY_DATA, else the user cache)
    val_size: int = Field(5000, ge=1)  # the last `val_size` training images are held out for validation
    train_limit: int | None = Field(None, ge=1)  # use only the first N training images (tests, smoke runs)
    test_limit: int | None = Field(None, ge=1)  # use only the first N test images (tests only: the report says so)
    pad: int = Field(0, ge=0, le=16)  # zero pixels added on each side (2: 28x28 -> 32x32 for CIFAR-style nets)
    channels: Literal[1, 3] | None = None  # folder: convert every image to grey (1) or RGB (3); default as they are
    size: list[int] | None = None  # folder: resize every image to [H, W]; needed when their sizes differ
    normalize: bool = False  # standardise per channel with the training split's mean/std (stored with the models)

    @model_validator(mode="after")
    def _own_data(self) -> DataConfig:
        own = self.dataset in ("folder", "arrays")
        if own and not self.root:
            raise ValueError(f"dataset {self.dataset} needs data.root: the folder that holds the data")
        if self.dataset != "folder" and (self.channels is not None or self.size is not None):
            raise ValueError("data.channels and data.size apply to dataset: folder only")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f"size must be [height, width] of positive integers, got {self.size}")
        return self


class DenseTrainConfig(_Strict):
    epochs: int = Field(10, ge=1)  # with patience: the cap
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    # stop after this many epochs without a better validation accuracy (lr halved after patience // 3 of them);
    # None: run every epoch on the cosine schedule
    patience: int | None = Field(None, ge=1)


class CostTargetConfig(_Strict):
    """train.vib.target, exactly one key: kl_factor is then only the start of a multiplier (training/target.py)."""

    flops: float | None = Field(None, gt=0, lt=1)  # the deterministic pruned net's FLOPs / the dense net's
    speedup: float | None = Field(None, gt=1)  # dense / pruned latency on deploy.target, from the latency tables

    @model_validator(mode="after")
    def _one(self) -> CostTargetConfig:
        if (self.flops is None) == (self.speedup is None):
            raise ValueError("target takes one of flops (of the dense net's) or speedup (on deploy.target)")
        return self


class VIBTrainConfig(_Strict):
    epochs: int = Field(30, ge=1)
    lr: float = Field(1e-3, gt=0)  # weights
    gate_lr: float = Field(1e-2, gt=0)  # gate parameters mu, logD (their own Adam group)
    kl_factor: float = Field(1e-5, ge=0)  # the one knob: loss = CE + kl_factor * sum of KL
    threshold: float = 0.0  # a unit is kept when logα < threshold
    finetune_epochs: int = Field(0, ge=0)  # of `epochs`, the last N train weights only, gates frozen (no noise, no KL)
    weight_decay: float = Field(0.0, ge=0)  # Adam's L2 on weights AND gates (the official code: 5e-5 on both)
    # the gates' (mu, log sigma^2) own L2 instead of weight_decay, which then applies to the weights only; None: as above
    gate_weight_decay: float | None = Field(None, ge=0)
    schedule: Literal["cosine", "step"] = "cosine"  # step: lr x 0.5 every 30 epochs (the official code)
    # per-unit KL weight: the paper's (0.5 * kl_mult * map_size), or what a unit costs now (vib_deploy/training/klweight.py):
    # its FLOPs, or its latency on deploy.target (a named one) from a lookup table timed there (vib_deploy/measure/latency.py)
    kl_weighting: Literal["paper", "flops", "latency"] = "paper"
    # also record each epoch's TEST error, kept widths and FLOPs of the deterministic (pruned-equivalent) net: the
    # paper's protocol (best test epoch), reported beside ours and labelled; it never chooses anything
    paper_protocol: bool = False
    # decay of an exponential moving average of the weights and gates, updated every step; the average is what is
    # validated, kept, pruned, exported and reported (vib_deploy/training/ema.py); None: off
    ema: float | None = Field(None, gt=0, lt=1)
    # a cost to land on instead of a KL factor: {flops: 0.25} or {speedup: 3} (on deploy.target); kl_factor starts the
    # multiplier that dual ascent then moves each step (vib_deploy/training/target.py); None: kl_factor is fixed
    target: CostTargetConfig | None = None

    def gate_decay(self) -> float:
        """The weight decay of the gates' Adam group: gate_weight_decay when set, else weight_decay."""
        return self.weight_decay if self.gate_weight_decay is None else self.gate_weight_decay

    @model_validator(mode="after")
    def _finetune_within_epochs(self) -> VIBTrainConfig:
        if self.finetune_epochs >= self.epochs:
            raise ValueError(f"finetune_epochs ({self.finetune_epochs}) must be less than epochs ({self.epochs})")
        if self.target is not None and self.kl_factor <= 0:
            raise ValueError("train.vib.target needs kl_factor > 0: the multiplier's start")
        return self


class FinetuneConfig(_Strict):
    """The `finetune` stage: the pruned plain net trained again (fresh Adam, cosine), best validation epoch kept."""

    epochs: int = Field(0, ge=0)  # 0: off (the stage does not exist; export/bench use pruned.pt)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class TrainConfig(_Strict):
    seed: int = 0
    batch_size: int = Field(100, ge=1)
    device: str = "cpu"  # auto | cpu | cuda | cuda:N (auto: cuda when torch sees a GPU)
    amp: Literal["off", "bf16", "fp16"] = "off"  # autocast dtype of the forward pass; fp16 adds a GradScaler
    dense: DenseTrainConfig = DenseTrainConfig()
    vib: VIBTrainConfig = VIBTrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", v):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return v


class PruneConfig(_Strict):
    tolerance: float = Field(1e-5, gt=0)  # max |Δlogit| pruned vs VIB (inference mode), enforced
    # kept units per layer rounded up to a multiple (1: the VIB's own counts); auto: the fastest width per layer,
    # measured on the first of bench.backends (see vib_deploy/deploy/widths.py)
    round_to: Literal[1, 4, 8, 16, "auto", "block"] = 1


class ExportConfig(_Strict):
    opset: int = Field(17, ge=17, le=23)
    tolerance: float = Field(1e-4, gt=0)  # max |Δlogit| ONNX Runtime vs torch, enforced
    min_argmax_agreement: float = Field(0.999, gt=0, le=1)


class BenchConfig(_Strict):
    backends: list[BenchBackend] = ["onnxruntime", "torch"]  # the registry's `bench_stage` backends
    # fp32 and/or int8 (the quantize stage's QDQ models); default: fp32, plus int8 when quantize.enabled
    precisions: list[Literal["fp32", "int8"]] | None = None
    batch_sizes: list[int] = [1, 64]
    threads: int = Field(1, ge=1)  # intra-op threads for every backend, so the comparison is like for like
    rounds: int = Field(20, ge=1)  # alternating dense/pruned rounds
    iters_per_round: int = Field(50, ge=1)
    warmup: int = Field(20, ge=0)
    memory: bool = True  # peak RSS of a fresh process per variant (slower: one subprocess each)

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v):
            raise ValueError("batch sizes must be a non-empty list of integers >= 1")
        return v

    @field_validator("precisions")
    @classmethod
    def _some(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("precisions must name at least one of fp32, int8 (or be left out)")
        return v


class QuantizeConfig(_Strict):
    enabled: bool = False  # the quantize stage: static INT8 (QDQ ONNX) of the dense and pruned models
    calibration_images: int = Field(300, ge=1)  # training images only (never validation or test)
    per_channel: bool = True  # per-output-channel weight scales
    # OpenVINO's INT8 (needs openvino in bench.backends): qdq = OpenVINO runs the ONNX Runtime QDQ model; nncf = NNCF's
    # quantize_with_accuracy_control of the fp32 IR, within deploy.max_error_increase on validation (pip install nncf)
    openvino: Literal["qdq", "nncf"] = "qdq"


@dataclass(frozen=True)
class Target:
    """A deployment target: engine (a bench backend), precision and batch size, written `openvino-int8@64`."""

    engine: str
    precision: str  # fp32 | int8
    batch: int

    def __str__(self) -> str:
        return f"{self.engine}-{self.precision}@{self.batch}"


TARGET_PATTERN = r"auto|[a-z][a-z0-9_]*-(fp32|int8)(@[1-9][0-9]*)?"


class DeployConfig(_Strict):
    """Which deployment the pipeline chooses for the user (the report's "chosen"; `package` ships it as `<run>`)."""

    # auto: the fastest pruned deployment over every benched engine and precision within the error budget, at the
    # largest bench batch size; <engine>-<precision>[@batch]: that one (batch: the largest bench batch size)
    target: str = Field("auto", pattern=rf"^({TARGET_PATTERN})$")
    max_error_increase: float = Field(
        0.005, ge=0, le=1
    )  # over the dense fp32 net's validation error (0.005: 0.5 point)


class MlflowConfig(_Strict):
    uri: str = Field(min_length=1)  # tracking URI: sqlite:///mlflow.db (a local file, no server), http://..., file:...
    experiment: str = Field(min_length=1)


class TrackConfig(_Strict):
    mlflow: MlflowConfig | None = None  # off by default; needs `pip install -e .[track]`


class PipelineConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: ModelConfig
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    prune: PruneConfig = PruneConfig()
    export: ExportConfig = ExportConfig()
    bench: BenchConfig = BenchConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    track: TrackConfig = TrackConfig()  # experiment tracking; keys no stage (changing it reruns nothing)
    deploy: DeployConfig = DeployConfig()

    def target(self) -> Target | None:
        """deploy.target as a Target (None: auto); its engine, precision and batch are checked against bench."""
        if self.deploy.target == "auto":
            return None
        name, _, batch = self.deploy.target.partition("@")
        engine, precision = name.rsplit("-", 1)
        return Target(engine, precision, int(batch) if batch else max(self.bench.batch_sizes))

    @model_validator(mode="after")
    def _target_benched(self) -> PipelineConfig:
        t = self.target()
        if t is None:
            return self
        if t.engine not in self.bench.backends:
            raise ValueError(f"deploy.target {t}: engine {t.engine!r} is not in bench.backends {self.bench.backends}")
        precisions = self.bench.precisions or (["fp32", "int8"] if self.quantize.enabled else ["fp32"])
        if t.precision not in precisions:
            raise ValueError(
                f"deploy.target {t}: precision {t.precision} is not benched (bench.precisions {precisions}"
                + ("; int8 needs quantize.enabled: true)" if t.precision == "int8" else ")")
            )
        if t.batch not in self.bench.batch_sizes:
            raise ValueError(f"deploy.target {t}: batch {t.batch} is not in bench.batch_sizes {self.bench.batch_sizes}")
        return self

    @model_validator(mode="after")
    def _nncf_on_openvino(self) -> PipelineConfig:
        q = self.quantize
        if q.enabled and q.openvino == "nncf" and "openvino" not in self.bench.backends:
            raise ValueError(
                f"quantize.openvino: nncf quantizes the OpenVINO IR; bench.backends {self.bench.backends} has no openvino"
            )
        return self

    @model_validator(mode="after")
    def _latency_weighting_on_a_target(self) -> PipelineConfig:
        from vib_deploy.backends import BACKENDS

        vib = self.train.vib
        key = "train.vib.target: speedup" if vib.target and vib.target.speedup else "train.vib.kl_weighting: latency"
        if not (vib.target and vib.target.speedup) and vib.kl_weighting != "latency":
            return self
        t = self.target()
        if t is None:
            raise ValueError(
                f"{key} needs a named deploy.target (<engine>-<precision>@<batch>, e.g. onnxruntime-fp32@64), not auto"
            )
        if BACKENDS[t.engine].artifact_suffix != ".onnx":
            raise ValueError(
                f"{key} times ONNX layers; deploy.target {t} names {t.engine}, "
                "which runs no ONNX model (use onnxruntime or openvino)"
            )
        return self
