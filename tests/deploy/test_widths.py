"""prune.round_to: rounded widths are multiples, never below the VIB counts nor above the dense widths, the
input-pixel gate is not rounded, and the rounded net prunes exactly against its looser-threshold VIB net."""

import pytest
import torch

from vib_deploy.deploy.widths import round_up, round_widths
from vib_deploy.errors import UserError
from vib_deploy.model.vib import gates
from vib_deploy.prune.result import check_exact
from vib_deploy.prune.sequential import prune_sequential
from vib_deploy.zoo import gated_model


def _sparse(name: str, seed: int = 0) -> torch.nn.Sequential:
    """A zoo net whose gates keep a random ~20 % of their units (log α spread around the threshold)."""
    torch.manual_seed(seed)
    model = gated_model(name).eval()
    with torch.no_grad():
        for g in gates(model):
            g.mu.copy_(torch.randn(g.units).abs() + 0.5)
            g.logD.copy_(torch.randn(g.units) * 3 - 2.5)
    return model


@pytest.mark.parametrize("name,multiple", [("lenet5", 8), ("lenet5", 16), ("lenet300", 4), ("lenet300", 16)])
def test_rounded_widths_are_multiples_and_exact(name, multiple):
    model = _sparse(name)
    vib = [int(g.keep_mask().sum()) for g in gates(model)]
    records = round_widths(model, multiple)
    kept = [int(g.keep_mask().sum()) for g in gates(model)]
    assert [r["vib"] for r in records] == vib and [r["kept"] for r in records] == kept
    for i, (g, v, k) in enumerate(zip(gates(model), vib, kept)):
        assert v <= k <= g.units
        if name == "lenet300" and i == 0:
            assert k == v and records[0]["why"].startswith("input pixels")  # pixels are not rounded
        else:
            assert k == round_up(v, multiple, g.units) and (k % multiple == 0 or k == g.units)
            # the units added back are the next-smallest log α: every kept unit's log α is below every dropped one's
            la, mask = g.log_alpha(), g.keep_mask()
            assert (~mask).sum() == 0 or la[mask].max() < la[~mask].min()
    assert kept != vib  # the seed makes some layer actually round
    shape = (1, 28, 28)
    result = prune_sequential(model, shape)
    assert [len(k) for k in result.kept_per_gate] == kept
    x = torch.rand(64, *shape)
    exact = check_exact(result, model, x, tolerance=1e-5)  # raises beyond the tolerance
    assert exact["max_abs_diff"] <= 1e-5 * exact["logit_scale"]


def test_round_to_one_changes_nothing_and_bad_values_are_refused():
    model = _sparse("lenet5")
    before = [g.threshold for g in gates(model)]
    records = round_widths(model, 1)
    assert [g.threshold for g in gates(model)] == before and all(r["vib"] == r["kept"] for r in records)
    with pytest.raises(UserError, match="prune.round_to must be one of 1, 4, 8, 16"):
        round_widths(model, 3)


def test_auto_picks_the_fastest_width_on_a_known_latency_table():
    from vib_deploy.deploy.widths import auto_widths, round_up

    model = _sparse("lenet5", seed=1)
    vib = [int(g.keep_mask().sum()) for g in gates(model)]
    asked: list[list[int]] = []

    def table(candidates):  # fake backend: a layer costs 1 ms at a multiple of 8, 2 ms otherwise, + 0.001 per unit
        asked.extend(candidates)
        return [sum(1.0 if w % 8 == 0 else 2.0 for w in c) + 0.001 * sum(c) for c in candidates]

    records = auto_widths(model, table, "fake")
    kept = [int(g.keep_mask().sum()) for g in gates(model)]
    assert (
        kept
        == [r["kept"] for r in records]
        == [min(round_up(v, 8, g.units), round_up(v, 16, g.units)) for v, g in zip(vib, gates(model))]
    )
    assert kept != vib  # this seed's VIB counts are not all multiples of 8
    for _i, (r, v, g) in enumerate(zip(records, vib, gates(model))):
        assert list(map(int, r["sweep_ms"])) == list(range(v, round_up(v, 16, g.units) + 1))  # VIB count .. next 16
        assert "fastest" in r["why"]
    assert all(c[2] == vib[2] for c in asked[: len(records[0]["sweep_ms"])])  # later layers stay at VIB while sweeping
    exact = check_exact(prune_sequential(model, (1, 28, 28)), model, torch.rand(32, 1, 28, 28), tolerance=1e-5)
    assert exact["max_abs_diff"] <= 1e-5 * exact["logit_scale"]


def test_auto_keeps_the_vib_width_on_a_tie():
    from vib_deploy.deploy.widths import auto_widths

    model = _sparse("lenet5", seed=2)
    vib = [int(g.keep_mask().sum()) for g in gates(model)]
    records = auto_widths(model, lambda cs: [1.0 + 0.01 * (sum(c) % 2) for c in cs], "fake")  # all within 3 %
    assert [r["kept"] for r in records] == vib == [int(g.keep_mask().sum()) for g in gates(model)]


def test_auto_on_a_residual_net_keeps_each_group_at_one_width_and_stays_exact():
    """On ResNet-20 each gate is a channel group (a residual stream spans several blocks): auto picks one width
    per group, every conv of the group keeps it, and the rounded net prunes exactly against its VIB net."""
    from vib_deploy.deploy.widths import auto_widths
    from vib_deploy.model.factory import build_net
    from vib_deploy.model.gated import GatedNet
    from vib_deploy.model.graph import plan_groups
    from vib_deploy.prune.groups import prune_groups
    from vib_deploy.stages.sources import MODULE_ZOO

    shape = (1, 32, 32)
    torch.manual_seed(0)
    net = build_net(MODULE_ZOO["resnet20"], {})
    gated = GatedNet(net, plan_groups(net, shape).gated).eval()
    with torch.no_grad():
        for g in gates(gated):
            g.mu.copy_(torch.randn(g.units).abs() + 0.5)
            g.logD.copy_(torch.randn(g.units) * 3 - 2.5)
    vib = [int(g.keep_mask().sum()) for g in gates(gated)]

    def table(candidates):  # an engine with 8-channel blocks: a width costs its blocks, a partial one much more
        return [sum(-(-w // 8) + (10.0 if w % 8 else 0.0) for w in c) for c in candidates]

    records = auto_widths(gated, table, "fake")
    kept = [r["kept"] for r in records]
    assert all(k % 8 == 0 or k == g.units for k, g in zip(kept, gates(gated))) and kept != vib
    assert all(v <= k for v, k in zip(vib, kept))
    result, _ = prune_groups(gated, shape)
    assert [len(k) for k in result.kept_per_gate] == kept
    convs = {n: m for n, m in result.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    for group, width in zip(gated.groups, kept):  # every conv whose outputs the group gates keeps its width
        outs = {convs[p].out_channels for p, _ in group.points if p in convs}
        assert outs <= {width}, (group, outs, width)
    exact = check_exact(result, gated, torch.rand(32, *shape), tolerance=1e-5)
    assert exact["argmax_agreement"] == 1.0


def test_auto_times_int8_candidates_quantized_as_the_quantize_stage_does(monkeypatch):
    import numpy as np

    import vib_deploy.deploy.cpu_deploy as cpu_deploy
    from vib_deploy.deploy.widths import measured_timer

    model = _sparse("lenet5")
    vib = [int(g.keep_mask().sum()) for g in gates(model)]
    quantized = []
    real = cpu_deploy.quantize_onnx
    monkeypatch.setattr(cpu_deploy, "quantize_onnx", lambda *a, **k: (quantized.append(a[0]), real(*a, **k)))
    images = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    cache: dict[str, float] = {}
    prune = lambda m: prune_sequential(m, (1, 28, 28)).model.float()  # noqa: E731
    timer = measured_timer(model, prune, (1, 28, 28), "onnxruntime", images, 1, cache, batch=4, calibration=images)
    wider = [vib[0] + 1, *vib[1:]]
    times = timer([vib, wider])
    assert len(quantized) == 2 and all(t > 0 for t in times)  # each candidate quantized, then timed
    assert set(cache) == {"-".join(map(str, vib)), "-".join(map(str, wider))}
    assert timer([wider]) == [cache["-".join(map(str, wider))]] and len(quantized) == 2  # cached: not quantized again
