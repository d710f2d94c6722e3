"""`train.vib.target` in the report: what was asked, what the pruned net reached, and why not when it missed."""

from __future__ import annotations

from typing import Any

from vib_deploy.records import PruneRecord, Speedup, TrainVibRecord

TOLERANCE = 0.10  # reached within ±10 % of the target


def target_outcome(vib: TrainVibRecord, prune: PruneRecord, speedups: list[Speedup], on: Any) -> dict[str, Any] | None:
    """The target's line of metrics.json (None: the run had none). FLOPs: reached = the pruned net's FLOPs over the
    dense net's (prune.json: what is shipped, round_to included); speedup: reached = the latency tables' prediction
    at the end of training (what the multiplier steered), `measured` = bench's dense/pruned p50 on `on`."""
    if vib.target is None:
        return None
    out = dict(vib.target)
    if out["kind"] == "flops":
        out["reached"] = prune.pruned.flops / prune.dense.flops
    elif on is not None:
        out["measured"] = next(
            (
                s.speedup
                for s in speedups
                if (s.backend, s.batch, s.variant, s.precision or "fp32")
                == (on.engine, on.batch, "pruned", on.precision)
            ),
            None,
        )
    out["within"] = abs(out["reached"] / out["value"] - 1) <= TOLERANCE
    out["why_not"] = None if out["within"] else _why_not(out, vib, prune)
    return out


def _why_not(out: dict[str, Any], vib: TrainVibRecord, prune: PruneRecord) -> str:
    """One phrase: why the reached cost is off the target."""
    if out["kind"] == "flops" and prune.round_to not in (None, 1) and abs(out["cost"] / out["value"] - 1) <= TOLERANCE:
        return f"VIB reached {out['cost']:.1%}; prune.round_to {prune.round_to} widened the layers"
    start, end = out["kl_factor_start"], out["kl_multiplier"]
    if out["cost"] > out["target_cost"]:  # too little pruned
        return (
            f"the net still cost more than the target after the last epoch (multiplier {end:.3g}, {end / start:.3g}x "
            "its start): more train.vib.epochs, or a larger kl_factor to start from"
        )
    return (
        f"units were pruned past the target and did not come back (multiplier {end:.3g}, {end / start:.3g}x its start): "
        "a smaller kl_factor to start from, or more train.vib.epochs"
    )


def target_row(t: dict[str, Any]) -> tuple[str, str]:
    """The final table's row: target vs reached."""
    verdict = f"within ±{TOLERANCE:.0%}" if t["within"] else f"outside ±{TOLERANCE:.0%}: {t['why_not']}"
    if t["kind"] == "flops":
        return "cost target (FLOPs of dense)", f"{t['value']:.1%} → reached {t['reached']:.1%} ({verdict})"
    measured = f", measured {t['measured']:.2f}× (bench)" if t.get("measured") is not None else ""
    return (
        f"cost target (speedup on {t['on']})",
        f"{t['value']:g}× → predicted {t['reached']:.2f}× (latency tables, gated layers){measured} ({verdict})",
    )
