"""A peer's `prune` stage (see studies/peers.py for the methods): what it needs from its VIB run (`PeerSpec`),
its epoch budget (`epoch_budget`), and the stage itself (`peer_prune`): prune dense.pt to VIB's FLOPs (or to
VIB's widths, or rebuild VIB's architecture from scratch), fine-tune, write pruned.pt and prune.json.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.model.layers import count_flops, count_params
from vib_deploy.nets import load_model, save_model
from vib_deploy.prune.sequential import reduced_input
from vib_deploy.records import Cost, PeerInfo, PruneRecord
from vib_deploy.runs.directory import RunDir
from vib_deploy.stages.base import Context
from vib_deploy.stages.registry import keyed_section
from vib_deploy.studies.peers import (
    FLOPS_TOLERANCE,
    METHODS,
    SLIMMING_L1,
    _kept_pixels,
    dense_widths,
    fit,
    gated_for_slimming,
    match_widths,
    prune_by_scale,
    prune_pixels,
    prune_to_widths,
    scratch_net,
)
from vib_deploy.training.evaluate import accuracy


def mean_abs_input(x_train: Any) -> torch.Tensor:
    """Mean |x| of each input value over the training images, flattened as the first Linear of an MLP sees them."""
    x = torch.as_tensor(x_train)
    return x.reshape(len(x), -1).abs().double().mean(0)


# -- the peer's "prune" stage ----------------------------------------------------------------------
@dataclass(frozen=True)
class PeerSpec:
    """What a peer run needs from its VIB run."""

    method: str
    target_flops: int  # the VIB model's pruned FLOPs
    vib_run: str  # the VIB run directory (for the record)
    input_units: int | None  # the VIB model's input width when it gates its input (shown as 784-…)
    vib_architecture: tuple[int, ...] = ()  # VIB's kept units per gate, its kept pixels first when it gates its input
    vib_model_sha256: str | None = None  # VIB's pruned.pt (scratch takes its architecture and kept pixels)
    vib_finetune_epochs: int = (
        0  # VIB's train.finetune.epochs (a peer's own config has the stage off: it fine-tunes itself)
    )

    def section(self, config: Any) -> dict[str, Any]:
        t = config.train
        method = METHODS[self.method]
        budget = epoch_budget(self.method, config, self.vib_finetune_epochs)
        out = {
            "method": self.method,
            "target_flops": self.target_flops,
            "tolerance": FLOPS_TOLERANCE,
            "slimming_l1": SLIMMING_L1 if self.method == "slimming" else None,
            "epochs": budget["total"],
            "lr": t.vib.lr,
            "gate_lr": t.vib.gate_lr,
            "batch_size": t.batch_size,
            "seed": t.seed,
            "data": keyed_section("data", config.data),
            "prune": config.prune.model_dump(),
            "keep": "best validation epoch",
        }
        if self.vib_finetune_epochs > 0:  # keyed only when set: runs made without VIB's finetune stage stay cached
            out["split"] = [budget["sparsity"], budget["finetune"]]
        if method.same_widths or method.scratch:
            out["widths"] = list(self.vib_architecture)
        if method.pixel_criterion == "activation" and (method.pixels or self.input_units):  # keyed only when it applies
            out["pixels_by"] = "|W|*E|x|"
        if method.scratch:
            out["vib_model_sha256"] = self.vib_model_sha256
        return out

    def vib_widths(self, hidden: int) -> tuple[int | None, list[int]]:
        """(kept pixels or None, kept hidden widths) of the VIB model whose dense net has `hidden` prunable layers."""
        arch = list(self.vib_architecture)
        return (arch[0] if len(arch) == hidden + 1 else None), arch[len(arch) - hidden :]


def epoch_budget(method: str, config: Any, vib_finetune_epochs: int) -> dict[str, int]:
    """Epochs a peer trains: sparsity (slimming), finetune (or from-scratch training), and their total.

    VIB trains train.vib.epochs (+ train.finetune.epochs) after the dense stage; every peer but scratch gets
    that total after the same dense stage; scratch, which has no dense stage, also gets the dense epochs.
    """
    t = config.train
    total = t.vib.epochs + vib_finetune_epochs
    if METHODS[method].scratch:
        return {"sparsity": 0, "finetune": t.dense.epochs + total, "total": t.dense.epochs + total}
    if method == "slimming":
        sparse = t.vib.epochs if vib_finetune_epochs > 0 else (total + 1) // 2
        return {"sparsity": sparse, "finetune": total - sparse, "total": total}
    return {"sparsity": 0, "finetune": total, "total": total}


def peer_prune(ctx: Context, spec: PeerSpec) -> list[str]:
    """Prune the run's dense.pt with `spec.method` to the VIB FLOPs, fine-tune, write pruned.pt + prune.json."""
    # long function: choosing the widths, pruning (or rebuilding) by method, fine-tuning and the record read as one recipe
    t = ctx.config.train
    data = ctx.splits()
    shape = tuple(data.x_test.shape[1:])
    torch.manual_seed(t.seed)
    dense = load_model(ctx.run.verified("dense.pt"))
    assert isinstance(dense, nn.Sequential)  # compare refuses other nets first (dense_widths)
    method = METHODS[spec.method]
    budget = epoch_budget(spec.method, ctx.config, spec.vib_finetune_epochs)
    if method.same_widths or method.scratch:
        pixels, widths = spec.vib_widths(len(dense_widths(dense)))
    else:
        widths = match_widths(dense, spec.target_flops, shape, pixels=method.pixels)
        pixels = widths.pop(0) if method.pixels else None
    t0 = time.time()
    sparsity: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    kept_pixels, reduced, outputs = None, None, ["pruned.pt"]
    if method.scratch:  # VIB's architecture and pixels, weights drawn afresh
        vib_pruned = load_model(RunDir(Path(spec.vib_run)).verified("pruned.pt"))
        assert isinstance(vib_pruned, nn.Sequential)
        pruned = scratch_net(vib_pruned)
        if dense_widths(pruned) != widths:
            raise UserError(f"scratch: VIB's pruned.pt has widths {dense_widths(pruned)}, its prune.json {widths}")
        if pixels is not None:
            kept_pixels, reduced = _kept_pixels(pruned), reduced_input(pruned)
            outputs.append("pruned_reduced.pt")
        pixels = None
    elif method.importance is None:  # slimming: sparsity training, then prune by |scale|
        gated = gated_for_slimming(dense)
        sparsity, _ = fit(
            gated,
            data,
            budget["sparsity"],
            t.vib.lr,
            t.batch_size,
            t.seed,
            t.vib.gate_lr,
            SLIMMING_L1,
            ctx.progress,
            "slimming L1",
        )
        pruned, extra = prune_by_scale(gated, widths, shape)
    else:
        pruned = prune_to_widths(dense, widths, method.importance(), shape)
    finetune_epochs = budget["finetune"]
    if pixels is not None:
        seed = t.seed if method.pixel_criterion == "random" else None
        stats = mean_abs_input(data.x_train) if method.pixel_criterion == "activation" else None
        pruned, reduced, kept_pixels = prune_pixels(
            pruned, pixels, seed, stats
        )  # `reduced` shares its layers with `pruned`
        outputs.append("pruned_reduced.pt")
    error_before = 1 - accuracy(pruned, data.x_test, data.y_test)
    history, kept_epoch = fit(
        pruned, data, finetune_epochs, t.vib.lr, t.batch_size, t.seed + 1, progress=ctx.progress, select_best=True
    )
    pruned = pruned.float().eval()
    flops = count_flops(pruned, shape)
    save_model(pruned, ctx.out("pruned.pt"), {"kept_pixels": kept_pixels, "method": spec.method})
    if reduced is not None:
        save_model(
            reduced.float().eval(), ctx.out("pruned_reduced.pt"), {"kept_pixels": kept_pixels, "method": spec.method}
        )
    inputs = [len(kept_pixels)] if kept_pixels is not None else [spec.input_units] if spec.input_units else []
    arch = inputs + widths
    full = dense_widths(dense)
    peer = PeerInfo(
        method=spec.method,
        vib_run=spec.vib_run,
        target_flops=spec.target_flops,
        flops_mismatch=flops / spec.target_flops - 1,
        test_error_before_finetune=error_before,
        sparsity_epochs=len(sparsity),
        finetune_epochs=len(history),
        history={"sparsity": sparsity, "finetune": history},
        seconds=time.time() - t0,
        budget_epochs=budget["total"],
        kept_epoch=kept_epoch,
    )
    PruneRecord(
        architecture=arch,
        dense_architecture=([spec.input_units or math.prod(shape)] if inputs else []) + full,
        kept_pixels=kept_pixels,
        test_error=1 - accuracy(pruned, data.x_test, data.y_test),
        samples=len(data.y_test),
        dense=Cost(count_flops(dense, shape), count_params(dense)),
        pruned=Cost(flops, count_params(pruned)),
        input_shape=shape,
        scales_left=extra.get("scales_left"),
        peer=peer,
    ).write(ctx.out(PruneRecord.FILE))
    return outputs + [PruneRecord.FILE]
