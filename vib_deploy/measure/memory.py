"""How much memory this machine has free, and the refusal of an input batch that cannot fit in it."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

from vib_deploy.errors import UserError

FLOAT32_BYTES = 4


def available_bytes() -> int:
    """Memory a new allocation can have now: MemAvailable from /proc/meminfo, else the free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def refuse_oversized_input(
    batches: Iterable[int], sample_shape: Sequence[int], what: str, copies: int = 1, available: int | None = None
) -> None:
    """UserError before allocation when `copies` float32 inputs of the largest batch exceed the free memory.

    `what` names the setting in the message (e.g. "--batch" or "--batch-sizes x --concurrency").
    """
    batch = max(batches, default=0)
    needed = batch * copies * math.prod(sample_shape) * FLOAT32_BYTES
    available = available_bytes() if available is None else available
    if needed > available:
        shape = "x".join(map(str, sample_shape))
        times = f"{copies:,} x " if copies > 1 else ""
        raise UserError(
            f"{what}: the input alone needs {needed:,} bytes ({needed / 2**30:.1f} GiB: {times}{batch:,} x {shape} "
            f"float32), more than the {available:,} bytes ({available / 2**30:.1f} GiB) available; use a smaller batch"
        )
