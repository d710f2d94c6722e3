"""What pruning returns (`PruneResult`) and its check against the VIB model on real data (`check_exact`).

The pruned model is checked against the VIB model, or the stage fails:
- in float64 (pruning done in float64 too), which tests the algebra: max |Δlogit| <= 1e-9 x scale;
- in float32 as deployed: max |Δlogit| <= tolerance x scale, scale = max(1, max |logit|). The bound is
  relative because fp32 logits carry rounding of ~6e-8 x |logit| whatever the order of the sums: at
  |logit| = 83 one ulp is 7.6e-6, and the VIB model itself differs from its float64 twin by ~2e-5.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vib_deploy.errors import UserError


@dataclass(frozen=True)
class PruneResult:
    model: nn.Module  # full-image input (float64: cast with .float() to deploy)
    reduced_model: nn.Module | None  # input = the kept pixels only (input-gated models), float64
    kept_pixels: list[int] | None
    kept_per_gate: list[list[int]]  # indices of kept units per gate layer
    scales_left: int  # ChannelScale layers that could not be folded (negative mu before a max-pool)


MATH_TOLERANCE = 1e-9  # float64 pruned vs float64 VIB model, relative to the logit scale


@torch.no_grad()
def max_abs_diff(
    a: nn.Module, b: nn.Module, x: torch.Tensor, x_b: torch.Tensor | None = None, batch: int = 2000
) -> float:
    """max |a(x) - b(x_b or x)| over all of x, in eval mode."""
    a.eval()
    b.eval()
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
    pairs: list[tuple[str, nn.Module, torch.Tensor | None]] = [("", result.model, None)]
    if result.reduced_model is not None:
        pairs.append(("reduced_", result.reduced_model, x.flatten(1)[:, result.kept_pixels]))
    out: dict[str, Any] = {
        "tolerance": tolerance,
        "logit_scale": scale,
        "samples": len(x),
        # the VIB model's own float32 rounding (vs its float64 twin): the noise floor
        "vib_fp32_rounding": max_abs_diff(vib32, vib64, x32, x64),
    }
    for prefix, model64, x_in in pairs:
        model32 = copy.deepcopy(model64).float()
        out[f"{prefix}max_abs_diff"] = max_abs_diff(vib32, model32, x32, None if x_in is None else x_in.float())
        out[f"{prefix}max_abs_diff_float64"] = max_abs_diff(
            vib64, model64, x64, None if x_in is None else x_in.double()
        )
        agree = (model32(x32 if x_in is None else x_in.float()).argmax(1) == logits.argmax(1)).float().mean()
        out[f"{prefix}argmax_agreement"] = float(agree)
        if not out[f"{prefix}max_abs_diff_float64"] <= MATH_TOLERANCE * scale:  # also catches NaN
            raise UserError(
                f"pruned {prefix}model is not exact in float64: max |Δlogit| {out[f'{prefix}max_abs_diff_float64']:.3g} "
                f"> {MATH_TOLERANCE:g} x {scale:.3g}; this is a bug in pruning, please report it"
            )
        if not out[f"{prefix}max_abs_diff"] <= tolerance * scale:
            raise UserError(
                f"pruned {prefix}model differs from the VIB model in float32 by {out[f'{prefix}max_abs_diff']:.3g} "
                f"(> tolerance {tolerance:g} x logit scale {scale:.3g}) on {len(x)} images"
            )
    return out
