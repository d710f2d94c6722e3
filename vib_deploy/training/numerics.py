"""No subnormal floats in training on the CPU: flush-to-zero on every thread for the length of a training.

An x86 core takes a slow microcode path for an operation whose operand or result is subnormal (0 < |x| < 1.18e-38
in float32): on an Intel Xeon a VIB epoch of the default LeNet-300 goes from 2.8 s to 9 s once the gates close.
They come from Adam's steps: a weight no data gradient reaches any more (the columns of pruned input pixels), or a
closed gate's mu that the KL pulls to 0, shrinks geometrically under weight decay and Adam's normalisation, through
the subnormal range, and stays there; Adam's exp_avg of a parameter whose gradient stopped decays through it by
beta1 a step (scripts/subnormal_census.py counts them). No one line makes them: changing the optimizer would change
what is trained, so the CPU is told to write 0 instead (FTZ) and to read a subnormal as 0 (DAZ).

The flags are per thread. `torch.set_flush_denormal` sets the calling thread's; the OpenMP threads that run torch's
intra-op work keep theirs, so `flush_denormal` also sets them from inside one OpenMP parallel region (`GOMP_parallel`
of the runtime torch loaded, which libgomp, LLVM's libomp and Intel's libiomp5 all export) and then checks: a
multiply of subnormals split over every thread must give 0. Where that cannot be done (another threading runtime,
no /proc, a CPU without the flags) it says so, and `flush_subnormals_` at each epoch's end still keeps them out of
the weights, gradients and optimizer state that the next epoch starts from. Exactness checks are unaffected: they
run after training with the flags off, and a subnormal is 29 orders of magnitude below their float64 tolerance.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

_OPENMP = re.compile(r"/lib(gomp|omp|iomp5)[^/]*\.so[^/]*$")  # the OpenMP runtimes torch builds link
_REGION = ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # void fn(void *data): the body of an OpenMP parallel region


def _openmp_parallel() -> Any:
    """`GOMP_parallel` of the OpenMP runtime loaded in this process (from /proc/self/maps), or None."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for path in sorted({line.split()[-1] for line in maps.splitlines() if _OPENMP.search(line)}):
        with contextlib.suppress(OSError, AttributeError):
            return ctypes.CDLL(path).GOMP_parallel
    return None


def _set_on_every_thread(on: bool) -> None:
    """torch.set_flush_denormal(on) on this thread and on each of torch's intra-op OpenMP threads."""
    torch.set_flush_denormal(on)
    threads = torch.get_num_threads()
    parallel = _openmp_parallel() if threads > 1 else None
    if parallel is not None:

        def body(_: Any) -> None:
            torch.set_flush_denormal(on)

        parallel(_REGION(body), None, threads, 0)


def flushes_everywhere() -> bool:
    """Whether a float32 multiply split over all of torch's threads turns subnormal operands into 0."""
    n = max(1, torch.get_num_threads()) * (1 << 16)  # above the intra-op grain: every thread takes a share
    smallest = torch.ones(n, dtype=torch.int32).view(torch.float32)  # bits 0x00000001: 1.4e-45, subnormal
    return int(torch.count_nonzero(smallest * 1.0)) == 0


@contextlib.contextmanager
def flush_denormal() -> Iterator[bool]:
    """Flush-to-zero and denormals-are-zero on every torch CPU thread inside the block, off again after it
    (the process default). Yields whether a check found them on everywhere (what the training record says)."""
    _set_on_every_thread(True)
    try:
        yield flushes_everywhere()
    finally:
        _set_on_every_thread(False)


def subnormal_count(t: torch.Tensor | None) -> int:
    """How many entries of a floating-point tensor are subnormal (0 < |x| < the dtype's smallest normal)."""
    if t is None or not t.is_floating_point():
        return 0
    a = t.detach().abs()
    return int(((a > 0) & (a < torch.finfo(t.dtype).tiny)).sum())


def training_state(model: torch.nn.Module, opt: torch.optim.Optimizer, extra: Iterable[Any] = ()) -> list[torch.Tensor]:
    """Every tensor a training step carries into the next: parameters, their gradients, the optimizer's state."""
    tensors = [t for p in model.parameters() for t in (p, p.grad) if t is not None]
    tensors += [v for state in opt.state.values() for v in state.values() if torch.is_tensor(v)]
    return tensors + [t for t in extra if torch.is_tensor(t)]


@torch.no_grad()
def flush_subnormals_(tensors: Iterable[torch.Tensor]) -> None:
    """Set the subnormal entries of floating-point `tensors` to 0, in place."""
    for t in tensors:
        if t.is_floating_point():
            t.masked_fill_(t.abs() < torch.finfo(t.dtype).tiny, 0.0)
