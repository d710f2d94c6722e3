"""The training stages: train-dense, train-vib and finetune (data-parallel under torchrun; rank 0 writes).

train-dense: dense.pt, train-dense.json        train-vib: vib.pt, train-vib.json
finetune (train.finetune.epochs > 0): finetuned.pt, [finetuned_reduced.pt], finetune.json
"""

from __future__ import annotations

import time
from typing import Any

import torch

from vib_deploy.errors import UserError
from vib_deploy.nets import load_model
from vib_deploy.records import FinetuneRecord, PruneRecord, TrainDenseRecord, TrainVibRecord
from vib_deploy.stages.base import Context
from vib_deploy.stages.sources import model_source
from vib_deploy.training import distributed


def error_of(model: torch.nn.Module, x: Any, y: Any) -> float:
    """Top-1 error of `model` on (x, y), on the CPU."""
    from vib_deploy.training.evaluate import accuracy

    return 1.0 - accuracy(model, x, y, torch.device("cpu"))


def paper_protocol_epoch(source: Any, data: Any) -> Any:
    """train.vib.paper_protocol: after each VIB epoch, the TEST error of the deterministic net (eval mode, which the
    pruned net equals), its kept widths and its FLOPs (of the net pruned from a copy). Recorded only: nothing reads
    these to choose; the paper reports the best of them (`TrainVibRecord.paper_protocol`)."""
    from vib_deploy.model.layers import count_flops
    from vib_deploy.training.evaluate import accuracy

    def extra(model: torch.nn.Module) -> dict[str, Any]:
        test_error = 1.0 - accuracy(model, data.x_test, data.y_test)
        try:
            pruned = source.prune(model)[0].model.float()
        except UserError:  # a whole layer gated off: no net to deploy at this epoch
            return {"paper_protocol": {"test_error": test_error, "flops": None}}
        return {"paper_protocol": {"test_error": test_error, "flops": count_flops(pruned, tuple(source.input_shape))}}

    return extra


def _kl_terms(ctx: Context, gated: torch.nn.Module, input_shape: Any, images: int) -> tuple[Any, Any]:
    """train.vib's KL weighting (None: the paper's) and its target's multiplier (None: kl_factor fixed); the latency
    tables either reads are timed on deploy.target (or read from the cache) first."""
    cfg, weighting, multiplier, tables_for = ctx.config.train.vib, None, None, None
    if cfg.kl_weighting == "latency" or (cfg.target is not None and cfg.target.speedup is not None):
        from vib_deploy.bench.layer_timing import target_tables

        tables_for = target_tables(ctx.config, ctx.progress)
    if cfg.kl_weighting != "paper":
        from vib_deploy.training.klweight import weighting_for

        weighting = weighting_for(ctx.config, gated, input_shape, tables_for)
    if cfg.target is not None:
        from vib_deploy.training.target import multiplier_for

        steps = -(-images // ctx.config.train.batch_size)
        multiplier = multiplier_for(ctx.config, gated, input_shape, steps, tables_for)
    return weighting, multiplier


def _joined(paper: Any, multiplier: Any) -> Any:
    """One `epoch_extra` of the paper protocol's and the target multiplier's (None: neither)."""
    extras = [f for f in (paper, multiplier.epoch_record if multiplier else None) if f is not None]
    return (lambda model: {k: v for f in extras for k, v in f(model).items()}) if extras else None


def _target_reached(multiplier: Any, config: Any) -> dict[str, Any]:
    """train-vib.json's `target`: what was asked, what the deterministic net reached, and lambda at the end."""
    on = {"on": str(config.target())} if multiplier.kind == "speedup" else {}
    return {
        "kind": multiplier.kind, "value": multiplier.value, **on, "reached": multiplier.reached(),
        "cost": multiplier.cost(), "target_cost": multiplier.target, "kl_multiplier": multiplier.factor,
        "kl_factor_start": multiplier.start,
    }  # fmt: skip


def _spec(ctx: Context, stage: str, **kw: Any) -> Any:
    from vib_deploy.training.loop import TrainSpec, resolve_device

    t = ctx.config.train
    return TrainSpec(
        stage=stage, key=ctx.key, batch_size=t.batch_size, seed=t.seed, device=resolve_device(t.device), amp=t.amp, **kw
    )


def _best_epoch_spec(ctx: Context, stage: str, cfg: Any, **kw: Any) -> Any:
    """A plain net trained for `cfg.epochs` (Adam lr, weight decay), keeping the best validation epoch."""
    return _spec(ctx, stage, epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, select_best=True, **kw)


def train_dense(ctx: Context) -> list[str]:
    """Ordinary training of the dense net; keeps the epoch with the best validation accuracy."""
    from vib_deploy.training.loop import train

    cfg = ctx.config.train.dense
    data = ctx.splits()
    source = model_source(ctx.config)  # checked against the data and pruned exactly before any stage ran
    torch.manual_seed(ctx.config.train.seed)
    dense = source.dense()
    t0 = time.time()
    spec = _best_epoch_spec(ctx, "train-dense", cfg, patience=cfg.patience)
    result = train(dense, spec, data, ctx.run, ctx.progress)
    seconds = time.time() - t0
    dense = dense.cpu()

    def write() -> list[str]:
        source.save(dense, ctx.out("dense.pt"))
        TrainDenseRecord(
            history=result.history,
            best_epoch=result.best_epoch,
            resumed_from_epoch=result.resumed_from,
            seconds=seconds,
            test_error=error_of(dense, data.x_test, data.y_test),
            val_error=error_of(dense, data.x_val, data.y_val),
            test_samples=len(data.y_test),
            world_size=distributed.world_size(),
            images_per_second=result.images_per_second,
            preprocessing=data.preprocessing(ctx.config.data.pad),
            epoch_seconds=result.epoch_seconds,
            stopped_early=result.stopped_early if cfg.patience is not None else None,
            flush_denormal=result.flush_denormal,
        ).write(ctx.out(TrainDenseRecord.FILE))
        return ["dense.pt", TrainDenseRecord.FILE]

    return distributed.on_main(write)  # under torchrun the other ranks wait for rank 0's files


def train_vib(ctx: Context) -> list[str]:
    """VIB training from the dense weights; keeps the last epoch (no test-set or best-epoch selection)."""
    from vib_deploy.training.evaluate import gate_summary, mask_digest
    from vib_deploy.training.loop import train

    cfg = ctx.config.train.vib
    data = ctx.splits()
    source = model_source(ctx.config)
    dense = load_model(ctx.run.verified("dense.pt"))  # before seeding: the gates' init draws come first after it
    torch.manual_seed(ctx.config.train.seed)
    gated = source.gated(dense, cfg.threshold)
    weighting, multiplier = _kl_terms(ctx, gated, source.input_shape, len(data.y_train))
    t0 = time.time()
    spec = _spec(
        ctx,
        "train-vib",
        epochs=cfg.epochs,
        lr=cfg.lr,
        gate_lr=cfg.gate_lr,
        kl_factor=cfg.kl_factor,
        kl_multiplier=multiplier,
        finetune_epochs=cfg.finetune_epochs,
        kl_weighting=weighting,
        weight_decay=cfg.weight_decay,
        gate_weight_decay=cfg.gate_decay(),
        schedule=cfg.schedule,
        epoch_extra=_joined(paper_protocol_epoch(source, data) if cfg.paper_protocol else None, multiplier),
        ema=cfg.ema,
    )
    result = train(gated, spec, data, ctx.run, ctx.progress)
    seconds = time.time() - t0
    gated = gated.cpu()
    masks = distributed.same_on_all_ranks("gate masks", mask_digest(gated))  # what pruning will cut, from every rank

    def write() -> list[str]:
        source.save(gated, ctx.out("vib.pt"))
        TrainVibRecord(
            history=result.history,
            resumed_from_epoch=result.resumed_from,
            seconds=seconds,
            test_error=error_of(gated, data.x_test, data.y_test),
            val_error=error_of(gated, data.x_val, data.y_val),
            gates=gate_summary(gated),
            architecture=source.architecture(gated),
            world_size=distributed.world_size(),
            images_per_second=result.images_per_second,
            epoch_seconds=result.epoch_seconds,
            mask_sha256_per_rank=masks,
            kl_weighting=cfg.kl_weighting,
            kl_unit_weights=weighting.weights() if weighting else None,  # at the final widths
            latency_table=weighting.identity() if weighting else None,
            target=_target_reached(multiplier, ctx.config) if multiplier else None,
            flush_denormal=result.flush_denormal,
        ).write(ctx.out(TrainVibRecord.FILE))
        return ["vib.pt", TrainVibRecord.FILE]

    return distributed.on_main(write)  # under torchrun the other ranks wait for rank 0's files


def finetune(ctx: Context) -> list[str]:
    """The pruned plain net trained again: fresh Adam, cosine, `train.finetune`; the best validation epoch is
    kept, the pruned weights themselves (epoch 0) included. Kept pixels (PixelSelect indices) are buffers and
    never change; the reduced-input net is this net without its PixelSelect."""
    from vib_deploy.prune.sequential import reduced_input
    from vib_deploy.training.loop import train

    cfg = ctx.config.train.finetune
    data = ctx.splits()
    source = model_source(ctx.config)
    info = PruneRecord.read(ctx.run)
    model = load_model(ctx.run.verified("pruned.pt"))
    torch.manual_seed(ctx.config.train.seed)
    t0 = time.time()
    spec = _best_epoch_spec(ctx, "finetune", cfg, keep_start=True)
    result = train(model, spec, data, ctx.run, ctx.progress)
    seconds = time.time() - t0
    model = model.cpu().eval()

    def write() -> list[str]:
        extra = {"kept_pixels": info.kept_pixels}
        source.save(model, ctx.out("finetuned.pt"), extra, pruning=info.pruning)
        outputs = ["finetuned.pt"]
        if info.kept_pixels is not None:
            assert isinstance(model, torch.nn.Sequential)
            source.save(reduced_input(model), ctx.out("finetuned_reduced.pt"), extra)
            outputs.append("finetuned_reduced.pt")
        start = result.start_val_acc
        FinetuneRecord(
            epochs=cfg.epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            history=result.history,
            best_epoch=result.best_epoch,
            resumed_from_epoch=result.resumed_from,
            seconds=seconds,
            pruned_val_error=None if start is None else 1.0 - start,
            pruned_test_error=info.test_error,
            test_error=error_of(model, data.x_test, data.y_test),
            val_error=error_of(model, data.x_val, data.y_val),
            world_size=distributed.world_size(),
            images_per_second=result.images_per_second,
            epoch_seconds=result.epoch_seconds,
            flush_denormal=result.flush_denormal,
        ).write(ctx.out(FinetuneRecord.FILE))
        return outputs + [FinetuneRecord.FILE]

    return distributed.on_main(write)
