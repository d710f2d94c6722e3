"""prune.round_to: block (deploy/block.py, deploy/widths.py): the target's channel block found from a conv's
staircase, cached; kept counts rounded up to multiples of it, or 0 for a residual branch's interior."""

from __future__ import annotations

import math

import torch
from torch import nn

from vib_deploy.deploy.block import block_of, measured_block
from vib_deploy.deploy.widths import round_widths
from vib_deploy.model.branches import plan_branches
from vib_deploy.model.gated import GatedNet
from vib_deploy.model.graph import plan_groups
from vib_deploy.prune.groups import prune_groups

SHAPE = (3, 8, 8)


def _staircase(block: int, widths: int = 64) -> list[float]:
    return [1.0 + 0.5 * math.ceil(w / block) + 0.01 * ((w * 7) % 3) for w in range(1, widths + 1)]  # small noise


def test_block_of_a_staircase() -> None:
    assert [block_of(_staircase(b)) for b in (4, 8, 16, 32)] == [4, 8, 16, 32]
    assert block_of([1.0 + 0.1 * w for w in range(1, 65)]) == 1  # no blocks: every channel costs


def test_measured_block_is_timed_once_and_cached(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def measure(shape, pairs):
        calls.append(pairs)
        return _staircase(16, len(pairs))

    key = {"engine": "openvino", "precision": "int8", "batch": 64, "threads": 1, "cpu": "test"}
    first, second = measured_block(key, measure), measured_block(key, measure)
    assert first["block"] == second["block"] == 16 and not first["cached"] and second["cached"]
    assert len(calls) == 1 and calls[0] == [(w, w) for w in range(1, 65)]


class Block(nn.Module):
    def __init__(self, c: int, mid: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, mid, 3, 1, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 48, 3, 1, 1, bias=False), nn.BatchNorm2d(48)
        self.blocks = nn.Sequential(Block(48, 32), Block(48, 48), Block(48, 32))
        self.head = nn.Linear(48, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(torch.relu(self.bn(self.stem(x)))).mean((2, 3)))


def test_round_to_block_of_16_keeps_multiples_of_16_or_0() -> None:
    torch.manual_seed(0)
    net = Net().eval()
    plan = plan_groups(net, SHAPE)
    gated = GatedNet(net, plan.gated, branches=plan_branches(net, SHAPE)).eval()
    interior = {g.gate for g in gated.groups if g.root == "blocks.1.conv1"}
    with torch.no_grad():
        for k, gate in enumerate(gated.gates):  # a few units kept everywhere; all of blocks.1's interior dead
            alive = torch.zeros(gate.units, dtype=torch.bool)
            alive[: 3 + 5 * k] = k not in interior
            gate.logD.copy_(torch.where(alive, -20.0, 20.0) + torch.linspace(0, 1, gate.units))
    records = round_widths(gated, 16, block=True)
    assert {r["why"] for r in records if r["vib"] == 0} == {"0: inside a residual branch, which goes whole"}
    result, record = prune_groups(gated.double(), SHAPE)
    counts = [len(k) for k in result.kept_per_gate]
    assert all(c % 16 == 0 for c in counts) and 0 in counts and any(c > 0 for c in counts), counts
    assert [s["branch"] for s in record if "branch" in s] == ["blocks.1.bn2"]
    x = torch.randn(2, *SHAPE, dtype=torch.float64)
    with torch.no_grad():
        assert float((result.model(x) - gated(x)).abs().max()) <= 1e-12


def test_a_branch_costs_its_layers_latency_at_the_current_widths() -> None:
    """kl_weighting latency: a branch gate's unit costs its layers' table values (interpolated, monotone rows)."""
    from vib_deploy.measure.latency import LayerTable

    table = LayerTable((8, 16), (8, 16), ((1.0, 2.0), (3.0, 4.0)))
    assert table.latency(8, 8) == 1.0 and table.latency(16, 16) == 4.0
    assert table.latency(12, 12) == 2.5  # bilinear between the grid's corners
    assert table.latency(4, 32) == 2.0  # constant outside the grid
