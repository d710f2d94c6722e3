"""prune.json (`PruneRecord`: VIB pruning with its exactness check, or a peer method of studies/peers.py) and
widths-sweep.json (`WidthsSweep`: the prune stage's measured per-layer times under `prune.round_to: auto`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from vib_deploy.records.base import RECORD_VERSION, JsonRecord, check_version

MNIST_INPUT = (1, 28, 28)  # prune.json files made before `input_shape` was recorded were all LeNets on MNIST


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
class PruneRecord(JsonRecord):
    """prune.json: what pruning kept and what it costs; `exact` for VIB runs, `peer` for peer methods."""

    FILE = "prune.json"

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
    val_error: float | None = None  # the pruned net's validation error (None: a file made before it was recorded)
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
        if self.val_error is not None:
            out["val_error"] = self.val_error
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PruneRecord:  # type: ignore[override]
        check_version(d, "prune.json")
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
            val_error=d.get("val_error"),
            record_version=d.get("record_version", 0),
        )


@dataclass(frozen=True)
class WidthsSweep(JsonRecord):
    """widths-sweep.json: the per-layer times `prune.round_to: auto` measured, under the key they were measured with
    (backend, threads, batch, CPU, the VIB model's sha256); a rerun with the same key measures only what is new."""

    FILE = "widths-sweep.json"
    key: dict[str, Any]
    times_ms: dict[str, float]
    record_version: int = RECORD_VERSION
