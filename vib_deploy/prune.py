"""Structural pruning: VIB gates -> Torch-Pruning dependency groups -> a plain, smaller Sequential.

1. Each gate becomes a fixed ChannelScale holding its inference value z = mu * 1[log_alpha < θ]
   (the model is now exactly the VIB model in eval mode).
2. Dead units are removed with Torch-Pruning's DependencyGraph: pruning a scale's channels removes
   the producing layer's outputs (and BN) and the consumer's inputs, through pools and flattens.
3. The kept values are folded away where that is exact:
   - z > 0 folds back into the producer (relu(a) * z = relu(z * a), and max-pool commutes with z > 0);
   - z < 0 folds forward into the consumer when only flatten lies between; otherwise (a max-pool in
     between, max(z*h) != z*max(h)) the channel keeps a ChannelScale;
   - input-pixel gates fold forward into the first Linear, and the kept pixels become a Gather
     (PixelSelect) so the model still takes the full image.
4. The result is checked against the VIB model on real data, or the stage fails:
   - in float64 (pruning done in float64 too), which tests the algebra: max |Δlogit| <= 1e-9 x scale;
   - in float32 as deployed: max |Δlogit| <= tolerance x scale, scale = max(1, max |logit|). The bound is
     relative because fp32 logits carry rounding of ~6e-8 x |logit| whatever the order of the sums: at
     |logit| = 83 one ulp is 7.6e-6, and the VIB model itself differs from its float64 twin by ~2e-5.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch_pruning as tp
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.nets import ChannelScale, PixelSelect
from vib_deploy.vib import VIBGate


class _ScalePruner(tp.pruner.BasePruningFunc):
    """Teaches Torch-Pruning that a ChannelScale's channels are its inputs' channels."""

    TARGET_MODULES = ChannelScale

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = [i for i in range(layer.values.numel()) if i not in set(idxs)]
        layer.values = layer.values[keep].clone()
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.values.numel()

    get_in_channels = get_out_channels


@dataclass(frozen=True)
class PruneResult:
    model: nn.Module  # full-image input (float64: cast with .float() to deploy)
    reduced_model: nn.Module | None  # input = the kept pixels only (input-gated models), float64
    kept_pixels: list[int] | None
    kept_per_gate: list[list[int]]  # indices of kept units per gate layer
    scales_left: int  # ChannelScale layers that could not be folded (negative mu before a max-pool)


def _weighted(layer: nn.Module) -> bool:
    return isinstance(layer, (nn.Linear, nn.Conv2d))


def _fold_backward(model: nn.Sequential, at: int, values: torch.Tensor) -> None:
    """Scale the producer's output channels (BN if present, else the conv/linear) by `values`."""
    for j in range(at - 1, -1, -1):
        layer = model[j]
        if isinstance(layer, nn.BatchNorm2d):
            layer.weight.data *= values
            layer.bias.data *= values
            return
        if _weighted(layer):
            shape = (-1,) + (1,) * (layer.weight.dim() - 1)
            layer.weight.data *= values.reshape(shape)
            if layer.bias is not None:
                layer.bias.data *= values
            return
    raise AssertionError("a gate without a producing layer must be an input gate")


def _consumer_if_linear_path(model: nn.Sequential, at: int) -> int | None:
    """Index of the next weighted layer if only Flatten/PixelSelect lie between, else None."""
    for j in range(at + 1, len(model)):
        layer = model[j]
        if _weighted(layer):
            return j
        if not isinstance(layer, (nn.Flatten, PixelSelect)):
            return None
    return None


def _fold_forward(model: nn.Sequential, consumer: int, values: torch.Tensor) -> None:
    """Scale the consumer's input channels by `values` (Linear after a flatten: each channel's columns)."""
    layer = model[consumer]
    if isinstance(layer, nn.Linear):
        per_channel = layer.in_features // values.numel()
        layer.weight.data *= values.repeat_interleave(per_channel).unsqueeze(0)
    else:
        layer.weight.data *= values.reshape(1, -1, 1, 1)


def prune_gated(vib_model: nn.Sequential, input_shape: tuple[int, ...]) -> PruneResult:
    """Remove every gated-off unit of `vib_model` and fold the gates; see the module docstring."""
    model = copy.deepcopy(vib_model).cpu().double().eval()  # float64: folding adds no rounding of its own
    masks: list[torch.Tensor] = []
    for i, layer in enumerate(model):
        if isinstance(layer, VIBGate):
            mask = layer.keep_mask().detach()
            if not bool(mask.any()):
                raise UserError(
                    f"pruning would delete a whole layer: gate {len(masks) + 1} (model layer {i}, {layer.units} units) "
                    "keeps no unit; lower train.vib.kl_factor"
                )
            masks.append(mask)
            model[i] = ChannelScale(layer.inference_scale().detach())
    # An input gate (no weighted layer before it) folds forward into the first layer, whose dead input
    # columns are removed; the kept pixels become a Gather. It has no producer for the graph to follow.
    kept_pixels = None
    for i, layer in enumerate(model):
        if isinstance(layer, ChannelScale) and not any(_weighted(m) for m in model[:i]):
            consumer = _consumer_if_linear_path(model, i)
            if consumer is None or not isinstance(model[consumer], nn.Linear):
                raise UserError(f"input gate at layer {i} must feed a Linear layer through flatten only")
            _fold_forward(model, consumer, layer.values)
            kept_pixels = torch.nonzero(masks[0]).flatten().tolist()
            dead = torch.nonzero(~masks[0]).flatten().tolist()
            if dead:
                tp.prune_linear_in_channels(model[consumer], dead)
            model[i] = PixelSelect(torch.tensor(kept_pixels))
    gate_masks = masks[1:] if kept_pixels is not None else masks

    pruner = _ScalePruner()
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=torch.zeros((1,) + tuple(input_shape), dtype=torch.float64), customized_pruners={ChannelScale: pruner}
    )
    scale_positions = [i for i, m in enumerate(model) if isinstance(m, ChannelScale)]
    for pos, mask in zip(scale_positions, gate_masks):
        dead = torch.nonzero(~mask).flatten().tolist()
        if dead:
            graph.get_pruning_group(model[pos], pruner.prune_out_channels, idxs=dead).prune()

    layers: list[nn.Module] = list(model)
    scales_left = 0
    for pos in scale_positions:
        seq = nn.Sequential(*layers)
        values = layers[pos].values
        positive = values > 0
        _fold_backward(seq, pos, torch.where(positive, values, torch.ones_like(values)))
        rest = torch.where(positive, torch.ones_like(values), values)
        consumer = _consumer_if_linear_path(seq, pos)
        if bool(positive.all()):
            layers[pos] = nn.Identity()
        elif consumer is not None:
            _fold_forward(seq, consumer, rest)
            layers[pos] = nn.Identity()
        else:
            layers[pos] = ChannelScale(rest)
            scales_left += 1
    pruned = nn.Sequential(*(m for m in layers if not isinstance(m, nn.Identity))).eval()

    reduced = reduced_input(pruned) if kept_pixels is not None else None
    kept = [torch.nonzero(m).flatten().tolist() for m in masks]
    return PruneResult(pruned, reduced, kept_pixels, kept, scales_left)


def reduced_input(pruned: nn.Sequential) -> nn.Sequential:
    """The layers after `pruned`'s PixelSelect (shared, not copied): the net that takes only the kept pixels."""
    select_at = next(i for i, m in enumerate(pruned) if isinstance(m, PixelSelect))
    return nn.Sequential(*list(pruned)[select_at + 1 :]).eval()


MATH_TOLERANCE = 1e-9  # float64 pruned vs float64 VIB model, relative to the logit scale


@torch.no_grad()
def max_abs_diff(a: nn.Module, b: nn.Module, x: torch.Tensor, x_b: torch.Tensor | None = None, batch: int = 2000) -> float:
    """max |a(x) - b(x_b or x)| over all of x, in eval mode."""
    a.eval(), b.eval()
    x_b = x if x_b is None else x_b
    worst = 0.0
    for i in range(0, len(x), batch):
        worst = max(worst, float((a(x[i : i + batch]) - b(x_b[i : i + batch])).abs().max()))
    return worst


@torch.no_grad()
def check_exact(result: PruneResult, vib_model: nn.Module, x: torch.Tensor, tolerance: float) -> dict[str, Any]:
    """Compare the pruned (and reduced-input) model with the VIB model in float64 and float32; raise if beyond bounds."""
    vib32 = copy.deepcopy(vib_model).cpu().float().eval()
    vib64 = copy.deepcopy(vib_model).cpu().double().eval()
    x32, x64 = x.float(), x.double()
    logits = torch.cat([vib32(x32[i : i + 2000]) for i in range(0, len(x32), 2000)])
    scale = max(1.0, float(logits.abs().max()))
    pairs = [("", result.model, None)]
    if result.reduced_model is not None:
        pairs.append(("reduced_", result.reduced_model, x.flatten(1)[:, result.kept_pixels]))
    out: dict[str, Any] = {"tolerance": tolerance, "logit_scale": scale, "samples": len(x),
                           
                           # the VIB model's own float32 rounding (vs its float64 twin): the noise floor
                           "vib_fp32_rounding": max_abs_diff(vib32, vib64, x32, x64)}
    for prefix, model64, x_in in pairs:
        model32 = copy.deepcopy(model64).float()
        out[f"{prefix}max_abs_diff"] = max_abs_diff(vib32, model32, x32, None if x_in is None else x_in.float())
        out[f"{prefix}max_abs_diff_float64"] = max_abs_diff(vib64, model64, x64, None if x_in is None else x_in.double())
        agree = (model32(x32 if x_in is None else x_in.float()).argmax(1) == logits.argmax(1)).float().mean()
        out[f"{prefix}argmax_agreement"] = float(agree)
        if not out[f"{prefix}max_abs_diff_float64"] <= MATH_TOLERANCE * scale:  # also catches NaN
            raise UserError(f"pruned {prefix}model is not exact in float64: max |Δlogit| {out[f'{prefix}max_abs_diff_float64']:.3g} "
                            f"> {MATH_TOLERANCE:g} x {scale:.3g}; this is a bug in pruning, please report it")
        if not out[f"{prefix}max_abs_diff"] <= tolerance * scale:
            raise UserError(f"pruned {prefix}model differs from the VIB model in float32 by {out[f'{prefix}max_abs_diff']:.3g} "
                            f"(> tolerance {tolerance:g} x logit scale {scale:.3g}) on {len(x)} images")
    return out
