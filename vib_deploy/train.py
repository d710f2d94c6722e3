"""One training loop for the dense net and the VIB net, with per-epoch checkpoints and exact resume.

A checkpoint (model, optimizer, scheduler, RNG states, epoch, best metric, history) is written
atomically at the end of every epoch. A run killed mid-epoch resumes from the last complete epoch
and, on CPU, ends bitwise equal to an uninterrupted run (same seed, same thread count): the
shuffling generator and the global RNG that draws gate noise are restored with everything else.

Under torchrun (see `vib_deploy.distributed`) the model is wrapped in DistributedDataParallel. Data are
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

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vib_deploy import distributed
from vib_deploy.errors import UserError
from vib_deploy.nets import to_bytes
from vib_deploy.runs import RunDir
from vib_deploy.vib import VIBGate, gates, total_kl, vib_loss


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
    gate_weight_decay: float = 0.0  # VIB only: the official code decays the gates like the weights
    schedule: str = "cosine"  # cosine (to 0 over `epochs`) | step (lr x 0.5 every 30 epochs, the official VIBNet code)
    gate_lr: float | None = None  # VIB only: Adam group of the gates
    kl_factor: float | None = None  # VIB only
    select_best: bool = False  # keep the epoch with the best validation accuracy (dense)
    finetune_epochs: int = 0  # VIB only: last N epochs with gates frozen at their inference value z = mu * mask
    kl_weighting: Any = None  # VIB only: a klweight.FlopsWeighting of the model (None: the paper's weights)
    keep_start: bool = False  # with select_best: the weights it starts from are a candidate too (epoch 0)


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    start_val_acc: float | None = None  # validation accuracy of the starting weights (keep_start)
    resumed_from: int = 0  # epochs done before this process started
    images_per_second: float | None = None  # training images over the wall time of the epochs run here


def resolve_device(name: str) -> torch.device:
    """cpu | cuda | auto -> torch.device; cuda without a GPU is a user error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but torch sees no CUDA device (torch {torch.__version__})")
    if name == "cuda" and distributed.active():
        return torch.device("cuda", distributed.local_rank())  # one GPU per process
    return torch.device(name)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray | torch.Tensor, device: torch.device | None = None, batch: int = 2000) -> torch.Tensor:
    """Logits of `model` in eval mode for all of `x` (fp32, on CPU)."""
    model.eval()
    device = device or next(model.parameters()).device
    x = torch.as_tensor(x)
    return torch.cat([model(x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device | None = None) -> float:
    """Fraction of correct argmax predictions."""
    return float((predict(model, x, device).argmax(1).numpy() == y).mean())


def units_alive(model: nn.Module) -> list[int]:
    """Units kept per gate layer at inference."""
    return [int(g.keep_mask().sum()) for g in gates(model)]


def _optimizer(model: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    gate_params = [p for g in gates(model) for p in g.parameters()]
    gate_ids = {id(p) for p in gate_params}
    weights = [p for p in model.parameters() if id(p) not in gate_ids]
    groups: list[dict[str, Any]] = [{"params": weights, "lr": spec.lr, "weight_decay": spec.weight_decay}]
    if gate_params:
        groups.append({"params": gate_params, "lr": spec.gate_lr or spec.lr, "weight_decay": spec.gate_weight_decay})
    return torch.optim.Adam(groups)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _checkpoint_state(model, opt, sched, gen, epoch, best, best_state, history, key) -> dict[str, Any]:
    rng = _rng_state()
    state = {
        "key": key, "epoch": epoch, "best": best, "history": history,
        "model": model.state_dict(), "best_model": best_state,
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "rng_torch": rng["torch"], "rng_shuffle": gen.get_state(), "rng_cuda": rng["cuda"],
    }
    if distributed.active():  # a collective: every rank calls this, rank 0 writes the result
        state["world_size"] = distributed.world_size()
        state["rng_ranks"] = distributed.all_gather(rng)
    return state


def _restore_rng(ckpt: dict[str, Any], gen: torch.Generator, path: Path, epochs_left: int) -> None:
    """The shuffling generator and this rank's global RNG (gate noise) as they were at the checkpoint."""
    saved_world, world = ckpt.get("world_size", 1), distributed.world_size()
    if saved_world != world and epochs_left > 0:
        raise UserError(f"{path} was written by a {saved_world}-process run and has {epochs_left} epoch(s) left, but this "
                        f"run has {world} process(es); resume with {saved_world} (each rank's gate-noise RNG is in it) "
                        "or delete the checkpoint to start the stage over")
    gen.set_state(ckpt["rng_shuffle"])
    own = ckpt["rng_ranks"][distributed.rank()] if saved_world > 1 else {"torch": ckpt["rng_torch"], "cuda": ckpt["rng_cuda"]}
    torch.set_rng_state(own["torch"])
    if own["cuda"]:
        torch.cuda.set_rng_state_all(own["cuda"])


def _replicated(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel: backward averages every gradient (gates' too) over the ranks."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _shard_of(idx: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This rank's slice of a global batch, and the weight of its mean CE that makes DDP's average exact.

    Slices differ by at most one image (only in a last, partial batch); weighting each rank's mean by
    world * slice / batch makes the average over ranks the global batch's mean. Equal slices: weight 1.
    """
    world = distributed.world_size()
    shard = torch.tensor_split(idx, world)[distributed.rank()]
    return shard, world * len(shard) / len(idx)


def _sharded_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device) -> float:
    """`accuracy` with the images split over the ranks and the correct counts summed: the same on every rank."""
    rank, world = distributed.rank(), distributed.world_size()
    lo, hi = len(y) * rank // world, len(y) * (rank + 1) // world
    correct = int((predict(model, x[lo:hi], device).argmax(1).numpy() == y[lo:hi]).sum()) if hi > lo else 0
    return int(distributed.all_reduce_sum(torch.tensor(correct))) / len(y)


def _save_checkpoint(run: RunDir, stage: str, name: str, state: dict[str, Any]) -> None:
    data = to_bytes(state)  # in memory first: a disk-full error can say how much was needed
    run.write_artifact(stage, name, lambda tmp: tmp.write_bytes(data), len(data))


def _load_checkpoint(run: RunDir, name: str) -> dict[str, Any] | None:
    path = run.file(name)
    if not path.exists():
        return None
    run.verified(name)  # a truncated or altered checkpoint is an error, never a silent restart
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for garbage files
        raise UserError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    if not isinstance(ckpt, dict) or "key" not in ckpt or "epoch" not in ckpt:
        raise UserError(f"{path}: not a vib-deploy training checkpoint")
    return ckpt


def train(model: nn.Module, spec: TrainSpec, data: Any, run: RunDir, progress: Any = None) -> TrainResult:
    """Train `model` in place; resumes from `<stage>.ckpt` in `run` when its key matches.

    `data` has x_train/y_train/x_val/y_val numpy arrays. With `select_best`, the model ends holding
    the weights of the epoch with the best validation accuracy; otherwise those of the last epoch.
    """
    ckpt_name = f"{spec.stage}.ckpt"
    device = spec.device
    model.to(device)
    opt = _optimizer(model, spec)
    sched: torch.optim.lr_scheduler.LRScheduler = (
        torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.5) if spec.schedule == "step"
        else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.epochs))
    gen = torch.Generator().manual_seed(spec.seed)  # the same on every rank: one global permutation
    torch.manual_seed(spec.seed + distributed.rank())  # gate noise: each rank draws its own
    world = distributed.world_size()
    result = TrainResult()
    best, best_state, start = -1.0, None, 0

    ckpt = _load_checkpoint(run, ckpt_name)
    if ckpt is not None and ckpt["key"] == spec.key and ckpt["epoch"] <= spec.epochs:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        _restore_rng(ckpt, gen, run.file(ckpt_name), spec.epochs - ckpt["epoch"])
        start, best, best_state = ckpt["epoch"], ckpt["best"], ckpt["best_model"]
        result.history = list(ckpt["history"])
        result.resumed_from = start
        result.start_val_acc = ckpt.get("start_val_acc")
    elif spec.select_best and spec.keep_start:  # epoch 0: kept unless an epoch beats it on validation
        best = result.start_val_acc = accuracy(model, data.x_val, data.y_val, device)
        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    x_train, y_train = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    n = len(x_train)
    steps = math.ceil(n / spec.batch_size)
    smallest_batch = n - (steps - 1) * spec.batch_size
    if world > 1 and smallest_batch < world:
        raise UserError(f"{spec.stage}: a batch of {smallest_batch} image(s) cannot be split over {world} processes; "
                        "change train.batch_size or data.train_limit so every batch has an image per process")
    task = progress.add_task(spec.stage, total=spec.epochs * steps, completed=start * steps) if progress else None
    epoch = start
    batch_i = 0
    net, net_finetune = model, None  # what the steps call: `model`, or `model` in DDP under torchrun
    t0 = time.perf_counter()
    try:
        for epoch in range(start, spec.epochs):
            model.train()
            finetune = epoch >= spec.epochs - spec.finetune_epochs
            for gate in gates(model):
                # fine-tuning: the architecture is fixed, weights adapt to the deterministic gates
                gate.train(not finetune)
                gate.requires_grad_(not finetune)
            if world > 1 and net_finetune != finetune:
                net = model  # drops the old DDP and its gradient hooks first
                net, net_finetune = _replicated(model, device), finetune  # DDP syncs what needs gradients now
            perm = torch.randperm(n, generator=gen)
            sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0}
            for batch_i in range(steps):
                idx = perm[batch_i * spec.batch_size : (batch_i + 1) * spec.batch_size]
                ce_weight = 1.0
                if world > 1:
                    idx, ce_weight = _shard_of(idx)
                xb, yb = x_train[idx].to(device), y_train[idx].to(device)
                logits = net(xb)
                if spec.kl_factor is not None and not finetune:
                    loss, ce, kl = vib_loss(logits, yb, model, spec.kl_factor, spec.kl_weighting)
                else:
                    loss = ce = nn.functional.cross_entropy(logits, yb)
                    kl = total_kl(model, spec.kl_weighting).detach() if spec.kl_factor is not None else torch.zeros(())
                if ce_weight != 1.0:
                    loss = loss + (ce_weight - 1.0) * ce  # this rank's CE weighted as `_shard_of` says; KL once
                values = torch.stack([loss.detach(), ce.detach() * ce_weight, kl.detach().to(loss.device)])
                if world > 1:
                    values = distributed.all_reduce_sum(values) / world  # the global batch's, so all ranks stop together
                loss_v, ce_v, kl_v = values.tolist()
                if not math.isfinite(loss_v):
                    raise UserError(
                        f"{spec.stage}: loss is {loss_v} at epoch {epoch + 1}, batch {batch_i + 1}; "
                        f"stopped, the last good checkpoint ({epoch} epochs) is kept in {run.file(ckpt_name)} "
                        "(try a lower learning rate or kl_factor)"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums["loss"] += loss_v
                sums["ce"] += ce_v
                sums["kl"] += kl_v
                if progress is not None:
                    progress.advance(task)
            sched.step()
            if world > 1:
                val_acc = _sharded_accuracy(model, data.x_val, data.y_val, device)
                distributed.same_on_all_ranks("gate masks", mask_digest(model))
            else:
                val_acc = accuracy(model, data.x_val, data.y_val, device)
            record = {"epoch": epoch + 1, "val_acc": val_acc, **{k: v / steps for k, v in sums.items()},
                      "units_alive": units_alive(model)}
            result.history.append(record)
            if spec.select_best and val_acc > best:
                best = val_acc
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            state = _checkpoint_state(model, opt, sched, gen, epoch + 1, best, best_state, result.history, spec.key)
            state["start_val_acc"] = result.start_val_acc
            distributed.on_main(lambda: _save_checkpoint(run, spec.stage, ckpt_name, state))
            if progress is not None:
                alive = "-".join(map(str, record["units_alive"]))
                line = f"{spec.stage} epoch {epoch + 1}/{spec.epochs} val_acc {val_acc:.4f} ce {record['ce']:.4f}"
                line += f" kl {record['kl']:.1f} alive {alive}" if alive else ""
                progress.update(task, description=f"{spec.stage} ep {epoch + 1}")
                progress.console.print(line)
    except KeyboardInterrupt:
        raise UserError(
            f"{spec.stage} interrupted at epoch {epoch + 1}, batch {batch_i + 1}; {epoch} complete epoch(s) are "
            f"checkpointed in {run.file(ckpt_name)}; rerun the same command to resume"
        ) from None
    if spec.epochs > start:
        result.images_per_second = (spec.epochs - start) * n / (time.perf_counter() - t0)
    if spec.select_best and best_state is not None:
        model.load_state_dict(best_state)
        result.best_epoch = max(range(len(result.history)), key=lambda i: result.history[i]["val_acc"]) + 1
        if result.start_val_acc is not None and result.start_val_acc >= result.history[result.best_epoch - 1]["val_acc"]:
            result.best_epoch = 0  # no epoch beat the starting weights
    else:
        result.best_epoch = len(result.history)
    return result


def mask_digest(model: nn.Module) -> str:
    """A short hash of every gate's keep mask: equal on all ranks unless the replicas diverged."""
    masks = [g.keep_mask().cpu().numpy().tobytes() for g in gates(model)]
    return hashlib.sha256(b"".join(masks)).hexdigest()[:16]


def gate_summary(model: nn.Module) -> list[dict[str, Any]]:
    """Per gate layer: units, kept, and the sign of kept mu (what pruning must handle)."""
    out = []
    for g in gates(model):
        assert isinstance(g, VIBGate)
        mask = g.keep_mask()
        out.append({"units": g.units, "kept": int(mask.sum()), "negative_mu_kept": int((g.mu[mask] < 0).sum())})
    return out
