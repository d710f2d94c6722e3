"""`GatedNet`: a user's net with one VIBGate per channel group (graph.py plans the groups), multiplying the
outputs of each group's gate points by one draw of z per sample (see graph.py's docstring for where and why)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any, cast

import torch
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.model.branches import Branch
from vib_deploy.model.graph import GateGroup
from vib_deploy.model.vib import VIBGate


def point_scale(z: torch.Tensor, index: Sequence[int]) -> torch.Tensor:
    """A group's z (B|1, channels) over one gate point's outputs: 1 at the outputs of other groups (index -1)."""
    if min(index) >= 0:
        return z[:, list(index)]
    scale = torch.ones(z.shape[0], len(index), dtype=z.dtype, device=z.device)
    mine = [p for p, r in enumerate(index) if r >= 0]
    scale[:, mine] = z[:, [index[p] for p in mine]]
    return scale


def _multiply_output(module: nn.Module, inputs: Any, output: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):  # features last: (B|1, C) -> (B|1, 1, 1, C) for a Linear on (B, H, W, C)
        return output * z.reshape(z.shape[:1] + (1,) * (output.dim() - 2) + z.shape[1:])
    return output * z.reshape(z.shape + (1,) * (output.dim() - z.dim()))  # (B|1, C) -> (B|1, C, 1, 1)


class GatedNet(nn.Module):
    """A user's net with one VIBGate per group, multiplying the outputs of the group's gate points, and (depth
    gates) one scalar VIBGate per residual branch (branches.py), multiplying the output of the branch's last module.

    Hooks are attached for the length of one forward only, so the net stays a plain module
    (deep-copyable, state_dict = net.* + gates.* [+ branch_gates.*]) and every point of a group sees the same z.
    """

    def __init__(
        self, net: nn.Module, groups: Sequence[GateGroup], threshold: float = 0.0, branches: Sequence[Branch] = ()
    ):
        super().__init__()
        self.net = net
        self.groups = list(groups)
        self.branches = list(branches)
        gates: dict[int, list[GateGroup]] = {}
        for g in self.groups:
            gates.setdefault(g.gate, []).append(g)
        if sorted(gates) != list(range(len(gates))):
            raise UserError(f"gate indices {sorted(gates)} are not 0..{len(gates) - 1}: the model file is damaged")
        # KL weighted as the paper's conv gates: kl_mult 1/S, map_size S*S on an S x S map (Linear: 1, 1),
        # times the channels each unit stands for (more than 1 where a grouped conv ties channels)
        self.gates = nn.ModuleList()
        for k in range(len(gates)):
            units = 1 + max(max(g.unit_of_channel) for g in gates[k])
            channels = sum(g.channels for g in gates[k])
            size = gates[k][0].map_size
            self.gates.append(
                VIBGate(units, kl_mult=channels / units / math.sqrt(size), map_size=size, threshold=threshold)
            )
        # a branch gate: one unit standing for the branch's output channels on its S x S map, weighted as the
        # paper weights that many conv units there (klweight.py weights it by the branch's cost instead)
        self.branch_gates = nn.ModuleList(
            VIBGate(1, kl_mult=b.channels / math.sqrt(b.map_size), map_size=b.map_size, threshold=threshold)
            for b in self.branches
        )

    def channel_scales(self, like: torch.Tensor) -> list[torch.Tensor]:
        """Per group, z over its channels: (B|1, channels), drawn once per gate."""
        z = [cast(VIBGate, gate).sample(like) for gate in self.gates]
        return [z[g.gate][:, list(g.unit_of_channel)] for g in self.groups]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        handles = [
            self.net.get_submodule(point).register_forward_hook(partial(_multiply_output, z=point_scale(z, index)))
            for g, z in zip(self.groups, self.channel_scales(x))
            for point, index in g.points
        ]
        handles += [
            self.net.get_submodule(b.output).register_forward_hook(partial(_multiply_output, z=z))
            for b, z in zip(self.branches, self.branch_scales(x))
        ]
        try:
            return self.net(x)
        finally:
            for h in handles:
                h.remove()

    def branch_scales(self, like: torch.Tensor) -> list[torch.Tensor]:
        """Per branch, its z over the branch's output channels: (B|1, channels)."""
        return [
            cast(VIBGate, gate).sample(like).expand(-1, b.channels) for b, gate in zip(self.branches, self.branch_gates)
        ]

    def branch_keep(self) -> list[bool]:
        """Per branch, whether its gate keeps it at inference."""
        return [bool(cast(VIBGate, gate).keep_mask()[0]) for gate in self.branch_gates]

    def unit_masks(self) -> list[torch.Tensor]:
        """Per gate, the units kept at inference."""
        return [cast(VIBGate, gate).keep_mask() for gate in self.gates]

    def keep_masks(self, unit_masks: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Per group, the kept channels (bool over `channels`)."""
        units = self.unit_masks() if unit_masks is None else unit_masks
        return [units[g.gate][list(g.unit_of_channel)] for g in self.groups]
