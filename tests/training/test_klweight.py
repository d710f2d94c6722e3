"""Cost-aware KL: per-unit weights = FLOPs or latency per unit at the current widths, normalised to the paper's total."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
import torch
from torch import nn

from vib_deploy.config import parse_config
from vib_deploy.errors import UserError
from vib_deploy.measure.latency import build_tables, table_key
from vib_deploy.model.factory import build_net
from vib_deploy.model.gated import GatedNet
from vib_deploy.model.graph import plan_groups
from vib_deploy.model.layers import count_flops
from vib_deploy.model.vib import VIBGate, total_kl
from vib_deploy.model.zoo_names import MODULE_ZOO
from vib_deploy.prune.groups import prune_groups
from vib_deploy.runs.directory import RunDir
from vib_deploy.stages.registry import get_stage, keyed_section
from vib_deploy.training.klweight import FlopsWeighting, LatencyWeighting
from vib_deploy.training.loop import TrainSpec, train
from vib_deploy.zoo import gated_model


def _three_layer() -> nn.Sequential:
    """Input gate (4 pixels) -> 3 -> 2 -> 5 logits."""
    return nn.Sequential(
        nn.Flatten(),
        VIBGate(4),
        nn.Linear(4, 3),
        nn.ReLU(),
        VIBGate(3),
        nn.Linear(3, 2),
        nn.ReLU(),
        VIBGate(2),
        nn.Linear(2, 5),
    )


def _kill(gate: VIBGate, unit: int) -> None:
    with torch.no_grad():
        gate.mu[unit] = 1e-6  # log alpha = -9 - log(1e-12) > 0: pruned


def test_three_layer_weights_by_hand():
    model = _three_layer()
    w = FlopsWeighting(model, (1, 2, 2))
    # a pixel feeds 3 units (2*3 FLOPs); an h1 unit: 4 in + 2 out (2*6); an h2 unit: 3 in + 5 out (2*8)
    assert w.unit_flops([4, 3, 2]) == [6, 12, 16]
    # the paper's total on the dense net: 0.5 * (4 + 3 + 2) = 4.5; FLOPs-weighted total 4*6 + 3*12 + 2*16 = 92
    scale = 4.5 / 92
    assert w.weights() == pytest.approx([6 * scale, 12 * scale, 16 * scale], rel=1e-12)
    gates = [m for m in model if isinstance(m, VIBGate)]
    _kill(gates[1], 0)  # h1 down to 2 units: a pixel now feeds 2 (4), h2 units take 2 inputs (2*7)
    assert w.alive() == [4, 2, 2]
    assert w.weights() == pytest.approx([4 * scale, 12 * scale, 14 * scale], rel=1e-12)
    # the KL itself: each layer's sum of log(1 + mu^2 / (exp(logD) + 1e-8)) times its weight
    with torch.no_grad():
        expected = sum(wt * torch.log1p(g.mu.pow(2) / (g.logD.exp() + 1e-8)).sum() for wt, g in zip(w.weights(), gates))
    with torch.no_grad():
        assert float(total_kl(model, w)) == pytest.approx(float(expected), rel=1e-6)
        assert float(total_kl(model)) == pytest.approx(float(sum(0.5 * g.unit_kl() for g in gates)), rel=1e-6)


def test_lenet5_costs_at_the_issue_widths():
    w = FlopsWeighting(gated_model("lenet5"), (1, 28, 28))
    # conv1 channel: 2*24*24*25 in conv1 + 2*8*8*9*25 in conv2; fc1 unit: 2*(9*16) + 2*10 (issue 17's figures)
    assert w.unit_flops([4, 9, 60]) == [57_600, 2 * 64 * 4 * 25 + 2 * 16 * 60, 308]


def _plain(name: str, widths: list[int]) -> tuple[nn.Sequential, tuple[int, ...]]:
    if name == "lenet5":
        a, b, c = widths
        return nn.Sequential(
            nn.Conv2d(1, a, 5),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(a, b, 5),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Flatten(),
            nn.Linear(b * 16, c),
            nn.ReLU(),
            nn.Linear(c, 10),
        ), (1, 28, 28)
    p, a, b = widths
    return nn.Sequential(nn.Linear(p, a), nn.ReLU(), nn.Linear(a, b), nn.ReLU(), nn.Linear(b, 10)), (p,)


@pytest.mark.parametrize(
    "name,widths",
    [("lenet5", [4, 9, 60]), ("lenet5", [20, 50, 500]), ("lenet300", [97, 71, 33]), ("lenet300", [784, 300, 100])],
)
def test_unit_cost_is_what_removing_a_unit_saves_in_count_flops(name, widths):
    w = FlopsWeighting(gated_model(name), (1, 28, 28))
    costs = w.unit_flops(widths)
    for layer, cost in enumerate(costs):
        fewer = [n - (i == layer) for i, n in enumerate(widths)]
        assert count_flops(*_plain(name, widths)) - count_flops(*_plain(name, fewer)) == cost


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_total_weight_on_the_dense_net_is_the_papers(name):
    model = gated_model(name)
    w = FlopsWeighting(model, (1, 28, 28))
    gates = [m for m in model if isinstance(m, VIBGate)]
    paper = sum(g.units * 0.5 * g.kl_mult * g.map_size for g in gates)
    assert sum(g.units * wt for g, wt in zip(gates, w.weights())) == pytest.approx(paper, rel=1e-12)
    assert len(set(w.weights())) == len(gates)  # and it is distributed differently


def test_training_with_flops_weighting_logs_its_kl(tmp_path):
    torch.manual_seed(0)
    model = gated_model("lenet5")
    w = FlopsWeighting(model, (1, 28, 28))
    rng = np.random.default_rng(0)
    x = rng.random((120, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 120).astype(np.int64)
    data = SimpleNamespace(x_train=x[:100], y_train=y[:100], x_val=x[100:], y_val=y[100:])
    calls = []
    inner = w.total_kl
    w.total_kl = lambda: calls.append(1) or inner()  # type: ignore[method-assign]
    spec = TrainSpec(
        "train-vib",
        "k",
        2,
        1e-3,
        50,
        0,
        torch.device("cpu"),
        gate_lr=1e-2,
        kl_factor=1e-4,
        finetune_epochs=1,
        kl_weighting=w,
    )
    result = train(model, spec, data, RunDir(tmp_path))
    assert len(calls) == 4  # every step of both epochs: in the loss (epoch 1), logged (frozen epoch 2)
    with torch.no_grad():
        assert result.history[-1]["kl"] == pytest.approx(float(inner()), rel=1e-5)


def _cfg(**vib):
    return parse_config({"name": "x", "model": {"name": "lenet5"}, "train": {"vib": vib}}, "t")


def test_paper_weighting_keeps_the_cache_key_and_flops_is_keyed():
    # settings added after runs were made are keyed only when set: existing train-vib keys stay
    assert not {"kl_weighting", "weight_decay", "schedule"} & keyed_section("vib", _cfg().train.vib).keys()
    assert keyed_section("vib", _cfg(schedule="step", weight_decay=5e-5).train.vib)["schedule"] == "step"
    assert keyed_section("vib", _cfg(kl_weighting="flops").train.vib)["kl_weighting"] == "flops"
    module_net = {"name": "x", "model": {"name": "resnet20"}, "data": {"pad": 2}}
    assert (
        parse_config({**module_net, "train": {"vib": {"kl_weighting": "flops"}}}, "t").train.vib.kl_weighting == "flops"
    )
    with pytest.raises(UserError, match="a gated Sequential\\) or a GatedNet, not Module"):
        FlopsWeighting(nn.Module(), (1, 28, 28))


def _pruned_flops(gated: GatedNet, widths: list[int], shape: tuple[int, ...]) -> int:
    """count_flops of the net pruned so that group k keeps its first widths[k] channels (no grouped-conv ties)."""
    gated = copy.deepcopy(gated)
    with torch.no_grad():
        for group, n in zip(gated.groups, widths):
            cast(VIBGate, gated.gates[group.gate]).mu[n:] = 1e-6
    return count_flops(prune_groups(gated, shape)[0].model.float(), shape)


def test_resnet20_unit_flops_are_what_removing_a_channel_saves():
    shape = (1, 32, 32)
    net = build_net(MODULE_ZOO["resnet20"], {})
    gated = GatedNet(net, plan_groups(net, shape).gated)
    w = FlopsWeighting(gated, shape)
    dense = [g.channels for g in gated.groups]
    assert len(dense) == 12 and w.alive() == dense
    # on the dense net a group's unit costs what graph.py says one of its channels costs
    assert w.unit_flops(dense) == [g.flops_per_channel for g in gated.groups]
    # sum of widths x unit cost counts every conv twice (both sides gated) but the stem and the head once (input
    # pixels and logits are not gated): 2 x FLOPs - stem (2*32*32*9*16) - fc (2*64*10)
    assert sum(n * c for n, c in zip(dense, w.unit_flops(dense))) == 2 * count_flops(net, shape) - 294_912 - 1_280
    widths = [n - 3 for n in dense]  # at narrower widths, each group's unit cost is what one channel less saves
    base, costs = _pruned_flops(gated, widths, shape), w.unit_flops(widths)
    for k in range(len(widths)):
        fewer = [n - (i == k) for i, n in enumerate(widths)]
        assert base - _pruned_flops(gated, fewer, shape) == costs[k]


class ConvFlattenLinear(nn.Module):
    """conv (3 channels, 6x6 map) -> flatten -> linear (3*36 -> 5) -> linear (5 -> 2): 36 features per channel."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)
        self.fc, self.head = nn.Linear(3 * 36, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.head(torch.relu(self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))))


def test_a_channel_flattened_into_a_linear_costs_all_its_features():
    shape = (1, 8, 8)
    net = ConvFlattenLinear()
    gated = GatedNet(net, plan_groups(net, shape).gated)
    w = FlopsWeighting(gated, shape)
    assert [g.flops_per_channel for g in gated.groups] == [2 * 36 * 9 + 36 * 2 * 5, 2 * 108 + 2 * 2]
    for widths in ([3, 5], [2, 4]):
        for k in range(2):
            fewer = [n - (i == k) for i, n in enumerate(widths)]
            saved = _pruned_flops(gated, widths, shape) - _pruned_flops(gated, fewer, shape)
            assert saved == w.unit_flops(widths)[k]


class DepthwiseConcat(nn.Module):
    """pointwise 1->6 -> depthwise 3x3 -> concat of a 1x1 (3) and a 3x3 branch (5) -> 1x1 mix (8) -> mean -> head."""

    def __init__(self):
        super().__init__()
        self.pw, self.bpw = nn.Conv2d(1, 6, 1), nn.BatchNorm2d(6)
        self.dw, self.bdw = nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.BatchNorm2d(6)
        self.a, self.b = nn.Conv2d(6, 3, 1), nn.Conv2d(6, 5, 3, padding=1)
        self.mix, self.head = nn.Conv2d(8, 8, 1), nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.bdw(self.dw(torch.relu(self.bpw(self.pw(x))))))
        x = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return self.head(torch.relu(self.mix(x)).mean((2, 3)))


def test_depthwise_and_concat_unit_flops_are_what_removing_a_channel_saves():
    shape = (1, 6, 6)
    net = DepthwiseConcat()
    gated = GatedNet(net, plan_groups(net, shape).gated)
    w = FlopsWeighting(gated, shape)
    assert [g.channels for g in gated.groups] == [6, 3, 5, 8]  # pw+dw, each concat branch, mix
    assert w.unit_flops([6, 3, 5, 8]) == [g.flops_per_channel for g in gated.groups]
    for widths in ([6, 3, 5, 8], [4, 2, 3, 5]):
        base = _pruned_flops(gated, widths, shape)
        for k in range(4):
            fewer = [n - (i == k) for i, n in enumerate(widths)]
            assert base - _pruned_flops(gated, fewer, shape) == w.unit_flops(widths)[k]


class ThreeGroups(nn.Module):
    """conv 1->4 (BN) -> conv 4->6 (BN) -> mean over 4x4 -> linear 6->8 -> linear 8->10: three gated groups."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))


CONV3 = "conv k3x3 s1x1 p1x1 d1x1 g1 in4x4"  # c1 and c2 share a shape: one set of entries
HAND_TABLE = {  # ms at (input width, output width); c2 at 4 inputs is slower at 3 outputs than at 6 (noise)
    CONV3: {(1, 2): 1.0, (1, 4): 1.4, (2, 3): 2.0, (2, 6): 2.6, (4, 3): 3.0, (4, 6): 2.8},
    "linear in-": {(3, 4): 0.3, (3, 8): 0.5, (6, 4): 0.4, (6, 8): 0.8, (4, 10): 0.1, (8, 10): 0.3},
}


def test_latency_weights_from_a_hand_made_table(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    shape = (1, 4, 4)
    net = ThreeGroups()
    gated = GatedNet(net, plan_groups(net, shape).gated)
    asked = []

    def measure(layer, pairs):
        asked.extend((layer.key(), p) for p in pairs)
        return [HAND_TABLE[layer.key()][p] for p in pairs]

    key = table_key("onnxruntime", "fp32", 64, 1, True)
    w = LatencyWeighting(gated, shape, lambda requests: build_tables(requests, key, measure))
    assert sorted(asked) == sorted((k, p) for k, table in HAND_TABLE.items() for p in table)  # every entry, once
    # grids: c1 (1; 2,4), c2 (2,4; 3,6), fc1 (3,6; 4,8), fc2 (4,8; 10). At the dense widths 4-6-8, per unit:
    # group c1: c1's output slope (1.4-1.0)/2 = 0.2 + c2's input slope at 6 outputs (2.8-2.6)/2 = 0.1   -> 0.3
    # group c2: c2's output slope at 4 inputs: 3.0 > 2.8 pooled to 2.9, 2.9: 0 + fc1's input slope at 8 (0.8-0.5)/3
    #   = 0.1 -> 0.1;   group fc1: fc1's output slope at 6 inputs (0.8-0.4)/4 = 0.1 + fc2's (0.3-0.1)/4 = 0.05 -> 0.15
    assert w.unit_costs([4, 6, 8]) == pytest.approx([0.3, 0.1, 0.15], rel=1e-12)
    # the paper's total: 4 x 2 + 6 x 2 (0.5 x 1/4 x 16 on a 4x4 map) + 8 x 0.5 = 24; latency's 4*0.3+6*0.1+8*0.15 = 3
    assert w.scale == pytest.approx(8.0, rel=1e-12)
    assert w.weights() == pytest.approx([2.4, 0.8, 1.2], rel=1e-12)
    for gate, dead in zip(w.gates, (1, 2, 3)):
        for unit in range(dead):
            _kill(gate, unit)
    assert w.alive() == [3, 4, 5]
    # c2 at 3 inputs: output slope halfway between 0.2 (2 inputs) and 0 (4) = 0.1; input slope at 4 outputs: a third
    # of the way from 0.5 (3 outputs) to 0.1 (6) = 11/30; fc1 at 4 inputs, 5 outputs: output slope 0.05 + 0.05/3,
    # input slope 1/30 + (0.1 - 1/30) / 4 = 0.05; fc2: 0.05
    assert w.weights() == pytest.approx([8 * (0.2 + 11 / 30), 8 * (0.1 + 0.05), 8 * (0.2 / 3 + 0.05)], rel=1e-12)
    identity = w.identity()
    assert identity is not None and identity["timed"] == 12 and identity["key"] == key


def _latency_cfg(target: str):
    return parse_config(
        {
            "name": "x",
            "model": {"name": "lenet5"},
            "train": {"vib": {"kl_weighting": "latency"}},
            "deploy": {"target": target},
            "bench": {"backends": ["onnxruntime", "openvino", "torch"]},
        },
        "t",
    )


def test_latency_needs_a_named_onnx_target_and_keys_it():
    with pytest.raises(UserError, match="kl_weighting: latency needs a named deploy.target") as e:
        _latency_cfg("auto")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="torch, which runs no ONNX model"):
        _latency_cfg("torch-fp32@64")
    section = get_stage("train-vib").section
    ort, ov = section(_latency_cfg("onnxruntime-fp32@64")), section(_latency_cfg("openvino-fp32@1"))
    assert ort["latency_table"] == table_key("onnxruntime", "fp32", 64, 1, True)
    assert ov["latency_table"]["engine"] == "openvino" and ov["latency_table"]["batch"] == 1
    assert "latency_table" not in section(_cfg(kl_weighting="flops")) and "latency_table" not in section(_cfg())
