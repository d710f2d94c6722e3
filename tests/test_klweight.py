"""Cost-aware KL: per-unit weights = FLOPs per unit at the current widths, normalised to the paper's total."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from vib_deploy.config import parse_config
from vib_deploy.errors import UserError
from vib_deploy.klweight import FlopsWeighting
from vib_deploy.layers import count_flops
from vib_deploy.runs import RunDir
from vib_deploy.stages.registry import keyed_section
from vib_deploy.train import TrainSpec, train
from vib_deploy.vib import VIBGate, total_kl
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
    with pytest.raises(UserError, match="kl_weighting: flops supports the zoo LeNets"):
        parse_config(
            {
                "name": "x",
                "model": {"name": "resnet20"},
                "data": {"pad": 2},
                "train": {"vib": {"kl_weighting": "flops"}},
            },
            "t",
        )
    with pytest.raises(UserError, match="Sequential"):
        FlopsWeighting(nn.Module(), (1, 28, 28))
