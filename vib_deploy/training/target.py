"""`train.vib.target`: state the cost of the pruned net and let the KL multiplier find itself.

The VIB loss CE + lambda * KL is read as the Lagrangian of

    min CE   subject to   cost(deterministic pruned net) / cost(dense net) <= target

(Gallego-Posada et al., "Controlled Sparsity via Constrained Optimization", NeurIPS 2022): weights and gates descend
it, the multiplier lambda ascends it. `train.vib.kl_factor` is only lambda's start.

The cost is that of the net the prune stage will cut now: each gate's keep mask (log alpha < threshold) gives its
kept units, hence each Conv/Linear's widths (klweight.NetLayers, Layer.widths), and

- flops: a layer's FLOPs at widths (n_in, n_out) are flops_out * n_out * n_in / dense n_in (klweight's bilinear
  FLOPs; a depthwise conv's flops_out * n_out); the net's are the dense net's `count_flops` less what its layers
  lost, which is `count_flops` of the pruned net (tests/test_target.py checks it).
- speedup: each layer's latency on deploy.target read off its lookup table at its widths (the tables that
  `kl_weighting: latency` builds: latency.LayerTable.latency), summed; cost = that sum / the dense sum, target =
  1 / speedup. Tables, not timing the pruned net: the cost is read after every step, where a timing would take
  seconds on a CPU that trains (and be noise); the tables were timed once on the target, alone, and are cached.
  They count the gated Conv/Linear layers only, so the predicted speedup is that of those layers; the bench stage
  measures the whole net, and the report prints both.

The update, in log space, after every training step with gates trained (S steps per epoch):

    log lambda <- log lambda + ETA * gate_lr * log(cost / target now)      (starting at log kl_factor)

- Log space: the right lambda is unknown to orders of magnitude (kl_factor 1e-5 to 1e-3 across nets), which an
  additive step (lambda + eta * violation) cannot cross without a step sized per net; lambda stays positive where
  the additive form clips at 0, and tends to 0 while the cost stays under the target.
- The step scales with gate_lr: Adam moves a gate parameter by about gate_lr per step whatever the loss's scale,
  so a gate needs ~1/gate_lr steps to cross the threshold; lambda then moves at most e^(ETA * |log(cost/target)|)
  in that time, slower than the masks it reads (two time scales), and a run's epochs and batch size do not change
  how far it moves per unit of gate movement.
- The target ramps from 1 (the dense net) down to the target, geometrically, then holds. The ramp lasts RAMP of
  the steps, but no longer than RAMP_TIME gate time constants (RAMP_TIME / gate_lr steps). A VIB unit whose mu
  starts to shrink is committed long before its mask flips (the KL's pull on mu grows as mu falls), so a lambda
  stepped against a fixed target winds up while the masks lag and the net prunes far past it, and units hardly
  come back (tiny LeNet-300 runs: FLOPs 0.25 asked, 0.09 reached; with the ramp 0.24). With
  the ramp, lambda only ever has to keep the cost near a target that moves slowly: gradual pruning (Zhu & Gupta,
  2017) by a multiplier. ETA 1 landed there within 3 %; ETA 3 swung to 0.19 and back. RANGE only bounds a runaway.
  The ramp is there for the masks' lag, which is a matter of gate time constants, not of the run's length: a ramp
  of half a 300-epoch run (150 epochs) let a start near the point (LeNet-300, FLOPs 0.0359 from kl_factor 6e-4)
  prune to ~0.2 in 11 epochs while the ramp stood near 0.9; lambda, stepped down all that while against a net
  at rest (pruned units hardly return), sank to its floor, climbed back once the ramp passed the cost, wound up
  and collapsed the net (validation accuracy 98.8 % -> 89.5 %). RAMP_TIME = 15 is what the tiny test's run
  had (40 epochs x 15 steps, gate_lr 0.05: 300 steps) and leaves the shorter pipelines' ramps as they were.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from vib_deploy.training.klweight import Layer, NetLayers, net_layers, table_requests

ETA = 1.0  # per step, log lambda moves by ETA * gate_lr * log(cost / target now)
RAMP = 0.5  # the target now falls from 1 to the target over this fraction of the steps with gates trained ...
RAMP_TIME = 15.0  # ... or over this many gate time constants (RAMP_TIME / gate_lr steps), whichever is shorter
RANGE = math.log(1e4)  # log lambda stays within kl_factor / 1e4 .. kl_factor * 1e4


def dual_step(log_lambda: float, cost: float, target: float, rate: float, start: float) -> float:
    """One dual-ascent step in log space: log lambda + rate * log(cost / target), held within RANGE of log `start`.

    Above the target lambda grows, below it shrinks, at it stays."""
    moved = log_lambda + rate * math.log(max(cost, 1e-12) / target)
    return min(max(moved, math.log(start) - RANGE), math.log(start) + RANGE)


def layer_flops(layer: Layer, n_in: float, n_out: float) -> float:
    """FLOPs (2 x MACs) of `layer` at these widths: bilinear in them (a depthwise conv: linear in its one width)."""
    if layer.shape.kind == "dwconv":
        return layer.flops_out * n_out
    return layer.flops_out * n_out * n_in / layer.inputs


class NetCost:
    """The cost of the deterministic pruned net now, as a fraction of the dense net's."""

    def __init__(self, net: NetLayers, layer_cost: Callable[[Layer, float, float], float], fixed: float = 0.0):
        """`layer_cost(layer, n_in, n_out)`; `fixed`: what the layers no gate touches cost (not pruned)."""
        self.net, self.layer_cost, self.fixed = net, layer_cost, fixed
        self.dense = self.total(net.dense)

    def total(self, widths: list[int]) -> float:
        """The net's cost when its columns have `widths` channels."""
        return self.fixed + sum(
            self.layer_cost(layer, *layer.widths(self.net.dense, widths)) for layer in self.net.layers
        )

    def fraction(self) -> float:
        return self.total(self.net.alive()) / self.dense


class KLMultiplier:
    """The KL multiplier lambda of a cost target: `factor` is what multiplies the KL now, `step` updates it."""

    def __init__(
        self, cost: Callable[[], float], target: float, start: float, rate: float, steps: int, kind: str, value: float
    ):
        """`rate`: the step's gain (ETA * gate_lr); `start`: lambda's start (kl_factor); `steps`: the VIB steps
        with gates trained (the ramp lasts RAMP of them, at most RAMP_TIME * ETA / rate)."""
        self.cost, self.target, self.start, self.rate, self.steps = cost, target, start, rate, steps
        self.ramp = max(1.0, min(RAMP * steps, RAMP_TIME * ETA / rate))  # steps
        self.kind, self.value = kind, value  # as configured: flops 0.25 | speedup 3
        self.log_factor, self.done = math.log(start), 0

    def target_now(self) -> float:
        """The ramp: from the dense cost (1) down to the target, geometrically over its `ramp` steps."""
        return self.target ** min(1.0, self.done / self.ramp)

    @property
    def factor(self) -> float:
        return math.exp(self.log_factor)

    def step(self) -> None:
        """After a training step: one dual-ascent step on the cost of the net as it stands."""
        self.done += 1
        self.log_factor = dual_step(self.log_factor, self.cost(), self.target_now(), self.rate, self.start)

    def epoch_record(self, _model: nn.Module | None = None) -> dict[str, Any]:
        """What an epoch's history entry keeps: lambda, the cost now, the target now and the steps done (with
        lambda, what a resume restores)."""
        record = {"kl_multiplier": self.factor, "cost": self.cost(), "target_now": self.target_now()}
        return record | {"kl_steps": self.done, "kl_log_multiplier": self.log_factor}

    def resume(self, record: dict[str, Any]) -> None:
        """Restore from the last epoch's history entry (the checkpoint's)."""
        self.log_factor, self.done = record["kl_log_multiplier"], record["kl_steps"]

    def reached(self) -> float:
        """The cost now in the target's own terms: a FLOPs fraction, or a predicted speedup."""
        cost = self.cost()
        return cost if self.kind == "flops" else 1.0 / cost


def multiplier_for(
    config: Any,
    model: nn.Module,
    input_shape: tuple[int, ...],
    steps_per_epoch: int,
    tables_for: Callable[[list[Any]], Any] | None = None,
) -> KLMultiplier | None:
    """The multiplier of the pipeline's `train.vib.target` for the gated `model` (None: no target, kl_factor fixed);
    a speedup target reads the latency tables `tables_for` gives (bench/layer_timing.py `target_tables`)."""
    from vib_deploy.model.layers import count_flops

    vib = config.train.vib
    if vib.target is None:
        return None
    net = net_layers(model, input_shape)
    if vib.target.flops is not None:
        gated = sum(layer_flops(layer, layer.inputs, layer.outputs) for layer in net.layers)
        cost = NetCost(net, layer_flops, count_flops(model, input_shape) - gated)
        value = vib.target.flops
    else:
        if tables_for is None:
            raise ValueError("a speedup target needs the target's tables (bench.layer_timing.target_tables)")
        tables = tables_for(table_requests(net.layers))  # cached: timed once per target
        cost = NetCost(net, lambda layer, n_in, n_out: tables.layers[layer.name].latency(n_in, n_out))
        value = vib.target.speedup
    rate, steps = ETA * vib.gate_lr, (vib.epochs - vib.finetune_epochs) * steps_per_epoch
    kind, target = ("flops", value) if vib.target.flops is not None else ("speedup", 1.0 / value)
    return KLMultiplier(cost.fraction, target, vib.kl_factor, rate, steps, kind, value)
