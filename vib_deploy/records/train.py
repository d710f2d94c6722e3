"""The training stages' records: train-dense.json, train-vib.json and finetune.json.

Files written before records carried `record_version` read as version 0; keys added since then have defaults (and
are written only when set, so a file made before them reads back whole).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vib_deploy.records.base import RECORD_VERSION, JsonRecord


@dataclass(frozen=True)
class TrainDenseRecord(JsonRecord):
    """train-dense.json: the dense net's training (best validation epoch kept) and its errors."""

    FILE = "train-dense.json"
    history: list[dict[str, Any]]  # one entry per epoch: epoch, loss, val_acc, ...
    best_epoch: int | None
    seconds: float
    test_error: float
    val_error: float
    test_samples: int
    resumed_from_epoch: int | None = None
    world_size: int = 1
    images_per_second: float | None = None
    preprocessing: dict[str, Any] | None = None  # None: made before it was recorded (plain [0, 1] scaling)
    epoch_seconds: list[float] | None = None
    stopped_early: bool | None = None  # train.dense.patience ran out before train.dense.epochs (None: no patience)
    flush_denormal: bool | None = None  # flush-to-zero on in every CPU thread while training (None: not recorded)
    record_version: int = RECORD_VERSION

    OMIT_NONE = frozenset({"stopped_early", "flush_denormal"})


@dataclass(frozen=True)
class TrainVibRecord(JsonRecord):
    """train-vib.json: VIB training from the dense weights (the last epoch kept), its gates and architecture."""

    FILE = "train-vib.json"
    history: list[dict[str, Any]]
    seconds: float
    test_error: float
    val_error: float
    gates: list[dict[str, Any]]
    architecture: list[int]
    resumed_from_epoch: int | None = None
    world_size: int = 1
    images_per_second: float | None = None
    epoch_seconds: list[float] | None = None
    mask_sha256_per_rank: list[str] | None = None
    kl_weighting: str = "paper"
    kl_unit_weights: list[Any] | None = None  # kl_weighting flops / latency: each unit's weight at the final widths
    # kl_weighting latency: the lookup table used, {key: its cache key, sha256: of the entries used, entries, timed}
    latency_table: dict[str, Any] | None = None
    # train.vib.target: {kind: flops | speedup, value, on (speedup: deploy.target), reached (FLOPs fraction or predicted
    # speedup of the last epoch's deterministic net), cost, target_cost, kl_multiplier (at the end), kl_factor_start};
    # each epoch's history entry has its kl_multiplier and cost (a fraction of the dense net's)
    target: dict[str, Any] | None = None
    flush_denormal: bool | None = None  # flush-to-zero on in every CPU thread while training (None: not recorded)
    record_version: int = RECORD_VERSION
    # files made before the paper-protocol point was derived from `history` carry a stored `paper_protocol` key: it
    # is ignored on reading (it could pick an epoch with more FLOPs than the run ends with)
    OMIT_NONE = frozenset({"kl_unit_weights", "latency_table", "target", "flush_denormal"})

    @property
    def paper_protocol(self) -> dict[str, Any] | None:
        """train.vib.paper_protocol: the paper's figure, {epoch, architecture, test_error, flops} of the epoch with
        the lowest TEST error (the first of equals) among those whose net has at most the FLOPs of the last epoch's
        (the net this run prunes): an earlier, wider net is not the compressed net the figure stands for. None when
        the run did not record it. Reported beside ours, labelled, never used to choose."""
        epochs = [h for h in self.history if (h.get("paper_protocol") or {}).get("flops") is not None]
        if not epochs or epochs[-1] is not self.history[-1]:
            return None  # off, or the last epoch has no net to deploy
        final = epochs[-1]["paper_protocol"]["flops"]
        best = min(
            (h for h in epochs if h["paper_protocol"]["flops"] <= final),
            key=lambda h: h["paper_protocol"]["test_error"],
        )
        return {"epoch": best["epoch"], "architecture": best["units_alive"], **best["paper_protocol"]}


@dataclass(frozen=True)
class FinetuneRecord(JsonRecord):
    """finetune.json: the pruned net trained again (best validation epoch kept, epoch 0 = as pruned)."""

    FILE = "finetune.json"
    epochs: int
    lr: float
    weight_decay: float
    history: list[dict[str, Any]]
    best_epoch: int | None
    seconds: float
    pruned_val_error: float | None
    pruned_test_error: float
    test_error: float
    val_error: float
    resumed_from_epoch: int | None = None
    world_size: int = 1
    images_per_second: float | None = None
    epoch_seconds: list[float] | None = None  # None: made before it was recorded
    flush_denormal: bool | None = None  # flush-to-zero on in every CPU thread while training (None: not recorded)
    record_version: int = RECORD_VERSION

    OMIT_NONE = frozenset({"epoch_seconds", "flush_denormal"})
