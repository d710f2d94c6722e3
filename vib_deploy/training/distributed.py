"""Runs under torchrun: the process group, which rank is the main one, and the few collectives we need.

`torchrun --nproc-per-node N -m vib_deploy ...` starts N copies of the command with WORLD_SIZE, RANK and
LOCAL_RANK set. `process_group()` joins them (gloo for CPU tensors, NCCL for CUDA tensors when a GPU is
there); outside torchrun (WORLD_SIZE unset or 1) it does nothing, and every helper here falls back to
the single-process answer without touching torch.distributed, so a plain run is exactly what it was.

Rank 0 is the main rank: it alone holds the run lock and writes artifacts. `on_main(fn)` runs `fn` on
rank 0 and hands its result, or its error, to every rank, which is how the other ranks wait for work
that needs one process (cache decisions, prune, export, bench, report).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

from vib_deploy.errors import UserError

T = TypeVar("T")

# The other ranks wait in a collective while rank 0 alone runs prune, export, bench and report;
# the 30-minute default would stop a long benchmark. A rank that dies is caught by torchrun anyway.
WAIT_TIMEOUT = timedelta(hours=4)


def launched_world_size() -> int:
    """Processes torchrun started for this job (WORLD_SIZE), 1 when not launched by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    """True inside a process group of more than one process."""
    dist = sys.modules.get("torch.distributed")  # never imported: no process group exists, and torch stays unloaded
    return dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the process group (0 outside one)."""
    if active():
        import torch.distributed as dist

        return dist.get_rank()
    return 0


def world_size() -> int:
    """Processes in the process group (1 outside one)."""
    if active():
        import torch.distributed as dist

        return dist.get_world_size()
    return 1


def local_rank() -> int:
    """This process's index on its node (torchrun's LOCAL_RANK): which GPU it drives."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on the process that writes, logs and prints: rank 0 of the process group, or, before the
    group is joined or after it is gone, the process torchrun started as RANK 0 (any plain process)."""
    if active():
        return rank() == 0
    return launched_world_size() <= 1 or os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Join torchrun's process group for the duration; a no-op without torchrun or when already joined.

    The outermost caller owns the group and destroys it on exit. With CUDA, each process drives GPU
    LOCAL_RANK; the backend is "cpu:gloo,cuda:nccl" so CPU tensors (objects, metrics) go through gloo.
    """
    if launched_world_size() <= 1:
        yield
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    if torch.cuda.is_available() and dist.is_nccl_available():
        torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=WAIT_TIMEOUT)
    try:
        yield
        barrier()  # leave together: no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (nothing outside a process group)."""
    if active():
        import torch.distributed as dist

        dist.barrier()


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only; every rank returns its result, or raises when it failed.

    The other ranks block until rank 0 is done. Rank 0 re-raises its own exception; the others raise
    a UserError quoting it, so no rank is left waiting in a collective for a rank that stopped.
    """
    if not active():
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except BaseException as e:
            box[0] = ("failed", f"{type(e).__name__}: {e}" if not isinstance(e, UserError) else str(e))
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status != "ok":
        raise UserError(f"stopped because rank 0 failed: {value}")
    return value


def all_gather(obj: T) -> list[T]:
    """Every rank's `obj` (picklable), in rank order; [obj] outside a process group."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: Any) -> Any:
    """The sum over ranks of `tensor` (a new tensor; on the tensor's own device's backend)."""
    if not active():
        return tensor
    import torch.distributed as dist

    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def same_on_all_ranks(name: str, value: Any) -> list[Any]:
    """Gather `value` from every rank and fail loudly when they differ (e.g. gate masks after DDP)."""
    values = all_gather(value)
    if any(v != values[0] for v in values[1:]):
        raise UserError(f"ranks disagree on {name}: {values}; the replicas diverged (a bug, please report it)")
    return values


def replicated(model: Any, device: Any) -> Any:
    """`model` in DistributedDataParallel: backward averages every gradient (gates' too) over the ranks."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def shard_of(idx: Any) -> tuple[Any, float]:
    """This rank's slice of a global batch, and the weight of its mean CE that makes DDP's average exact.

    Slices differ by at most one image (only in a last, partial batch); weighting each rank's mean by
    world * slice / batch makes the average over ranks the global batch's mean. Equal slices: weight 1.
    """
    world = world_size()
    shard = idx.tensor_split(world)[rank()]
    return shard, world * len(shard) / len(idx)
