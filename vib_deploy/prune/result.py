"""What pruning returns (`PruneResult`) and its check against the VIB model on real data (`check_exact`).

The pruned model is checked against the VIB model, or the stage fails:
- in float64 (pruning done in float64 too), which tests the algebra: max |Δlogit| <= 1e-9 x scale, on a fixed
  sample of 256 images evenly spaced over the test set;
- in float32 as deployed, on every image: max |Δlogit| <= tolerance x scale, scale = max(1, max |logit|). The bound is
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
from vib_deploy.training.evaluate import logits


@dataclass(frozen=True)
class PruneResult:
    model: nn.Module  # full-image input (float64: cast with .float() to deploy)
    reduced_model: nn.Module | None  # input = the kept pixels only (input-gated models), float64
    kept_pixels: list[int] | None
    kept_per_gate: list[list[int]]  # indices of kept units per gate layer
    scales_left: int  # ChannelScale layers that could not be folded (negative mu before a max-pool)


MATH_TOLERANCE = 1e-9  # float64 pruned vs float64 VIB model, relative to the logit scale


FLOAT64_SAMPLES = 256  # images of the float64 check: evenly spaced over the test set, the same every run


def float64_sample(n: int, size: int = FLOAT64_SAMPLES) -> torch.Tensor:
    """Indices of the float64 check: `size` images evenly spaced over `n` (all of them when n <= size)."""
    return torch.arange(n) if n <= size else torch.linspace(0, n - 1, size).round().long()


@torch.no_grad()
def check_exact(
    result: PruneResult, vib_model: nn.Module, x: torch.Tensor, tolerance: float, y: Any = None
) -> dict[str, Any]:
    """Compare the pruned (and reduced-input) model with the VIB model; raise if beyond bounds. With labels `y`,
    also the float32 pruned model's top-1 `error` on `x` (from the logits the check computed anyway).

    float32 (as deployed) on every image of `x`: max |Δlogit| <= tolerance x scale and the argmax agreement.
    float64 (the algebra) on `float64_sample(len(x))`: max |Δlogit| <= MATH_TOLERANCE x scale. Pruning is exact
    or not for every input alike, so a few hundred images catch an inexact unit; float64 convolutions are what
    made the whole-set check cost minutes on a net of real width.
    """
    vib32 = copy.deepcopy(vib_model).cpu().float().eval()
    vib64 = copy.deepcopy(vib_model).cpu().double().eval()
    x32 = x.float()
    sample = float64_sample(len(x))
    x64 = x[sample].double()
    vib32_logits = logits(vib32, x32, batch=100)
    scale = max(1.0, float(vib32_logits.abs().max()))
    vib64_logits = logits(vib64, x64, batch=100)
    pairs: list[tuple[str, nn.Module, torch.Tensor]] = [("", result.model, x)]
    if result.reduced_model is not None:
        pairs.append(("reduced_", result.reduced_model, x.flatten(1)[:, result.kept_pixels]))
    out: dict[str, Any] = {
        "tolerance": tolerance,
        "logit_scale": scale,
        "samples": len(x),
        "float64_samples": len(sample),
        # the VIB model's own float32 rounding (vs its float64 twin): the noise floor
        "vib_fp32_rounding": float((vib32_logits[sample].double() - vib64_logits).abs().max()),
    }
    for prefix, model64, x_in in pairs:
        model32 = copy.deepcopy(model64).float()
        pruned32 = logits(model32, x_in.float(), batch=100)
        out[f"{prefix}max_abs_diff"] = float((vib32_logits - pruned32).abs().max())
        out[f"{prefix}max_abs_diff_float64"] = float(
            (vib64_logits - logits(model64, x_in[sample].double(), batch=100)).abs().max()
        )
        out[f"{prefix}argmax_agreement"] = float((pruned32.argmax(1) == vib32_logits.argmax(1)).float().mean())
        if y is not None and not prefix:
            out["error"] = int((pruned32.argmax(1) != torch.as_tensor(y)).sum()) / len(x)  # exact, as error_of
        if not out[f"{prefix}max_abs_diff_float64"] <= MATH_TOLERANCE * scale:  # also catches NaN
            raise UserError(
                f"pruned {prefix}model is not exact in float64: max |Δlogit| {out[f'{prefix}max_abs_diff_float64']:.3g} "
                f"> {MATH_TOLERANCE:g} x {scale:.3g} on {len(sample)} images; this is a bug in pruning, please report it"
            )
        if not out[f"{prefix}max_abs_diff"] <= tolerance * scale:
            raise UserError(
                f"pruned {prefix}model differs from the VIB model in float32 by {out[f'{prefix}max_abs_diff']:.3g} "
                f"(> tolerance {tolerance:g} x logit scale {scale:.3g}) on {len(x)} images"
            )
    return out
