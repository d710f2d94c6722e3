# pyright: reportAttributeAccessIssue=false, reportCallIssue=false, reportIndexIssue=false, reportArgumentType=false, reportOptionalMemberAccess=false, reportMissingImports=false
"""Depth gates (model/branches.py, prune/branches.py): residual branches found by the graph, a branch switched off
leaves its block the shortcut, a branch whose interior died goes too, exactly in float64."""

from __future__ import annotations

import copy
import importlib.util
import sys
import types
from typing import Any

import pytest
import torch
from torch import nn

from vib_deploy.model.branches import BranchConstant, plan_branches
from vib_deploy.model.gated import GatedNet
from vib_deploy.model.graph import plan_groups
from vib_deploy.model.layers import count_flops
from vib_deploy.prune.groups import apply_pruning, check_prunable, prune_groups

SHAPE = (3, 8, 8)


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN + shortcut (identity, or a 1x1 stride-2 projection + BN), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if stride > 1 else None
        )

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.proj is None else self.proj(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + self.shortcut(x))


class PreAct(nn.Module):
    """Pre-activation block (He et al. 2016b): BN-ReLU-conv twice, + identity, no activation after the add."""

    def __init__(self, c: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, 1, 1)
        self.bn2, self.conv2 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, 1, 1)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))


class Net(nn.Module):
    def __init__(self, blocks: list[nn.Module], width: int):
        super().__init__()
        self.stem, self.bn = (
            nn.Conv2d(3, blocks[0].conv1.in_channels, 3, 1, 1),
            nn.BatchNorm2d(blocks[0].conv1.in_channels),
        )  # type: ignore[union-attr]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, 5)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.features(x)).mean((2, 3)))


def _nets() -> dict[str, Net]:
    return {
        "identity": Net([Block(6, 6), Block(6, 6)], 6),
        "projection": Net([Block(6, 6), Block(6, 8, 2)], 8),
        "preact": Net([PreAct(6), PreAct(6)], 6),
    }


def _randomise(net: nn.Module) -> nn.Module:
    """BN statistics and shifts away from their defaults, so a BN's shift is not zero."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return net.eval()  # float32 to plan (plan_groups traces in float32); compared in float64


def _gated(net: nn.Module, shape: tuple[int, ...] = SHAPE) -> GatedNet:
    return GatedNet(net, plan_groups(net, shape).gated, branches=plan_branches(net, shape)).double().eval()


def test_branches_found_by_the_graph() -> None:
    nets = _nets()
    found = {name: plan_branches(net, SHAPE) for name, net in nets.items()}
    assert [b.output for b in found["identity"]] == ["blocks.0.bn2", "blocks.1.bn2"]
    assert [b.shortcut for b in found["projection"]] == [(), ("blocks.1.proj.0", "blocks.1.proj.1")]
    pre = found["preact"][0]  # its first BN is on the branch side: it goes with the branch
    assert pre.modules == ("blocks.0.bn1", "blocks.0.conv1", "blocks.0.bn2", "blocks.0.conv2")
    b = found["identity"][0]
    assert b.flops == 2 * (2 * 6 * 6 * 9 * 64)  # two 3x3 convs, 6 -> 6 channels on 8x8


@pytest.mark.parametrize("kind", ["identity", "projection", "preact"])
def test_branch_switched_off_leaves_the_shortcut(kind: str) -> None:
    net = _randomise(_nets()[kind])
    gated = _gated(copy.deepcopy(net))
    net = net.double()
    with torch.no_grad():
        for gate in [*gated.gates, *gated.branch_gates]:  # gates at exactly 1: the gated net is the net itself
            gate.mu.fill_(1.0)
        gated.branch_gates[-1].logD.fill_(20.0)  # the last block's branch off
    result, record = prune_groups(gated, SHAPE)
    x = torch.randn(4, *SHAPE, dtype=torch.float64)
    block = net.blocks[-1]
    post = (lambda t: t) if kind == "preact" else torch.relu
    with torch.no_grad():
        h = net.blocks[:-1](net.features(x))
        expected = net.head(post(block.shortcut(h)).mean((2, 3)))  # the block is its shortcut
        assert float((result.model(x) - expected).abs().max()) <= 1e-12
        assert float((result.model(x) - gated(x)).abs().max()) <= 1e-12
    last = result.model.blocks[-1]
    assert not any(isinstance(m, nn.Conv2d) for n, m in last.named_modules() if not n.startswith("proj"))
    assert [s["branch"] for s in record if "branch" in s] == [gated.branches[-1].output]
    fresh = apply_pruning(_randomise(_nets()[kind]).double(), record, SHAPE)  # the record replays on a fresh net
    fresh.load_state_dict(result.model.state_dict())
    assert float((fresh(x) - result.model(x)).abs().max()) == 0.0


@pytest.mark.parametrize("kind", ["identity", "projection", "preact"])
def test_dead_interiors_prune_to_the_shortcuts(kind: str) -> None:
    """Without depth gates too: every interior group dead, each branch becomes its constant (BN's shift)."""
    net = _randomise(_nets()[kind])
    plan = plan_groups(net, SHAPE)
    gated = GatedNet(copy.deepcopy(net), plan.gated).double().eval()
    interiors = {b.output: set(b.modules) for b in plan_branches(net, SHAPE)}
    dead = 0
    with torch.no_grad():
        for g in gated.groups:
            if any(set(g.members) <= inside for inside in interiors.values()):
                gated.gates[g.gate].logD.fill_(20.0)
                dead += 1
    assert dead == 2
    result, record = prune_groups(gated, SHAPE)
    x = torch.randn(4, *SHAPE, dtype=torch.float64)
    with torch.no_grad():
        assert float((result.model(x) - gated(x)).abs().max()) <= 1e-12
    constants = [m for m in result.model.modules() if isinstance(m, BranchConstant)]
    assert len(constants) == 2 and any(bool(c.value.abs().max() > 0) for c in constants)  # a shift, not zero
    convs = [n for n, m in result.model.named_modules() if isinstance(m, nn.Conv2d)]
    assert all(n == "stem" or ".proj." in n for n in convs)
    assert count_flops(result.model.float(), SHAPE) < count_flops(net, SHAPE) / 3


def test_broken_fold_is_caught() -> None:
    """The exactness check fails when a removed branch's constant is wrong (here: dropped)."""
    net = _randomise(_nets()["identity"])
    plan = plan_groups(net, SHAPE)
    gated = GatedNet(copy.deepcopy(net), plan.gated).double().eval()
    with torch.no_grad():
        for g in gated.groups:
            if g.root == "blocks.0.conv1":
                gated.gates[g.gate].logD.fill_(20.0)
    result, _ = prune_groups(gated, SHAPE)
    x = torch.randn(4, *SHAPE, dtype=torch.float64)
    constant = result.model.blocks[0].bn2
    assert isinstance(constant, BranchConstant)
    with torch.no_grad():
        constant.value.zero_()
        assert float((result.model(x) - gated(x)).abs().max()) > 1e-6


def test_check_prunable_with_branch_gates() -> None:
    for name, net in _nets().items():
        net = _randomise(net)
        assert check_prunable(net, plan_groups(net, SHAPE), SHAPE, branches=plan_branches(net, SHAPE)) <= 1e-12, name


def test_branch_gates_train_and_cost() -> None:
    from vib_deploy.training.klweight import FlopsWeighting

    net = _nets()["projection"]
    gated = GatedNet(net, plan_groups(net, SHAPE).gated, branches=plan_branches(net, SHAPE))
    assert len(gated.branch_gates) == 2 and len(list(gated.state_dict())) > len(list(net.state_dict()))
    weighting = FlopsWeighting(gated, SHAPE)
    weights = weighting.weights()
    assert len(weights) == len(gated.gates) + 2
    costs = weighting.unit_costs(weighting.net.dense)
    assert costs[-2] == pytest.approx(gated.branches[0].flops) and costs[-1] == pytest.approx(gated.branches[1].flops)
    out = gated.train()(torch.randn(2, *SHAPE))
    out.sum().backward()
    assert all(g.mu.grad is not None for g in gated.branch_gates)  # type: ignore[union-attr]


def _torchvision() -> Any:
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is not None:
        sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    try:
        import torchvision.models as models
    except Exception as e:  # noqa: BLE001 - any import failure of the optional package
        pytest.skip(f"torchvision is not importable here ({type(e).__name__}: {e})")
    return models


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v2"])
def test_torchvision_nets_prune_exactly_with_depth_gates(arch: str) -> None:
    models = _torchvision()
    shape = (3, 32, 32)
    width = {"mobilenet_v2": {"width_mult": 0.25}}.get(arch, {})
    net = _randomise(getattr(models, arch)(num_classes=4, **width))
    branches = plan_branches(net, shape)
    assert check_prunable(net, plan_groups(net, shape), shape, branches=branches) <= 1e-9
    # BasicBlocks, Bottlenecks, inverted residuals (width 0.25: the first block too, 8 -> 8 channels)
    expected = {"resnet18": 8, "resnet50": 16, "mobilenet_v2": 11}[arch]
    assert len(branches) == expected
    gated = GatedNet(copy.deepcopy(net), plan_groups(net, shape).gated, branches=branches).double().eval()
    with torch.no_grad():
        for k, gate in enumerate(gated.branch_gates):
            gate.logD.fill_(20.0 if k % 2 else -20.0)  # every other branch off
    result, record = prune_groups(gated, shape)
    x = torch.randn(2, *shape, dtype=torch.float64)
    with torch.no_grad():
        reference = gated(x)
        assert float((result.model(x) - reference).abs().max()) <= 1e-9 * max(1.0, float(reference.abs().max()))
    assert len([s for s in record if "branch" in s]) == expected // 2


def test_cache_keys_without_depth_gates_unchanged() -> None:
    """The ResNet-20 CPU pipeline as it was before model.depth_gates: its stage keys as computed at daecf03."""
    from vib_deploy.config import parse_config
    from vib_deploy.runs.directory import stage_key
    from vib_deploy.stages.registry import get_stage

    raw = {
        "name": "fashion-resnet20-cpu",
        "model": {"name": "resnet20"},
        "data": {"dataset": "fashion-mnist", "pad": 2, "train_limit": 12000, "val_size": 2000},
        "train": {
            "seed": 0,
            "batch_size": 128,
            "device": "cpu",
            "dense": {"epochs": 20, "patience": 4, "lr": 2.0e-3, "weight_decay": 1.0e-4},
            "vib": {"epochs": 15, "lr": 1.0e-3, "gate_lr": 3.0e-3, "kl_factor": 4.0e-4, "kl_weighting": "flops"},
            "finetune": {"epochs": 10, "lr": 3.0e-4},
        },
        "prune": {"tolerance": 1.0e-5},
        "export": {"opset": 18, "tolerance": 1.0e-4},
        "bench": {"backends": ["onnxruntime", "openvino"], "batch_sizes": [1, 64], "threads": 1, "rounds": 10},
        "quantize": {"enabled": True, "calibration_images": 300, "per_channel": True, "openvino": "nncf"},
    }
    raw["bench"]["iters_per_round"] = 10
    keys = {s: stage_key(get_stage(s).section(parse_config(raw, "t")), {}, "0") for s in ("train-dense", "train-vib")}
    assert keys == {
        "train-dense": "2d1f426d27fd75542e8dc84611f7cc6d1154e9d21874613080b124a11c7e0741",
        "train-vib": "10c10cf18853f2f4190feeb0e588c52641d0d3f60d6d10fe704f5ddb205b9cb0",
    }
    off = parse_config({**raw, "model": {"name": "resnet20", "depth_gates": False}}, "t")
    on = parse_config({**raw, "model": {"name": "resnet20", "depth_gates": True}}, "t")
    assert stage_key(get_stage("train-dense").section(off), {}, "0") == keys["train-dense"]
    assert stage_key(get_stage("train-dense").section(on), {}, "0") != keys["train-dense"]


def test_conv_count_of_a_depth_pruned_onnx_model(tmp_path) -> None:
    """The deploy matrix's convs: the exported pruned net runs fewer Conv nodes (a removed branch exports none)."""
    import numpy as np
    import onnxruntime as ort

    from vib_deploy.deploy.export import export_onnx
    from vib_deploy.report.summary import conv_count

    net = _randomise(_nets()["projection"])
    gated = _gated(copy.deepcopy(net))
    with torch.no_grad():
        gated.branch_gates[0].logD.fill_(20.0)
    result, _ = prune_groups(gated, SHAPE)
    pruned = result.model.float()
    for name, model in (("dense", net), ("pruned", pruned)):
        export_onnx(model, tmp_path / f"{name}.onnx", SHAPE, 18)
    assert conv_count(tmp_path / "dense.onnx") == 6 and conv_count(tmp_path / "pruned.onnx") == 4
    x = torch.randn(3, *SHAPE)  # another batch than the export's: the constant follows the batch
    session = ort.InferenceSession(str(tmp_path / "pruned.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert np.abs(out - pruned(x).numpy()).max() <= 1e-5
