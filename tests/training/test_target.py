"""train.vib.target: the dual ascent's direction, the deterministic net's FLOPs, keys, and a tiny LeNet-300 landing."""

from __future__ import annotations

import json
import math
from typing import cast

import pytest
import torch

from tests.conftest import LENET300, ROOT, run_cli, sets
from vib_deploy.config import load_config
from vib_deploy.model.factory import build_net
from vib_deploy.model.gated import GatedNet
from vib_deploy.model.graph import plan_groups
from vib_deploy.model.layers import count_flops
from vib_deploy.model.vib import VIBGate, gates
from vib_deploy.model.zoo_names import MODULE_ZOO
from vib_deploy.prune.groups import prune_groups
from vib_deploy.stages.registry import get_stage
from vib_deploy.stages.sources import model_source
from vib_deploy.training.klweight import net_layers
from vib_deploy.training.target import RAMP, RAMP_TIME, RANGE, KLMultiplier, NetCost, dual_step, layer_flops

PIPELINE = ROOT / LENET300


def test_dual_ascent_moves_the_multiplier_the_right_way():
    """A scripted cost: above the target lambda grows, below it shrinks, at it stays; never past RANGE."""
    start, target, rate = 1e-3, 0.25, 0.1
    log_l = math.log(start)
    trace = []
    for cost in [1.0, 0.8, 0.5, 0.25, 0.2, 0.1, 0.25]:
        new = dual_step(log_l, cost, target, rate, start)
        trace.append((cost, new - log_l))
        log_l = new
    for cost, moved in trace:
        assert moved == pytest.approx(rate * math.log(cost / target))
        assert (moved > 0) == (cost > target) and (moved < 0) == (cost < target)
    assert dual_step(math.log(start), 1e6, target, 1e3, start) == pytest.approx(math.log(start) + RANGE)
    assert dual_step(math.log(start), 1e-9, target, 1e3, start) == pytest.approx(math.log(start) - RANGE)


def test_the_multiplier_ramps_its_target_and_steps_on_the_cost():
    costs = iter([1.0] * 10 + [0.1] * 10)
    now = {"cost": 1.0}

    def cost() -> float:
        return now["cost"]

    m = KLMultiplier(cost, 0.25, 1e-3, rate=0.5, steps=10, kind="flops", value=0.25)
    assert m.factor == pytest.approx(1e-3) and m.target_now() == 1.0
    factors = []
    for _ in range(20):
        now["cost"] = next(costs)
        m.step()
        factors.append(m.factor)
    assert m.target_now() == pytest.approx(0.25)  # past RAMP * steps: the target itself
    assert m.done == 20 and RAMP * 10 <= 10
    assert all(b > a for a, b in zip(factors[:9], factors[1:10]))  # cost 1 above the ramping target: grows
    assert all(b < a for a, b in zip(factors[10:], factors[11:]))  # cost 0.1 under 0.25: shrinks
    resumed = KLMultiplier(cost, 0.25, 1e-3, rate=0.5, steps=10, kind="flops", value=0.25)
    resumed.resume(m.epoch_record())
    assert resumed.factor == m.factor and resumed.done == m.done


def test_the_ramp_lasts_half_the_run_or_fifteen_gate_time_constants_whichever_is_shorter():
    """A 300-epoch run's ramp is not 150 epochs long: the masks lag by gate time constants (1 / gate_lr steps),
    and a ramp far slower than that leaves a fast-pruning net ahead of it for long enough to wind lambda down."""

    def ramp_steps(gate_lr: float, steps: int) -> int:
        m = KLMultiplier(lambda: 1.0, 0.04, 6e-4, rate=gate_lr, steps=steps, kind="flops", value=0.04)
        for done in range(steps):
            if m.target_now() == pytest.approx(0.04):
                return done
            m.step()
        return steps

    assert ramp_steps(0.05, 600) == RAMP * 600 == RAMP_TIME / 0.05  # the tiny test's run: both the same, 300
    assert ramp_steps(0.1, 600) == RAMP_TIME / 0.1  # 150: the gates' time, shorter than half the run
    assert ramp_steps(0.01, 600) == RAMP * 600  # 300: half the run, shorter than 1,500 steps of gate time
    m = KLMultiplier(lambda: 1.0, 0.04, 6e-4, rate=1e-3, steps=300 * 550, kind="flops", value=0.04)
    assert m.ramp == pytest.approx(15_000)  # the paper LeNet-300 pipeline: 27 of 300 epochs, not 150


def _kill_sequential(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in gates(model):
            dead = torch.rand(gate.units, generator=g) < 0.6
            dead[0] = False  # keep a unit per layer: the net stays prunable
            gate.mu[dead] = 1e-6


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_flops_cost_is_count_flops_of_the_pruned_net(name):
    """The cost the multiplier reads is exactly the FLOPs the prune stage's net will have (LeNets)."""
    config = load_config(PIPELINE, [f"model.name={name}"])
    source = model_source(config)
    shape = tuple(source.input_shape)
    torch.manual_seed(0)
    model = source.gated(source.dense(), 0.0)
    net = net_layers(model, shape)
    gated = sum(layer_flops(layer, layer.inputs, layer.outputs) for layer in net.layers)
    cost = NetCost(net, layer_flops, count_flops(model, shape) - gated)
    assert cost.fraction() == pytest.approx(1.0)
    _kill_sequential(model, 1)
    pruned = source.prune(model)[0].model.float()
    assert cost.total(net.alive()) == pytest.approx(count_flops(pruned, shape), rel=1e-12)


def test_flops_cost_of_a_module_net_is_count_flops_of_its_pruned_net():
    shape = (1, 32, 32)
    torch.manual_seed(0)
    net = build_net(MODULE_ZOO["resnet20"], {})
    model = GatedNet(net, plan_groups(net, shape).gated)
    layers = net_layers(model, shape)
    gated = sum(layer_flops(layer, layer.inputs, layer.outputs) for layer in layers.layers)
    cost = NetCost(layers, layer_flops, count_flops(model, shape) - gated)
    with torch.no_grad():
        for group, keep in zip(model.groups, [5, 3, 9, 7, 4, 12, 10, 6, 30, 20, 17, 25]):
            cast(VIBGate, model.gates[group.gate]).mu[keep:] = 1e-6
    assert cost.total(layers.alive()) == pytest.approx(
        count_flops(prune_groups(model, shape)[0].model.float(), shape), rel=1e-9
    )


def test_target_is_keyed_only_when_set():
    """Configs without train.vib.target keep every stage's cache key; with one only train-vib's section changes."""
    plain = load_config(PIPELINE)
    with_target = load_config(PIPELINE, ["train.vib.target.flops=0.25"])
    vib = get_stage("train-vib")
    assert "target" not in vib.section(plain)["vib"]
    assert vib.section(with_target)["vib"]["target"] == {"flops": 0.25, "speedup": None}
    for stage in ("train-dense", "prune", "finetune", "export", "bench", "report"):
        assert get_stage(stage).section(plain) == get_stage(stage).section(with_target), stage


@pytest.mark.parametrize(
    "sets_, fragment",
    [
        (["train.vib.target.flops=0.25", "train.vib.target.speedup=2"], "one of flops"),
        (["train.vib.target.speedup=3"], "needs a named deploy.target"),
        (["train.vib.target.flops=1.5"], "train.vib.target.flops"),
        (["train.vib.target.flops=0.25", "train.vib.kl_factor=0"], "kl_factor > 0"),
    ],
)
def test_bad_targets_are_refused_naming_the_key(sets_, fragment):
    from vib_deploy.errors import UserError

    with pytest.raises(UserError, match=fragment):
        load_config(PIPELINE, sets_)


# the tiny run that lands: 2,000 images (20 steps an epoch), gate_lr 0.05 so the gates move in 40 epochs about as far
# (in units of gate_lr steps: 40 * 20 * 0.05 = 40) as the default pipeline's in its 100 epochs (100 * 500 * 1e-3 = 50)
TINY_TARGET = sets(
    "data.train_limit=2000",
    "data.val_size=500",
    "data.test_limit=300",
    "train.dense.epochs=3",
    "train.dense.patience=null",
    "train.finetune.epochs=0",
    "train.vib.epochs=40",
    "train.vib.gate_lr=0.05",
    "train.vib.target.flops=0.25",
)


@pytest.mark.e2e
def test_a_flops_target_on_a_tiny_lenet300_lands_within_10_percent(tmp_path, mnist_root):
    run = tmp_path / "run"
    proc = run_cli("run", LENET300, "--run-dir", str(run), "--until", "prune", *TINY_TARGET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run / "train-vib.json").read_text())
    target = record["target"]
    assert target["kind"] == "flops" and target["value"] == 0.25
    assert abs(target["reached"] / 0.25 - 1) <= 0.10, [h["cost"] for h in record["history"]]
    history = record["history"]
    assert len(history) == 40 and all({"kl_multiplier", "cost"} <= h.keys() for h in history)
    assert history[0]["kl_multiplier"] != history[-1]["kl_multiplier"]  # the multiplier moved
    prune = json.loads((run / "prune.json").read_text())  # the pruned net has the FLOPs the multiplier read
    assert prune["pruned"]["flops"] / prune["dense"]["flops"] == pytest.approx(target["reached"], rel=1e-9)


def test_a_layer_table_interpolates_its_latency():
    from vib_deploy.measure.latency import LayerTable

    table = LayerTable((2, 4), (3, 6), ((1.0, 2.0), (3.0, 5.0)))
    assert table.latency(2, 3) == 1.0 and table.latency(4, 6) == 5.0
    assert table.latency(3, 4.5) == pytest.approx(((1.0 + 2.0) / 2 + (3.0 + 5.0) / 2) / 2)
    assert table.latency(1, 1) == 1.0  # held below the grid


def test_a_speedup_target_reads_the_tables_at_the_kept_widths(tmp_path, monkeypatch):
    """Tables whose latency is proportional to a layer's FLOPs predict the FLOPs fraction (within their grid), and
    the multiplier reports its inverse as the speedup reached."""
    from vib_deploy.measure.latency import build_tables, table_key
    from vib_deploy.training.klweight import table_requests

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    source = model_source(load_config(PIPELINE))
    torch.manual_seed(0)
    model = source.gated(source.dense(), 0.0)
    net = net_layers(model, (1, 28, 28))
    key = table_key("onnxruntime", "fp32", 64, 1, True)
    tables = build_tables(table_requests(net.layers), key, lambda shape, pairs: [2e-6 * i * o for i, o in pairs])
    latency = NetCost(net, lambda layer, n_in, n_out: tables.layers[layer.name].latency(n_in, n_out))
    flops = NetCost(net, layer_flops)
    with torch.no_grad():
        for gate, keep in zip(gates(model), (470, 180, 60)):  # within every layer's grid
            gate.mu[keep:] = 1e-6
    assert latency.fraction() == pytest.approx(flops.fraction(), rel=1e-9) and latency.fraction() < 0.5
    m = KLMultiplier(latency.fraction, 1 / 3, 1e-3, rate=0.1, steps=10, kind="speedup", value=3)
    assert m.reached() == pytest.approx(1 / flops.fraction(), rel=1e-9)


def _records(target: dict, pruned_flops: int, round_to=None):
    from vib_deploy.records import Cost, PruneRecord, TrainVibRecord

    vib = TrainVibRecord([], 1.0, 0.1, 0.1, [], [1], target=target)
    prune = PruneRecord([1], [784, 300, 100], None, 0.1, 10, Cost(1000, 1), Cost(pruned_flops, 1), round_to=round_to)
    return vib, prune


FLOPS_TARGET = {"kind": "flops", "value": 0.25, "target_cost": 0.25, "kl_multiplier": 1e-4, "kl_factor_start": 8e-4}


@pytest.mark.parametrize(
    "cost, pruned, why",
    [
        (0.24, 240, None),
        (0.10, 100, "pruned past the target"),
        (0.40, 400, "still cost more than the target"),
        (0.25, 300, "round_to"),
    ],
)
def test_the_report_says_target_vs_reached_and_why_not(cost, pruned, why):
    from vib_deploy.report.target import target_outcome, target_row

    vib, prune = _records(
        {**FLOPS_TARGET, "cost": cost, "reached": cost}, pruned, round_to=8 if why == "round_to" else None
    )
    out = target_outcome(vib, prune, [], None)
    assert out is not None and out["reached"] == pruned / 1000  # the pruned net's FLOPs, round_to included
    assert out["within"] == (why is None)
    assert (out["why_not"] is None) if why is None else why in out["why_not"]
    name, text = target_row(out)
    assert name == "cost target (FLOPs of dense)" and f"→ reached {pruned / 10:.1f}%" in text


def _target_training(run_dir, progress=None):
    """3 epochs of 2 steps of LeNet-300 with a FLOPs target on random images, checkpointed in `run_dir`."""
    from types import SimpleNamespace

    import numpy as np

    from vib_deploy.runs.directory import RunDir
    from vib_deploy.training.loop import TrainSpec, train
    from vib_deploy.zoo import gated_model

    torch.manual_seed(0)
    model = gated_model("lenet300")
    net = net_layers(model, (1, 28, 28))
    m = KLMultiplier(NetCost(net, layer_flops).fraction, 0.25, 1e-3, rate=0.5, steps=6, kind="flops", value=0.25)
    rng = np.random.default_rng(0)
    x, y = rng.random((120, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 120).astype(np.int64)
    data = SimpleNamespace(x_train=x[:100], y_train=y[:100], x_val=x[100:], y_val=y[100:])
    spec = TrainSpec(
        "train-vib", "k", 3, 1e-3, 50, 0, torch.device("cpu"), gate_lr=0.5, kl_factor=1e-3,
        kl_multiplier=m, epoch_extra=m.epoch_record,
    )  # fmt: skip
    result = train(model, spec, data, RunDir(run_dir), progress)
    return model, m, result


def test_an_interrupted_target_run_resumes_its_multiplier_exactly(tmp_path):
    from tests.conftest import InterruptAfter
    from vib_deploy.errors import UserError

    whole_model, whole, result = _target_training(tmp_path / "whole")
    assert len({h["kl_multiplier"] for h in result.history}) == 3  # it moved every epoch
    with pytest.raises(UserError, match="interrupted"):
        _target_training(tmp_path / "cut", InterruptAfter(4))  # in epoch 2: epoch 1 is checkpointed
    model, resumed, again = _target_training(tmp_path / "cut")
    assert again.resumed_from == 1
    assert resumed.factor == whole.factor and resumed.done == whole.done == 6
    assert [h["kl_multiplier"] for h in again.history] == [h["kl_multiplier"] for h in result.history]
    for a, b in zip(model.state_dict().values(), whole_model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name, sets_", [("lenet5", []), ("resnet20", ["data.pad=2"])])
def test_multiplier_for_a_zoo_and_a_module_net(name, sets_):
    """The pipeline's multiplier on a gated Sequential and on a GatedNet: cost 1 on the dense net, then the pruned
    net's FLOPs fraction (count_flops of what the prune stage cuts)."""
    from vib_deploy.training.target import multiplier_for

    config = load_config(PIPELINE, [f"model.name={name}", *sets_, "train.vib.target.flops=0.5"])
    source = model_source(config)
    shape = tuple(source.input_shape)
    torch.manual_seed(0)
    dense = source.dense()
    model = source.gated(dense, 0.0)
    m = multiplier_for(config, model, shape, steps_per_epoch=10)
    assert m is not None and (m.kind, m.target, m.value) == ("flops", 0.5, 0.5) and m.cost() == pytest.approx(1.0)
    assert m.factor == pytest.approx(config.train.vib.kl_factor)
    with torch.no_grad():
        for gate in gates(model):
            gate.mu[gate.units // 2 :] = 1e-6
    pruned = source.prune(model)[0].model.float()
    assert m.cost() == pytest.approx(count_flops(pruned, shape) / count_flops(dense, shape), rel=1e-9)
    assert multiplier_for(load_config(PIPELINE), model, shape, steps_per_epoch=10) is None
