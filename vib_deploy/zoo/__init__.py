"""The model zoo: gated Sequentials with VIB gates where the paper puts them.

Placement: Conv(->BN)->ReLU->gate(->MaxPool); Linear->ReLU->gate; no gate on the output layer.
The dense model is the same Sequential without its gates (`strip_gates`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.model.vib import VIBGate
from vib_deploy.zoo.lenet import lenet5, lenet300

ZOO: dict[str, Callable[[], nn.Sequential]] = {"lenet300": lenet300, "lenet5": lenet5}


def gated_model(name: str) -> nn.Sequential:
    """A fresh gated model from the zoo."""
    if name not in ZOO:
        raise UserError(f"unknown model {name!r}; the zoo has: {', '.join(ZOO)}")
    return ZOO[name]()


def strip_gates(gated: nn.Sequential) -> nn.Sequential:
    """The dense Sequential: the gated one without its VIBGate layers (layers are shared, not copied)."""
    return nn.Sequential(*(layer for layer in gated if not isinstance(layer, VIBGate)))


def load_dense_into_gated(dense: nn.Sequential, gated: nn.Sequential) -> None:
    """Copy the dense weights layer by layer into the gated model (whose gates keep their init)."""
    target = strip_gates(gated)
    if len(target) != len(dense):
        raise UserError("dense checkpoint does not match the gated model's architecture")
    for src, dst in zip(dense, target):
        dst.load_state_dict(src.state_dict())


def architecture(gated: nn.Sequential) -> list[int]:
    """Units per gated layer (input pixels first where gated)."""
    return [g.units for g in gated if isinstance(g, VIBGate)]
