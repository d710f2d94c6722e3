"""Gates on Torch-Pruning groups for any nn.Module, and exact structural pruning (vib_deploy/model/graph.py).

Property test: random nets of residual, depthwise, concat and grouped-conv blocks (tests/netgen.py),
random gates of both signs with about half of every group's channels off -> pruned net equal to the
gated net in float64 (<= 1e-12 x logit scale), FLOPs and parameters down, and the saved pruning record
rebuilds the same net from scratch.
"""

import copy

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from torch import nn

from tests.conftest import ROOT
from tests.netgen import INPUT_SHAPE, BlockSpec, RandomNet, random_nets
from vib_deploy.errors import UserError
from vib_deploy.model.gated import GatedNet
from vib_deploy.model.graph import plan_groups
from vib_deploy.model.layers import count_flops, count_params
from vib_deploy.prune.groups import _random_gates, apply_pruning, check_prunable, prune_groups


def _gated_random(net: nn.Module, shape, seed: int = 0) -> GatedNet:
    gated = GatedNet(net, plan_groups(net, shape).gated).double().eval()
    _random_gates(gated, torch.Generator().manual_seed(seed))
    return gated


def _rel_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = a(x)
        return float((b(x) - ref).abs().max() / max(1.0, float(ref.abs().max())))


def _dense_dense_grouped(dense_out: int) -> RandomNet:
    """Two DenseNet blocks into a grouped conv: hypothesis found both pruning bugs here (2026-12-05).

    12 -> 4 channels, groups 2, ties input p to p + 6 across the two blocks' layers; dense_out 6 chains the
    stem's gate to three layers' gates (they must merge into one), dense_out 8 left Torch-Pruning's concat
    offsets stale (it sizes them from the grouped conv's in_channels, cut only at the end)."""
    specs = (BlockSpec("dense", 4, dense_out), BlockSpec("dense", dense_out, 12), BlockSpec("grouped", 12, 4, 2))
    return RandomNet(4, specs, 2, seed=0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=random_nets())
@example(net=_dense_dense_grouped(6))
@example(net=_dense_dense_grouped(8))
def test_random_nets_prune_exactly(net):
    dense_flops, dense_params = count_flops(net, INPUT_SHAPE), count_params(net)
    # only the head stays: a Linear head is the output layer; a conv head's channels are the output
    plan = plan_groups(net, INPUT_SHAPE)
    assert [(f.root, f.reason) for f in plan.fixed] == [
        ("head", "reaches the model output" if net.conv_head else "output layer")
    ]
    gated = _gated_random(copy.deepcopy(net), INPUT_SHAPE)
    result, record = prune_groups(gated, INPUT_SHAPE)
    x = torch.randn((16,) + INPUT_SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert _rel_diff(gated, result.model, x) <= 1e-12
    dead = sum(len(r.get("dead", [])) for r in record)
    pruned = result.model.float()
    if dead:
        assert count_flops(pruned, INPUT_SHAPE) < dense_flops and count_params(pruned) < dense_params
    else:
        assert count_flops(pruned, INPUT_SHAPE) == dense_flops
    # the record rebuilds the pruned shapes on a fresh copy, which then takes the pruned weights
    fresh = apply_pruning(copy.deepcopy(net), record, INPUT_SHAPE)
    fresh.load_state_dict(pruned.state_dict())
    assert _rel_diff(pruned.double(), fresh.double().eval(), x) == 0.0


class Residual(nn.Module):
    """stem -> two residual blocks -> head: one group spans the stem and every block's second BN."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c1, self.b1, self.c2, self.b2 = (
            nn.Conv2d(6, 5, 3, padding=1),
            nn.BatchNorm2d(5),
            nn.Conv2d(5, 6, 3, padding=1),
            nn.BatchNorm2d(6),
        )
        self.c3, self.b3, self.c4, self.b4 = (
            nn.Conv2d(6, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.BatchNorm2d(6),
        )
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        x = torch.relu(x + self.b4(self.c4(torch.relu(self.b3(self.c3(x))))))
        return self.head(x.mean((2, 3)))


def test_residual_add_shares_one_gate_across_the_stream():
    plan = plan_groups(Residual(), (1, 8, 8))
    stream = [g for g in plan.gated if "bn0" in dict(g.points)]
    assert len(stream) == 1 and set(dict(stream[0].points)) == {"bn0", "b2", "b4"} and stream[0].channels == 6
    assert sorted(g.channels for g in plan.gated) == [4, 5, 6]  # the stream + each block's inner width
    assert [f.reason for f in plan.fixed] == ["output layer"]


class DepthwiseConcatGrouped(nn.Module):
    """pointwise -> depthwise -> concat of two branches -> conv; then conv -> grouped conv (groups 2)."""

    def __init__(self):
        super().__init__()
        self.pw, self.bpw = nn.Conv2d(1, 6, 1), nn.BatchNorm2d(6)
        self.dw, self.bdw = nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.BatchNorm2d(6)
        self.a, self.b = nn.Conv2d(6, 3, 1), nn.Conv2d(6, 5, 3, padding=1)
        self.mix = nn.Conv2d(8, 8, 1)
        self.g = nn.Conv2d(8, 4, 3, padding=1, groups=2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.bdw(self.dw(torch.relu(self.bpw(self.pw(x))))))
        x = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        x = torch.relu(self.g(torch.relu(self.mix(x))))
        return self.head(x.mean((2, 3)))


def test_depthwise_follows_its_input_concat_splits_grouped_conv_ties():
    net = DepthwiseConcatGrouped()
    plan = {g.root: g for g in plan_groups(net, (1, 8, 8)).gated}
    assert set(dict(plan["dw"].points)) == {"bpw", "bdw"}  # the depthwise conv's channels are its input's
    assert plan["a"].channels == 3 and plan["b"].channels == 5  # one group per concat branch
    # mix feeds a conv of 2 groups: channel i uses unit i % 4; so do g's own outputs
    assert plan["mix"].unit_of_channel == (0, 1, 2, 3, 0, 1, 2, 3) and plan["mix"].units == 4
    assert plan["g"].unit_of_channel == (0, 1, 0, 1)
    assert plan["mix"].gate != plan["g"].gate
    gated = _gated_random(net, (1, 8, 8), seed=3)
    result, _ = prune_groups(gated, (1, 8, 8))
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    assert _rel_diff(gated, result.model, x) <= 1e-12
    g = result.model.g
    assert g.groups == 2 and g.in_channels % 2 == 0 and g.out_channels % 2 == 0 and g.in_channels < 8


class Sigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.head = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.c2(torch.sigmoid(self.c1(x)))).mean((2, 3)))


def test_a_group_that_cannot_be_removed_exactly_is_named_before_training():
    torch.manual_seed(0)  # unseeded, the init came from whatever the hypothesis tests left; seed 25 misses the culprit
    net = Sigmoid()
    with pytest.raises(UserError, match=r"group of c1 .*cannot be pruned exactly.*list c1 under model.ignore"):
        check_prunable(net, plan_groups(net, (1, 8, 8)), (1, 8, 8))
    plan = plan_groups(net, (1, 8, 8), ignore=["c1"])
    assert [g.root for g in plan.gated] == ["c2"] and check_prunable(net, plan, (1, 8, 8)) <= 1e-12


class LayerScale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        return x * self.gamma.view(1, -1, 1, 1)


class WithLayerScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.scale, self.c2, self.head = nn.Conv2d(1, 4, 3), LayerScale(4), nn.Conv2d(4, 4, 3), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.c2(self.scale(self.c1(x)))).mean((2, 3)))


def test_unsupported_layer_is_named_with_the_ignore_hint():
    with pytest.raises(UserError, match=r"layer scale \(LayerScale\) .*list it under model.ignore"):
        plan_groups(WithLayerScale(), (1, 8, 8))
    plan = plan_groups(WithLayerScale(), (1, 8, 8), ignore=["scale"])
    assert [g.root for g in plan.gated] == ["c2"]
    assert any(f.root == "c1" and "scale.gamma is in model.ignore" in f.reason for f in plan.fixed)


def test_unknown_ignore_name_and_wrong_input_shape_are_user_errors():
    with pytest.raises(UserError, match="'nope', which is not a module"):
        plan_groups(Residual(), (1, 8, 8), ignore=["nope"])
    with pytest.raises(UserError, match=r"fails on an input of shape \(1, 3, 8, 8\)"):
        plan_groups(Residual(), (3, 8, 8))


def test_zoo_nets_plan_and_self_check():
    from vib_deploy.model.factory import build_net
    from vib_deploy.model.zoo_names import MODULE_ZOO

    for name, ref in MODULE_ZOO.items():
        kwargs = {"width": 0.125} if name == "vgg16" else {}
        net = build_net(ref, kwargs)
        plan = plan_groups(net, (1, 32, 32))
        assert plan.gated and [f.reason for f in plan.fixed] == ["output layer"], name
        assert check_prunable(net, plan, (1, 32, 32)) <= 1e-12, name


def test_gate_noise_is_drawn_once_per_group_and_hooks_come_off(monkeypatch):
    from vib_deploy.model.vib import VIBGate

    gated = GatedNet(Residual(), plan_groups(Residual(), (1, 8, 8)).gated).train()
    draws = []
    original = VIBGate.sample
    monkeypatch.setattr(VIBGate, "sample", lambda self, like: draws.append(self) or original(self, like))
    gated(torch.randn(2, 1, 8, 8))
    assert len(draws) == len(gated.gates) == 3  # the stream's gate multiplies 3 points from one draw
    assert not any(m._forward_hooks for m in gated.net.modules())
    # eval: z = mu * mask; with the stream's gate off, the head sees only its bias
    gated.eval()
    with torch.no_grad():
        gated.gates[[("bn0" in dict(g.points)) for g in gated.groups].index(True)].logD.fill_(20.0)
        out = gated(torch.randn(2, 1, 8, 8))
    assert torch.equal(out, gated.net.head.bias.expand(2, -1))


# Real architectures (issue 15), small nets of the same structure in tests/archnets.py
ARCH_SHAPE = (1, 16, 16)


def _arch(name: str) -> nn.Module:
    from tests import archnets

    return getattr(archnets, name)()


def _prune_and_replay(net: nn.Module, ignore=(), seed: int = 0):
    """Prune `net` with random gates; the pruned net equals the gated one in float64 and the record rebuilds it."""
    gated = GatedNet(copy.deepcopy(net), plan_groups(net, ARCH_SHAPE, ignore).gated).double().eval()
    _random_gates(gated, torch.Generator().manual_seed(seed))
    result, record = prune_groups(gated, ARCH_SHAPE)
    x = torch.randn((4,) + ARCH_SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert _rel_diff(gated, result.model, x) <= 1e-12
    fresh = apply_pruning(copy.deepcopy(net).double(), record, ARCH_SHAPE)
    fresh.load_state_dict(result.model.state_dict())
    assert _rel_diff(result.model, fresh.eval(), x) == 0.0
    assert count_flops(result.model.float(), ARCH_SHAPE) < count_flops(net, ARCH_SHAPE)
    return result.model


def test_fully_convolutional_classifier_fixes_the_channels_that_reach_the_output():
    from vib_deploy.stages.sources import inspect_model

    info = inspect_model(f"{ROOT}/tests/archnets.py:squeezenet", ARCH_SHAPE, [], [])
    status = {r["group (root)"]: r["status"] for r in info["rows"]}
    assert status.pop("classifier.1") == "fixed: reaches the model output"
    assert set(status.values()) == {"gated"} and len(status) == 10  # stem + 3 Fire modules x 3 convs
    assert info["self_check"] <= 1e-12
    pruned = _prune_and_replay(_arch("squeezenet"))
    assert pruned.classifier[1].out_channels == 10 and pruned.features[3].squeeze.out_channels < 4


def test_dense_concat_gates_each_growth_layer_once_and_slices_every_consumer():
    from vib_deploy.stages.sources import inspect_model

    info = inspect_model(f"{ROOT}/tests/archnets.py:densenet", ARCH_SHAPE, [], [])
    assert [r["group (root)"] for r in info["rows"] if r["status"] != "gated"] == ["classifier"]
    assert info["self_check"] <= 1e-12
    plan = {g.root: g for g in plan_groups(_arch("densenet"), ARCH_SHAPE).gated}
    growth = plan["block1.layers.0.conv2"]  # channels 8..11 of every later concat in block 1
    points = dict(growth.points)
    assert set(points) == {"block1.layers.0.conv2", "block1.layers.1.norm1", "block1.layers.2.norm1", "transition1.0"}
    assert points["block1.layers.2.norm1"] == (-1,) * 8 + (0, 1, 2, 3) + (-1,) * 4
    net = _arch("densenet")
    pruned = _prune_and_replay(net)
    widths = [layer.conv2.out_channels for block in (pruned.block1, pruned.block2) for layer in block.layers]
    assert sum(widths) < 6 * 4  # growth channels went
    assert pruned.block1.layers[2].norm1.num_features == pruned.conv0.out_channels + widths[0] + widths[1]


def test_densenet121_shaped_net_gates_every_growth_layer_and_prunes_exactly():
    net = _arch("densenet121")
    plan = plan_groups(net, (1, 32, 32))
    assert len(plan.gated) == 2 * (6 + 12 + 24 + 16) + 1 + 3 and [f.root for f in plan.fixed] == ["classifier"]
    assert check_prunable(net, plan, (1, 32, 32)) <= 1e-12


def test_layernorm_over_channels_is_refused_with_its_reason_and_ignore_leaves_the_rest_exact():
    with pytest.raises(UserError, match=r"block.norm \(LayerNorm, a norm over channels.*list it under model.ignore"):
        plan_groups(_arch("convnext"), ARCH_SHAPE)
    plan = plan_groups(_arch("convnext"), ARCH_SHAPE, ignore=["block.norm"])
    assert [g.root for g in plan.gated] == ["block.pwconv1"]  # the MLP's hidden channels (a Linear on (B, H, W, C))
    assert check_prunable(_arch("convnext"), plan, ARCH_SHAPE) <= 1e-12
    _prune_and_replay(_arch("convnext"), ignore=["block.norm"])
