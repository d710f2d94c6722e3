"""Pruning is exact: random gates (negative mu included) -> a smaller plain net with equal outputs."""

import pytest
import torch
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.model.layers import ChannelScale, PixelSelect, count_flops
from vib_deploy.model.vib import VIBGate, gates
from vib_deploy.prune.result import check_exact
from vib_deploy.prune.sequential import prune_sequential
from vib_deploy.zoo import gated_model

SHAPE = (1, 28, 28)


def _randomise(model, keep_fraction, negative_fraction, seed):
    g = torch.Generator().manual_seed(seed)
    for gate in gates(model):
        with torch.no_grad():
            mu = torch.rand(gate.units, generator=g) + 0.5
            sign = torch.where(torch.rand(gate.units, generator=g) < negative_fraction, -1.0, 1.0)
            gate.mu.copy_(mu * sign)
            keep = torch.rand(gate.units, generator=g) < keep_fraction
            keep[torch.randint(gate.units, (1,), generator=g)] = True  # never an empty layer
            gate.logD.copy_(torch.where(keep, torch.tensor(-9.0), torch.tensor(4.0)))
    return model.eval()


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("negative_fraction", [0.0, 0.3])
def test_pruned_equals_gated_model(name, seed, negative_fraction):
    torch.manual_seed(seed)
    model = _randomise(gated_model(name), 0.3, negative_fraction, seed)
    result = prune_sequential(model, SHAPE)
    x = torch.rand(300, *SHAPE)
    info = check_exact(result, model, x, tolerance=1e-5)
    assert info["max_abs_diff"] <= 1e-5
    kept = [int(g.keep_mask().sum()) for g in gates(model)]
    assert [len(k) for k in result.kept_per_gate] == kept
    # a plain net: no gates left, weighted layers sized as kept
    assert not any(isinstance(m, VIBGate) for m in result.model.modules())
    weighted = [m for m in result.model if isinstance(m, (nn.Linear, nn.Conv2d))]
    outs = [m.out_features if isinstance(m, nn.Linear) else m.out_channels for m in weighted]
    assert outs[:-1] == kept[-len(outs) + 1 :]
    if negative_fraction == 0.0:
        assert result.scales_left == 0 and not any(isinstance(m, ChannelScale) for m in result.model)


def test_lenet300_input_gate_becomes_gather_and_reduced_model():
    model = _randomise(gated_model("lenet300"), 0.2, 0.3, 5)
    result = prune_sequential(model, SHAPE)
    assert isinstance(result.model[1], PixelSelect)
    assert result.kept_pixels == torch.nonzero(gates(model)[0].keep_mask()).flatten().tolist()
    x = torch.rand(100, *SHAPE)
    reduced_in = x.flatten(1)[:, result.kept_pixels]
    assert torch.allclose(result.reduced_model.float()(reduced_in), model(x), atol=1e-5)
    # FLOPs follow the kept widths exactly (2 x MACs)
    k = [len(i) for i in result.kept_per_gate]
    assert count_flops(result.model, SHAPE) == 2 * (k[0] * k[1] + k[1] * k[2] + k[2] * 10)


def test_whole_layer_dead_is_clear_error():
    model = _randomise(gated_model("lenet5"), 0.5, 0.0, 0)
    with torch.no_grad():
        gates(model)[1].logD.fill_(5.0)  # every unit of gate 2 pruned
    with pytest.raises(UserError, match="delete a whole layer: gate 2"):
        prune_sequential(model, SHAPE)


def test_check_exact_fails_loudly_on_mismatch():
    model = _randomise(gated_model("lenet300"), 0.5, 0.0, 1)
    result = prune_sequential(model, SHAPE)
    with torch.no_grad():
        result.model[2].bias.add_(1e-3)
    with pytest.raises(UserError, match="not exact in float64"):
        check_exact(result, model, torch.rand(50, *SHAPE), tolerance=1e-5)
