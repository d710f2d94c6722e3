"""One training loop for the dense net and the VIB net, with per-epoch checkpoints and exact resume.

A checkpoint (model, optimizer, scheduler, RNG states, epoch, best metric, history) is written
atomically at the end of every epoch. A run killed mid-epoch resumes from the last complete epoch
and, on CPU, ends bitwise equal to an uninterrupted run (same seed, same thread count): the
shuffling generator and the global RNG that draws gate noise are restored with everything else.

Under torchrun (see `vib_deploy.training.distributed`) the model is wrapped in DistributedDataParallel. Data are
not split with a DistributedSampler: every rank draws the same global permutation from the shared
shuffling generator and takes its slice of each global batch of `batch_size` images, so an N-rank run
steps through exactly the batches of a 1-rank run with the same batch_size. Each rank's loss is its local
mean CE + kl_factor * KL; DDP averages gradients over ranks, which (with equal slices) is the gradient
of the global batch's mean CE + kl_factor * KL: the KL counts once, not N times. Gate noise comes from
the global RNG seeded seed + rank, so runs with and without torchrun agree in distribution only, except
where there is no noise (dense training, fine-tuning epochs), where they agree up to float rounding.
Checkpoints hold every rank's RNG state (gathered by rank 0, which alone writes them); every rank
resumes from rank 0's checkpoint in the shared run directory. Validation is split over the ranks and
its counts summed, so all ranks see the same accuracy; gate masks are checked equal on all ranks.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.model.vib import gates, total_kl, vib_loss
from vib_deploy.runs.directory import RunDir
from vib_deploy.training import distributed
from vib_deploy.training.accel import amp_context, on_device
from vib_deploy.training.checkpoint import checkpoint_state, load_checkpoint, restore_rng, save_checkpoint
from vib_deploy.training.ema import WeightEMA, maybe_applied
from vib_deploy.training.evaluate import _sharded_accuracy, accuracy, mask_digest, units_alive
from vib_deploy.training.numerics import flush_denormal, flush_subnormals_, training_state


@dataclass
class TrainSpec:
    """What to train and how: one for the dense stage, one for the VIB stage."""

    stage: str  # "train-dense" or "train-vib"; names the checkpoint file
    key: str  # the stage's cache key: a checkpoint from another key is not resumed
    epochs: int
    lr: float
    batch_size: int
    seed: int
    device: torch.device
    weight_decay: float = 0.0
    gate_weight_decay: float = 0.0  # VIB only: the gates' own group (the official code decays them like the weights)
    schedule: str = "cosine"  # cosine (to 0 over `epochs`) | step (lr x 0.5 every 30 epochs, the official VIBNet code)
    gate_lr: float | None = None  # VIB only: Adam group of the gates
    kl_factor: float | None = None  # VIB only
    kl_multiplier: Any = None  # VIB with train.vib.target: a target.KLMultiplier, in kl_factor's place
    select_best: bool = False  # keep the epoch with the best validation accuracy (dense)
    finetune_epochs: int = 0  # VIB only: last N epochs with gates frozen at their inference value z = mu * mask
    l1: float = 0.0  # network slimming (studies/peers.py): + l1 * sum |mu| of the gates
    amp: str = "off"  # off | bf16 | fp16: autocast of forward + loss (fp16 with a GradScaler); off is the fp32 path
    kl_weighting: Any = None  # VIB only: a klweight.CostWeighting of the model (None: the paper's weights)
    keep_start: bool = False  # with select_best: the weights it starts from are a candidate too (epoch 0)
    # with select_best: stop after this many epochs without a better validation accuracy (`epochs` is the cap);
    # the lr halves after patience // 3 such epochs (ReduceLROnPlateau) instead of following `schedule`
    patience: int | None = None
    epoch_extra: Callable[[nn.Module], dict[str, Any]] | None = None  # joins each epoch's history (paper_protocol)
    ema: float | None = None  # decay of a weight average (ema.py) that is validated and ends in the model


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    start_val_acc: float | None = None  # validation accuracy of the starting weights (keep_start)
    resumed_from: int = 0  # epochs done before this process started
    images_per_second: float | None = None  # training images over the wall time of the epochs run here
    epoch_seconds: list[float] = field(default_factory=list)  # wall time of each epoch run here
    stopped_early: bool = False  # `patience` epochs passed without a better validation accuracy
    flush_denormal: bool | None = None  # flush-to-zero was on in every CPU thread (numerics.py); None: no epoch ran


def epochs_since_best(history: list[dict[str, Any]]) -> int:
    """Epochs run after the first one with the best validation accuracy (0 when the last one is it)."""
    best = max(range(len(history)), key=lambda i: history[i]["val_acc"])
    return len(history) - 1 - best


def resolve_device(name: str) -> torch.device:
    """cpu | cuda | cuda:N | auto -> torch.device; cuda without a GPU (or without GPU N) is a user error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but torch sees no CUDA device (torch {torch.__version__})")
    if name.startswith("cuda:"):
        index, count = int(name.split(":")[1]), torch.cuda.device_count()
        if index >= count:
            raise UserError(f"train.device={name} but torch sees {count} CUDA device(s) (0..{count - 1})")
        if distributed.launched_world_size() > 1:
            raise UserError(
                f"train.device={name} names one GPU, but torchrun started {distributed.launched_world_size()} "
                "processes (one GPU each); use train.device=cuda or auto"
            )
    if name == "cuda" and distributed.active():
        return torch.device("cuda", distributed.local_rank())  # one GPU per process
    return torch.device(name)


def _optimizer(model: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    gate_params = [p for g in gates(model) for p in g.parameters()]
    gate_ids = {id(p) for p in gate_params}
    weights = [p for p in model.parameters() if id(p) not in gate_ids]
    groups: list[dict[str, Any]] = [{"params": weights, "lr": spec.lr, "weight_decay": spec.weight_decay}]
    if gate_params:
        groups.append({"params": gate_params, "lr": spec.gate_lr or spec.lr, "weight_decay": spec.gate_weight_decay})
    return torch.optim.Adam(groups)


@dataclass
class _Loop:
    """What a training run carries from one epoch to the next (and into its checkpoint)."""

    opt: torch.optim.Optimizer
    sched: Any
    gen: torch.Generator  # the shuffling generator: the same on every rank
    start: int = 0  # epochs done before this process started
    best: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    epoch: int = 0
    batch_i: int = 0
    net: nn.Module | None = None  # what the steps call: the model, or the model in DDP under torchrun
    net_finetune: bool | None = None
    autocast: Any = contextlib.nullcontext  # train.amp's context for forward + loss
    scaler: Any = None  # fp16's GradScaler
    channels_last: bool = False  # a conv net on CUDA: NHWC inputs and weights
    epoch_started: float = 0.0
    ema: WeightEMA | None = None  # spec.ema's weight average


def train(model: nn.Module, spec: TrainSpec, data: Any, run: RunDir | None, progress: Any = None) -> TrainResult:
    """Train `model` in place; resumes from `<stage>.ckpt` in `run` when its key matches.

    `data` has x_train/y_train/x_val/y_val numpy arrays. With `select_best`, the model ends holding
    the weights of the epoch with the best validation accuracy; otherwise those of the last epoch.
    `run=None` trains without checkpoints (a peer method's training: its stage reruns whole).
    """
    # long function: set-up, the epoch loop and the best-epoch choice share one loop state; the steps, the
    # epoch's end and the resume are _train_epoch, _end_epoch and _resume
    device = spec.device
    model.to(device)
    opt = _optimizer(model, spec)
    if spec.patience is not None and not spec.select_best:
        raise ValueError("patience needs select_best: early stopping keeps the best validation epoch")
    sched: Any = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=max(1, spec.patience // 3))
        if spec.patience is not None
        else torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.5)
        if spec.schedule == "step"
        else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.epochs)
    )
    loop = _Loop(opt, sched, torch.Generator().manual_seed(spec.seed))  # one global permutation on every rank
    torch.manual_seed(spec.seed + distributed.rank())  # gate noise: each rank draws its own
    world = distributed.world_size()
    result = TrainResult()
    loop.autocast, loop.scaler = amp_context(spec.amp, device)
    loop.channels_last = device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())
    if loop.channels_last:  # NHWC: what cuDNN's tensor-core convolutions run on without transposes
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    loop.ema = WeightEMA(model, spec.ema) if spec.ema is not None else None
    if run is not None:
        _resume(model, spec, run, loop, result, progress)
    if loop.start == 0 and spec.select_best and spec.keep_start:  # epoch 0: kept unless an epoch beats it on validation
        loop.best = result.start_val_acc = accuracy(model, data.x_val, data.y_val, device)
        loop.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    x_train, y_train = on_device(data.x_train, data.y_train, device)
    n = len(x_train)
    steps = math.ceil(n / spec.batch_size)
    smallest_batch = n - (steps - 1) * spec.batch_size
    if world > 1 and smallest_batch < world:
        raise UserError(
            f"{spec.stage}: a batch of {smallest_batch} image(s) cannot be split over {world} processes; "
            "change train.batch_size or data.train_limit so every batch has an image per process"
        )
    task = progress.add_task(spec.stage, total=spec.epochs * steps, completed=loop.start * steps) if progress else None
    loop.epoch, loop.net = loop.start, model
    t0 = time.perf_counter()
    try:
        result.stopped_early = bool(  # a resumed run that had already stopped (killed before its stage committed)
            spec.patience is not None and result.history and epochs_since_best(result.history) >= spec.patience
        )
        with flush_denormal() as flushed:  # no subnormal floats: the slow path of x86 cores (numerics.py)
            for epoch in range(loop.start, loop.start if result.stopped_early else spec.epochs):
                loop.epoch, result.flush_denormal = epoch, flushed
                sums = _train_epoch(model, spec, loop, x_train, y_train, steps, run, progress, task)
                _end_epoch(
                    model, spec, loop, data, {k: v / steps for k, v in sums.items()}, result, run, progress, task
                )
                if spec.patience is not None and epochs_since_best(result.history) >= spec.patience:
                    result.stopped_early = True
                    break
    except KeyboardInterrupt:
        where = (
            f"checkpointed in {run.file(f'{spec.stage}.ckpt')}; rerun the same command to resume" if run else "not kept"
        )
        raise UserError(
            f"{spec.stage} interrupted at epoch {loop.epoch + 1}, batch {loop.batch_i + 1}; "
            f"{loop.epoch} complete epoch(s) are {where}"
        ) from None
    if loop.channels_last:
        model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    if len(result.history) > loop.start:
        result.images_per_second = (len(result.history) - loop.start) * n / (time.perf_counter() - t0)
    if loop.ema is not None:  # the average is the net that was validated: it is the one kept
        model.load_state_dict(loop.ema.state)
    if spec.select_best and loop.best_state is not None:
        model.load_state_dict(loop.best_state)
        result.best_epoch = max(range(len(result.history)), key=lambda i: result.history[i]["val_acc"]) + 1
        start = result.start_val_acc
        if start is not None and start >= result.history[result.best_epoch - 1]["val_acc"]:
            result.best_epoch = 0  # no epoch beat the starting weights
    else:
        result.best_epoch = len(result.history)
    return result


def _resume(model: nn.Module, spec: TrainSpec, run: RunDir, loop: _Loop, result: TrainResult, progress: Any) -> None:
    """Model, optimizer, scheduler, RNGs and history from `<stage>.ckpt` when it was written under this key; says so."""
    ckpt_name = f"{spec.stage}.ckpt"
    ckpt = load_checkpoint(run, ckpt_name)
    if ckpt is not None and ckpt["key"] == spec.key and ckpt["epoch"] <= spec.epochs:
        model.load_state_dict(ckpt["model"])
        loop.opt.load_state_dict(ckpt["optimizer"])
        loop.sched.load_state_dict(ckpt["scheduler"])
        if loop.scaler is not None and "scaler" in ckpt:
            loop.scaler.load_state_dict(ckpt["scaler"])
        restore_rng(ckpt, loop.gen, run.file(ckpt_name), spec.epochs - ckpt["epoch"])
        loop.start, loop.best, loop.best_state = ckpt["epoch"], ckpt["best"], ckpt["best_model"]
        result.history = list(ckpt["history"])
        result.resumed_from = loop.start
        result.start_val_acc = ckpt.get("start_val_acc")
        if spec.kl_multiplier is not None and result.history:
            spec.kl_multiplier.resume(result.history[-1])
        if loop.ema is not None:
            loop.ema.state = ckpt["ema"]
        if progress is not None and loop.start < spec.epochs:  # a resume must not look like a restart
            saved = datetime.datetime.fromtimestamp(run.file(ckpt_name).stat().st_mtime).strftime("%H:%M:%S")
            progress.console.print(
                f"{spec.stage}: resuming at epoch {loop.start + 1}/{spec.epochs} from "
                f"{run.file(ckpt_name)} (saved {saved})"
            )


def _train_epoch(
    model: nn.Module,
    spec: TrainSpec,
    loop: _Loop,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    steps: int,
    run: RunDir | None,
    progress: Any,
    task: Any,
) -> dict[str, float]:
    """One pass over the shuffled training set; returns the summed loss, CE and KL of its steps."""
    # long function: one step's batch placement, autocast forward + loss, NaN check and (scaled) backward read as one
    world, epoch, device = distributed.world_size(), loop.epoch, spec.device
    model.train()
    finetune = epoch >= spec.epochs - spec.finetune_epochs
    if spec.finetune_epochs:  # (without fine-tuning epochs the gates stay as they are: slimming freezes logD)
        for gate in gates(model):  # fine-tuning: the architecture is fixed, weights adapt to the deterministic gates
            gate.train(not finetune)
            gate.requires_grad_(not finetune)
    if world > 1 and loop.net_finetune != finetune:
        loop.net = model  # drops the old DDP and its gradient hooks first
        loop.net, loop.net_finetune = (
            distributed.replicated(model, device),
            finetune,
        )  # DDP syncs what needs gradients now
    net = loop.net
    assert net is not None
    perm = torch.randperm(len(x_train), generator=loop.gen)
    loop.epoch_started = time.perf_counter()
    sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0}
    for batch_i in range(steps):
        loop.batch_i = batch_i
        idx = perm[batch_i * spec.batch_size : (batch_i + 1) * spec.batch_size]
        ce_weight = 1.0
        if world > 1:
            idx, ce_weight = distributed.shard_of(idx)
        if x_train.device != idx.device:
            idx = idx.to(x_train.device)
        xb, yb = x_train[idx].to(device), y_train[idx].to(device)
        if loop.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with loop.autocast():
            logits = net(xb)
            if spec.kl_factor is not None and not finetune:
                factor = spec.kl_factor if spec.kl_multiplier is None else spec.kl_multiplier.factor
                loss, ce, kl = vib_loss(logits, yb, model, factor, spec.kl_weighting)
            else:
                loss = ce = nn.functional.cross_entropy(logits, yb)
                kl = total_kl(model, spec.kl_weighting).detach() if spec.kl_factor is not None else torch.zeros(())
        if spec.l1:  # network slimming's sparsity term on the per-unit scales
            loss = loss + spec.l1 * torch.stack([g.mu.abs().sum() for g in gates(model)]).sum()
        if ce_weight != 1.0:
            loss = loss + (ce_weight - 1.0) * ce  # this rank's CE weighted as `shard_of` says; KL once
        values = torch.stack([loss.detach(), ce.detach() * ce_weight, kl.detach().to(loss.device)])
        if world > 1:
            values = distributed.all_reduce_sum(values) / world  # the global batch's, so all ranks stop together
        loss_v, ce_v, kl_v = values.tolist()
        if not math.isfinite(loss_v):
            kept = (
                f"the last good checkpoint ({epoch} epochs) is kept in {run.file(f'{spec.stage}.ckpt')}"
                if run
                else "nothing is kept"
            )
            raise UserError(
                f"{spec.stage}: loss is {loss_v} at epoch {epoch + 1}, batch {batch_i + 1}; stopped, {kept} "
                "(try a lower learning rate or kl_factor)"
            )
        loop.opt.zero_grad(set_to_none=True)
        if loop.scaler is None:
            loss.backward()
            loop.opt.step()
        else:  # fp16: scaled loss, steps with inf/nan gradients skipped, scale adapted
            loop.scaler.scale(loss).backward()
            loop.scaler.step(loop.opt)
            loop.scaler.update()
        if loop.ema is not None:
            loop.ema.update(model)
        if spec.kl_multiplier is not None and not finetune:
            spec.kl_multiplier.step()  # dual ascent on the cost of the net as it stands after this step
        for name, value in zip(sums, (loss_v, ce_v, kl_v)):
            sums[name] += value
        if progress is not None:
            progress.advance(task)
    if not isinstance(loop.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        loop.sched.step()  # the plateau schedule steps on the validation accuracy, in _end_epoch
    return sums


def _end_epoch(
    model: nn.Module,
    spec: TrainSpec,
    loop: _Loop,
    data: Any,
    means: dict[str, float],
    result: TrainResult,
    run: RunDir | None,
    progress: Any,
    task: Any,
) -> None:
    """Validate, keep the best weights, checkpoint (rank 0 writes), and log the epoch's line."""
    epoch = loop.epoch
    # what a thread without flush-to-zero left (numerics.py): the next epoch, the checkpoint and the model start clean
    flush_subnormals_(training_state(model, loop.opt, loop.ema.state.values() if loop.ema else ()))
    with maybe_applied(loop.ema, model):  # with train.vib.ema the average is what is validated and kept
        if distributed.world_size() > 1:
            val_acc = _sharded_accuracy(model, data.x_val, data.y_val, spec.device)
            distributed.same_on_all_ranks("gate masks", mask_digest(model))
        else:
            val_acc = accuracy(model, data.x_val, data.y_val, spec.device)
        record = {"epoch": epoch + 1, "val_acc": val_acc, **means, "units_alive": units_alive(model)}
        if spec.epoch_extra is not None:
            record.update(spec.epoch_extra(model))
        if spec.select_best and val_acc > loop.best:
            loop.best = val_acc
            loop.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if isinstance(loop.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        loop.sched.step(val_acc)
    result.history.append(record)
    if run is not None:
        state = checkpoint_state(
            model, loop.opt, loop.sched, loop.gen, epoch + 1, loop.best, loop.best_state, result.history, spec.key
        )
        if loop.scaler is not None:
            state["scaler"] = loop.scaler.state_dict()
        state["start_val_acc"] = result.start_val_acc
        if loop.ema is not None:
            state["ema"] = loop.ema.state
        distributed.on_main(lambda: save_checkpoint(run, spec.stage, f"{spec.stage}.ckpt", state))
    result.epoch_seconds.append(time.perf_counter() - loop.epoch_started)
    if progress is not None:
        alive = "-".join(map(str, record["units_alive"]))
        line = f"{spec.stage} epoch {epoch + 1}/{spec.epochs} val_acc {val_acc:.4f} ce {record['ce']:.4f}"
        line += f" kl {record['kl']:.1f} alive {alive}" if alive else ""
        line += f" ({result.epoch_seconds[-1]:.1f} s)"
        progress.update(task, description=f"{spec.stage} ep {epoch + 1}")
        progress.console.print(line)
