"""Peer pruning methods at the FLOPs of a VIB result: L1-norm, network slimming, random, magnitude.

Each peer starts from the dense net of the VIB run it is compared with (the same dense.pt), is pruned
to per-layer widths whose FLOPs match the VIB model's within 2 % (`match_widths`), fine-tuned, and saved
as a plain Sequential (`pruned.pt`), so the pipeline's export and bench stages run on it unchanged.

    l1         Li et al. 2017: L1 norm of each filter/neuron's own weights (Torch-Pruning
               MagnitudeImportance(p=1, group_reduction="first")), pruned by tp.pruner.MetaPruner
    magnitude  L2 norm of each neuron's incoming weights (MagnitudeImportance(p=2, "first")), MetaPruner
    random     Torch-Pruning's RandomImportance (seeded), MetaPruner
    slimming   Liu et al. 2017 without BatchNorm: a per-unit scale (a VIBGate with its noise off, mu
               only) after each hidden ReLU, trained with CE + SLIMMING_L1 * sum |mu|; the smallest |mu|
               are pruned and the scales folded into the weights (prune.sequential.prune_sequential, checked exact)
    l1-pixels  l1, then also the input pixels whose columns of the first Linear have the smallest L1
               norm (MLPs): a Gather of the kept pixels in the graph, like VIB's input gate
    act-pixels l1, then the input pixels with the smallest |W_j|_1 * E|x_j| (column norm times the pixel's mean
               absolute value over the training images): the data-aware pixel criterion -- a never-lit pixel
               scores 0 whatever its (initial) weights
    l1-same, random-same
               l1 / random at exactly VIB's kept widths, and (MLPs with VIB's input gate) VIB's number of
               kept pixels, chosen by |W_j|_1 * E|x_j| (l1-same: the column norm alone picks never-lit pixels) or
               at random: the criterion isolated from the width allocation
    scratch    VIB's final architecture and kept pixels, re-initialised and trained from scratch for VIB's whole
               budget, dense epochs included (Liu et al., "Rethinking the Value of Network Pruning", ICLR 2019)

The other peers keep every input pixel (these methods prune hidden units and filters; the input-pixel
gate is VIB's own); FLOPs are matched on the whole model, so such a peer spends the FLOPs VIB saves on
pixels on hidden units instead. Epoch budget (`epoch_budget`): VIB's epochs after the dense stage,
B = train.vib.epochs + train.finetune.epochs (the VIB run's), all of them fine-tuning for the pruning peers; slimming spends
them as VIB does: sparsity training for train.vib.epochs, then fine-tuning for train.finetune.epochs (with the
finetune stage off, the first half of B, rounded up, then the rest); scratch trains train.dense.epochs + B. Optimiser as in the VIB stage (Adam, lr / gate_lr, cosine, batch_size);
the best validation epoch of the fine-tune is kept (the pruned weights count as epoch 0), as VIB's finetune stage does. The peer's `prune` stage itself (spec, budget, record) is studies/peer_stage.py.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.model.layers import PixelSelect, build, count_flops, describe, prunable_layers
from vib_deploy.model.vib import VIBGate, gates
from vib_deploy.prune.sequential import prune_sequential
from vib_deploy.training.loop import TrainSpec, train

FLOPS_TOLERANCE = 0.02  # |peer FLOPs / VIB FLOPs - 1|
SLIMMING_L1 = 1e-4  # Liu et al.'s sparsity weight (their 1e-4 default)


def _l1() -> Any:
    import torch_pruning as tp

    return tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first")  # pyright: ignore[reportArgumentType]  (None: no normalizing, as Torch-Pruning documents; its hint says str)


def _l2() -> Any:
    import torch_pruning as tp

    return tp.importance.MagnitudeImportance(p=2, normalizer=None, group_reduction="first")  # pyright: ignore[reportArgumentType]  (as above)


def _random() -> Any:
    import torch_pruning as tp

    return tp.importance.RandomImportance()


@dataclass(frozen=True)
class Method:
    name: str
    title: str  # for tables
    importance: Callable[[], Any] | None  # a Torch-Pruning importance (MetaPruner), or None: slimming
    pixels: bool = False  # also drop input pixels (MLPs): the first Linear's columns by the same criterion
    same_widths: bool = False  # VIB's kept widths (and pixel count) instead of widths searched to VIB's FLOPs
    scratch: bool = False  # VIB's architecture re-initialised, trained from scratch
    pixel_criterion: str = (
        "l1"  # how pixels are picked: "l1" (column norm), "activation" (|W_j|_1 * E|x_j|) or "random"
    )


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("l1", "L1-norm (Li et al. 2017)", _l1),
        Method("slimming", "network slimming (Liu et al. 2017)", None),
        Method("random", "random structured", _random),
        Method("magnitude", "magnitude neurons (L2 of incoming weights)", _l2),
        Method("l1-pixels", "L1-norm, input pixels too (MLP)", _l1, pixels=True),
        Method(
            "act-pixels",
            "L1-norm, input pixels by weight × mean input (MLP)",
            _l1,
            pixels=True,
            pixel_criterion="activation",
        ),
        Method(
            "l1-same",
            "L1-norm at VIB's kept widths (and pixel count: pixels by weight × mean input)",
            _l1,
            same_widths=True,
            pixel_criterion="activation",
        ),
        Method(
            "random-same",
            "random at VIB's kept widths (and pixel count)",
            _random,
            same_widths=True,
            pixel_criterion="random",
        ),
        Method("scratch", "VIB's architecture from scratch (Liu et al. 2019)", None, scratch=True),
    ]
}


def check_methods(names: list[str]) -> None:
    unknown = [n for n in names if n != "vib" and n not in METHODS]
    if unknown:
        raise UserError(f"--methods: unknown {', '.join(map(repr, unknown))}; choose from vib, {', '.join(METHODS)}")


# -- widths at matched FLOPs ---------------------------------------------------------------------
def dense_widths(dense: nn.Module) -> list[int]:
    """Output units of each prunable layer (all Conv2d/Linear but the last)."""
    if not isinstance(dense, nn.Sequential):
        raise UserError(
            f"the peers take a zoo LeNet (an nn.Sequential of Conv2d/Linear layers); this dense net is a "
            f"{type(dense).__name__}: compare is not available for it yet"
        )
    return [_out(layer) for _, layer in prunable_layers(dense)]


def _out(layer: nn.Module) -> int:
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels
    assert isinstance(layer, nn.Linear)
    return layer.out_features


def with_widths(dense: nn.Sequential, widths: list[int], pixels: int | None = None) -> nn.Sequential:
    """An untrained Sequential like `dense` with the prunable layers at `widths` (for counting FLOPs);
    with `pixels`, the first Linear (after the flatten) takes only that many input pixels."""
    spec = describe(dense)
    weighted = [i for i, s in enumerate(spec) if s["type"] in ("linear", "conv2d")]
    for (i, _), width in zip(prunable_layers(dense), widths):
        old = spec[i]["out"]
        spec[i]["out"] = width
        nxt = spec[next(j for j in weighted if j > i)]
        nxt["in"] = nxt["in"] // old * width  # a Linear after a flatten takes H*W inputs per channel
    if pixels is not None:
        first = weighted[0]
        if spec[first]["type"] != "linear" or first == 0 or spec[first - 1]["type"] != "flatten":
            raise UserError("pruning input pixels needs a model that starts Flatten -> Linear (an MLP)")
        spec[first]["in"] = pixels
        spec.insert(first, {"type": "select", "count": pixels})
    return build(spec)


def match_widths(
    dense: nn.Sequential,
    target_flops: int,
    input_shape: tuple[int, ...],
    tolerance: float = FLOPS_TOLERANCE,
    pixels: bool = False,
) -> list[int]:
    """Per-layer widths whose FLOPs are within `tolerance` of `target_flops`.

    1. Binary search of one scale s for all layers, widths round(s * dense width) (Li et al.'s uniform
       ratio): the largest s whose FLOPs do not exceed the target.
    2. Then, from the last prunable layer to the first, each width alone is set to the value that brings
       the FLOPs closest to the target (FLOPs grow monotonically with any one width).
    With `pixels`, the first entry is the number of input pixels kept, searched like a width.
    """
    full = ([math.prod(input_shape)] if pixels else []) + dense_widths(dense)
    cache: dict[tuple[int, ...], int] = {}

    def flops(widths: list[int]) -> int:
        key = tuple(widths)
        if key not in cache:
            model = with_widths(dense, widths[1:], widths[0]) if pixels else with_widths(dense, widths)
            cache[key] = count_flops(model, input_shape)
        return cache[key]

    def at(scale: float) -> list[int]:
        return [max(1, min(n, round(scale * n))) for n in full]

    if flops([1] * len(full)) > target_flops * (1 + tolerance):
        raise UserError(f"{target_flops:,} FLOPs is below what one unit per layer costs ({flops([1] * len(full)):,})")
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if flops(at(mid)) <= target_flops else (lo, mid)
    widths = at(lo)
    for _ in range(2):
        for i in reversed(range(len(full))):
            a, b = 1, full[i]  # largest width in [1, full] with FLOPs <= target (or 1)
            while a < b:
                m = (a + b + 1) // 2
                a, b = (m, b) if flops(widths[:i] + [m] + widths[i + 1 :]) <= target_flops else (a, m - 1)
            options = [widths[:i] + [w] + widths[i + 1 :] for w in {a, min(a + 1, full[i])}]
            widths = min(options, key=lambda ws: abs(flops(ws) - target_flops))
    miss = flops(widths) / target_flops - 1
    if abs(miss) > tolerance:
        raise UserError(f"no widths within {tolerance:.0%} of {target_flops:,} FLOPs (closest {widths}: {miss:+.1%})")
    return widths


# -- pruning -------------------------------------------------------------------------------------
def prune_to_widths(
    dense: nn.Sequential, widths: list[int], importance: Any, input_shape: tuple[int, ...]
) -> nn.Sequential:
    """Torch-Pruning's MetaPruner, one local ratio per prunable layer, so each keeps exactly its width."""
    import torch_pruning as tp

    model = copy.deepcopy(dense).cpu().float().eval()
    layers = [layer for _, layer in prunable_layers(model)]
    # MetaPruner keeps int(n * (1 - ratio)) units: +0.5 makes that exactly `width` despite float rounding
    ratios = {layer: 1 - (w + 0.5) / _out(layer) for layer, w in zip(layers, widths)}
    weighted = [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]
    pruner = tp.pruner.MetaPruner(
        model,
        torch.zeros((1,) + tuple(input_shape)),
        importance,
        pruning_ratio=0.0,
        pruning_ratio_dict=ratios,  # type: ignore[arg-type]
        ignored_layers=[weighted[-1]],
    )
    pruner.step()
    got = dense_widths(model)
    if got != list(widths):
        raise UserError(f"Torch-Pruning kept {got}, not the planned {widths}")  # e.g. tied importances
    return model


def prune_pixels(
    model: nn.Sequential, pixels: int, seed: int | None = None, mean_abs_input: torch.Tensor | None = None
) -> tuple[nn.Sequential, nn.Sequential, list[int]]:
    """Keep the `pixels` input pixels whose columns of the first Linear have the largest L1 norm, times the pixel's
    mean |x| over the training images when `mean_abs_input` (flattened, as the first Linear sees it) is given
    (with `seed`: `pixels` pixels drawn at random by a generator seeded with it).

    Returns (full-image model: Flatten -> PixelSelect -> ..., reduced model taking the kept pixels, kept indices),
    the same two deployments as a VIB model with an input gate.
    """
    import torch_pruning as tp

    model = copy.deepcopy(model)
    first = next(i for i, m in enumerate(model) if isinstance(m, nn.Linear))
    linear = model[first]
    assert isinstance(linear, nn.Linear)
    if seed is None:
        norms = linear.weight.detach().abs().sum(0)  # (in_features,)
        if mean_abs_input is not None:
            if mean_abs_input.shape != norms.shape:
                raise UserError(
                    f"pixel statistics have shape {tuple(mean_abs_input.shape)}, the first Linear takes "
                    f"{linear.in_features} inputs"
                )
            norms = norms * mean_abs_input.to(norms.dtype)
        kept = sorted(torch.topk(norms, pixels).indices.tolist())
    else:
        kept = sorted(
            torch.randperm(linear.in_features, generator=torch.Generator().manual_seed(seed))[:pixels].tolist()
        )
    dead = sorted(set(range(linear.in_features)) - set(kept))
    if dead:
        tp.prune_linear_in_channels(linear, dead)
    rest = list(model)[first:]
    full = nn.Sequential(*list(model)[:first], PixelSelect(torch.tensor(kept)), *rest).eval()
    return full, nn.Sequential(*rest).eval(), kept


def scratch_net(vib_pruned: nn.Sequential) -> nn.Sequential:
    """VIB's pruned architecture re-initialised (the zoo's default init, from the global RNG), its PixelSelect
    keeping VIB's pixels; folded gate scales (ChannelScale) are dropped: they are learned weights, not architecture."""
    model = build([s for s in describe(vib_pruned) if s["type"] != "scale"])
    selects = [m for m in vib_pruned if isinstance(m, PixelSelect)]
    for new, old in zip((m for m in model if isinstance(m, PixelSelect)), selects):
        new.indices.copy_(old.indices)
    return model


def gated_for_slimming(dense: nn.Sequential) -> nn.Sequential:
    """`dense` with a noise-free VIBGate (the per-unit scale mu) after the ReLU of each prunable layer."""
    model = copy.deepcopy(dense).cpu().float()
    prunable = {id(layer): _out(layer) for _, layer in prunable_layers(model)}
    layers: list[nn.Module] = []
    pending = None
    for layer in model:
        layers.append(layer)
        if id(layer) in prunable:
            pending = prunable[id(layer)]
        elif isinstance(layer, nn.ReLU) and pending is not None:
            gate = VIBGate(pending)
            with torch.no_grad():
                gate.mu.fill_(1.0)
                gate.logD.fill_(-1e4)  # exp(logD / 2) == 0: z = mu exactly, no noise
            gate.logD.requires_grad_(False)
            layers.append(gate)
            pending = None
    return nn.Sequential(*layers)


def prune_by_scale(
    gated: nn.Sequential, widths: list[int], input_shape: tuple[int, ...]
) -> tuple[nn.Sequential, dict[str, Any]]:
    """Keep the `widths` largest |mu| per gate, fold the scales in (prune_sequential), check exactness."""
    gated = copy.deepcopy(gated).eval()
    with torch.no_grad():
        for gate, width in zip(gates(gated), widths):
            keep = torch.zeros(gate.units, dtype=torch.bool)
            keep[torch.topk(gate.mu.abs(), width).indices] = True
            gate.mu[~keep] = 0.0
            gate.logD.copy_(torch.where(keep, torch.full_like(gate.logD, -1e4), torch.zeros_like(gate.logD)))
            gate.threshold = 0.0  # log_alpha = logD - log(mu^2 + 1e-8): -1e4 - … kept, 0 + 18.4 pruned
    result = prune_sequential(gated, input_shape)
    got = [len(k) for k in result.kept_per_gate]
    if got != list(widths):
        raise UserError(f"slimming kept {got}, not the planned {widths}")
    return cast(nn.Sequential, result.model.float().eval()), {"scales_left": result.scales_left}


def _kept_pixels(model: nn.Sequential) -> list[int]:
    return next(m for m in model if isinstance(m, PixelSelect)).indices.tolist()


# -- training ------------------------------------------------------------------------------------
def fit(
    model: nn.Sequential,
    data: Any,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    gate_lr: float | None = None,
    l1: float = 0.0,
    progress: Any = None,
    label: str = "fine-tune",
    select_best: bool = False,
) -> tuple[list[dict[str, Any]], int]:
    """`train.train` without checkpoints: Adam + cosine for `epochs`, CE (+ l1 * sum |mu| of the gates); the last
    epoch kept, or with `select_best` the best validation epoch (the starting weights count as epoch 0).

    Returns the history as peers' prune.json has always recorded it (epoch, mean loss, validation accuracy) and the
    epoch whose weights the model holds (0: the starting weights).
    """
    if epochs == 0:
        return [], 0
    spec = TrainSpec(
        stage=label,
        key="",
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        device=torch.device("cpu"),
        gate_lr=gate_lr,
        l1=l1,
        select_best=select_best,
        keep_start=select_best,
    )
    result = train(model, spec, data, None, progress)
    return [
        {"epoch": r["epoch"], "loss": r["loss"], "val_acc": r["val_acc"]} for r in result.history
    ], result.best_epoch
