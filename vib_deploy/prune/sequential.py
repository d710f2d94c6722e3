"""Structural pruning of a gated Sequential (the paper's LeNets): VIB gates -> Torch-Pruning groups -> a plain, smaller Sequential.

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
4. The result is checked against the VIB model on real data (prune/result.py: `check_exact`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TypeGuard, cast

import torch
import torch_pruning as tp
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.model.layers import ChannelScale, PixelSelect
from vib_deploy.model.vib import VIBGate
from vib_deploy.prune.result import PruneResult


class _ScalePruner(tp.pruner.BasePruningFunc):
    """Teaches Torch-Pruning that a ChannelScale's channels are its inputs' channels."""

    TARGET_MODULES = ChannelScale

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        assert isinstance(layer, ChannelScale)
        keep = [i for i in range(layer.values.numel()) if i not in set(idxs)]
        layer.values = layer.values[keep].clone()
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        assert isinstance(layer, ChannelScale)
        return layer.values.numel()

    get_in_channels = get_out_channels


def _weighted(layer: nn.Module) -> TypeGuard[nn.Linear | nn.Conv2d]:
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
        assert isinstance(layer, nn.Conv2d)
        layer.weight.data *= values.reshape(1, -1, 1, 1)


def prune_sequential(vib_model: nn.Sequential, input_shape: tuple[int, ...]) -> PruneResult:
    """Remove every gated-off unit of `vib_model` and fold the gates; see the module docstring."""
    # long function: the module docstring's four steps in order, on one model and its list of masks
    model = cast(
        nn.Sequential, copy.deepcopy(vib_model).cpu().double().eval()
    )  # float64: folding adds no rounding of its own
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
        if isinstance(layer, ChannelScale) and not any(_weighted(m) for m in list(model)[:i]):
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
        model,
        example_inputs=torch.zeros((1,) + tuple(input_shape), dtype=torch.float64),
        customized_pruners={ChannelScale: pruner},
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
        scale = layers[pos]
        assert isinstance(scale, ChannelScale)
        values = scale.values
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
