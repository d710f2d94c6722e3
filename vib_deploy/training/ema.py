"""`train.vib.ema`: an exponential moving average of the weights, the net that is validated, kept and pruned.

After every optimizer step, ema = decay * ema + (1 - decay) * weights, over every floating-point parameter and
buffer (gates' mu and log D included, so the gates that decide the architecture are averaged too; integer buffers
are copied). The L0 reference code (Louizos et al. 2018) evaluates such an average of its weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            average = self.state[k]
            if average.is_floating_point():
                average.mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                average.copy_(v)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """`model` holds the averaged weights inside the block and its own again after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(own)


def maybe_applied(ema: WeightEMA | None, model: nn.Module) -> Any:
    return ema.applied(model) if ema is not None else contextlib.nullcontext()
