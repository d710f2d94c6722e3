"""Hardware-aware widths (`prune.round_to`): each pruned layer keeps a multiple of N units.

A gate keeps the units whose log α lies below its threshold. Rounding a layer's count k *up* to a
multiple of N (never above the dense width) raises that gate's threshold to just above the log α of
the next-smallest units: the rounded net is the VIB net with a looser per-gate threshold, its added
units carry their gate's mu like every kept unit, and the prune stage checks it exact as before.
The input-pixel gate (one before any Linear/Conv) is never rounded: pixels are not compute channels.

`auto`: per layer (first to last, each with the widths already chosen before it and the VIB counts after
it), every width from the VIB count up to the next multiple of 16 is pruned, exported and timed on the
target (`deploy.target`: engine, precision and batch; INT8 candidates quantized as the quantize stage does;
without a named target: the first of bench.backends, fp32, batch 64), all candidates alternating in the same rounds; the fastest wins, a width within
`TIE` of the fastest with fewer units wins over it. Timings are cached per (backend, CPU, VIB model)
in the run directory (`widths-sweep.json`), so a rerun measures only what is new.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.model.vib import VIBGate, gates

ROUND_TO = (1, 4, 8, 16)
AUTO_STEP = 16  # auto sweeps widths up to the next multiple of this
TIE = 0.03  # auto: within 3 % of the fastest counts as a tie, and fewer units win


def input_gates(model: nn.Module) -> set[int]:
    """Ids of gates that act on the raw input (no Linear/Conv before them in a Sequential)."""
    if not isinstance(model, nn.Sequential):
        return set()
    out = set()
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            break
        if isinstance(layer, VIBGate):
            out.add(id(layer))
    return out


def round_up(k: int, multiple: int, units: int) -> int:
    """k rounded up to a multiple of `multiple`, at most `units` (a count of 0 stays 0: the prune stage refuses it)."""
    return min(units, -(-k // multiple) * multiple)


def keep_smallest(gate: VIBGate, count: int) -> None:
    """Set the gate's threshold so that exactly its `count` smallest-log α units are kept."""
    la = torch.sort(gate.log_alpha().detach().double().flatten()).values
    if count >= len(la):
        gate.threshold = float(la[-1]) + 1.0
    elif count > 0:
        gate.threshold = float((la[count - 1] + la[count]) / 2)
    kept = {int(gate.keep_mask().sum()), int(copy.deepcopy(gate).double().keep_mask().sum())}  # prune works in float64
    if kept != {count}:  # two units with the same log α straddle the cut
        raise UserError(
            f"cannot round a gate of {gate.units} units to {count} kept units: log α ties at the cut (kept {kept})"
        )


def round_widths(model: nn.Module, multiple: int, block: bool = False) -> list[dict[str, Any]]:
    """Loosen each gate's threshold so its kept count is rounded up to `multiple`; returns one record per gate.

    `block` (prune.round_to: block, `multiple` the target's measured channel block): a gate that kept nothing stays
    at 0 where its channels all lie inside a residual branch (the branch then goes whole, prune/branches.py), else
    rounds up to one block (the prune stage would keep one channel); branch gates (one unit each) are not rounded."""
    if not block and multiple not in ROUND_TO:
        raise UserError(f"prune.round_to must be one of {', '.join(map(str, ROUND_TO))}, got {multiple!r}")
    fixed, interior, branch_gates = input_gates(model), *_branch_gates(model)
    records = []
    for i, gate in enumerate(gates(model)):
        vib = int(gate.keep_mask().sum())
        target = round_up(vib, multiple, gate.units)
        why = f"multiple of {multiple}" + (" (the target's channel block)" if block else "")
        if id(gate) in fixed or id(gate) in branch_gates:
            target, why = vib, "input pixels: not rounded" if id(gate) in fixed else "branch gate: not rounded"
        elif block and vib == 0 and id(gate) not in interior:
            target = min(multiple, gate.units)
        elif block and vib == 0:
            why = "0: inside a residual branch, which goes whole"
        if target != vib:
            keep_smallest(gate, target)
        records.append(
            {
                "gate": i + 1,
                "units": gate.units,
                "vib": vib,
                "kept": target,
                "threshold": float(gate.threshold),
                "why": why,
            }
        )
    return records


def _branch_gates(model: nn.Module) -> tuple[set[int], set[int]]:
    """Ids of a GatedNet's channel gates whose groups all lie inside one residual branch, and of its branch gates."""
    from vib_deploy.model.gated import GatedNet

    if not isinstance(model, GatedNet):
        return set(), set()
    insides = [set(b.modules) for b in model.branches]  # (without depth gates: none, so 0 rounds up to a block)
    per_gate: dict[int, list[bool]] = {}
    for g in model.groups:
        per_gate.setdefault(g.gate, []).append(any(set(g.members) <= inside for inside in insides))
    interior = {id(model.gates[k]) for k, inside in per_gate.items() if all(inside)}
    return interior, {id(b) for b in model.branch_gates}


def kept_counts(model: nn.Module) -> list[int]:
    return [int(g.keep_mask().sum()) for g in gates(model)]


def apply_widths(model: nn.Module, counts: list[int]) -> None:
    """Loosen the gates so that they keep `counts` units (each at least its VIB count)."""
    for gate, count in zip(gates(model), counts):
        if count != int(gate.keep_mask().sum()):
            keep_smallest(gate, count)


def auto_widths(
    model: nn.Module, time_widths: Callable[[list[list[int]]], list[float]], target: str
) -> list[dict[str, Any]]:
    """Choose each layer's width by measurement (see the module docstring) and apply it; one record per gate.

    `time_widths(candidates)` returns a latency per candidate width vector (lower is faster).
    """
    fixed = input_gates(model)
    vib = kept_counts(model)
    chosen = list(vib)
    records = []
    for i, gate in enumerate(gates(model)):
        record: dict[str, Any] = {"gate": i + 1, "units": gate.units, "vib": vib[i]}
        if id(gate) in fixed or vib[i] == 0:  # a gate that keeps nothing: the prune stage refuses it
            records.append(
                {**record, "kept": vib[i], "why": "input pixels: not rounded" if vib[i] else "VIB keeps no unit"}
            )
            continue
        widths = list(range(vib[i], round_up(max(vib[i], 1), AUTO_STEP, gate.units) + 1))
        times = time_widths([chosen[:i] + [w] + vib[i + 1 :] for w in widths])
        best = min(times)
        chosen[i] = min(w for w, t in zip(widths, times) if t <= best * (1 + TIE))
        fastest = widths[times.index(best)]
        why = (
            f"fastest of widths {widths[0]}-{widths[-1]} on {target}"
            if chosen[i] == fastest
            else f"{chosen[i]} within {TIE:.0%} of the fastest ({fastest}) on {target}, fewer units"
        )
        records.append({**record, "kept": chosen[i], "why": why, "sweep_ms": dict(zip(map(str, widths), times))})
    apply_widths(model, chosen)
    return records


def measured_timer(
    vib_model: nn.Module,
    prune: Callable[[nn.Module], nn.Module],
    input_shape: tuple[int, ...],
    backend: str,
    images: Any,
    threads: int,
    cache: dict[str, float],
    batch: int = 64,
    calibration: Any = None,
) -> Callable[[list[list[int]]], list[float]]:
    """A `time_widths` that prunes, exports and times each candidate on `backend` (p50 ms at `batch`), alternating.

    With `calibration` (training images), each candidate is timed as INT8: quantized exactly as the quantize stage
    does (`cpu_deploy.quantize_onnx`, QDQ, per-channel weights). `cache` maps "a-b-c" width vectors to
    milliseconds; new timings are added to it.
    """
    import tempfile
    from functools import partial
    from pathlib import Path

    import numpy as np

    from vib_deploy.backends import get_backend
    from vib_deploy.deploy.export import export_onnx
    from vib_deploy.measure.timing import alternate, percentiles

    cls = get_backend(backend)
    if cls.artifact_suffix != ".onnx":
        raise UserError(
            f"prune.round_to auto times ONNX models, but the first of bench.backends is {backend}; "
            "put onnxruntime or openvino first"
        )
    x = np.ascontiguousarray(np.concatenate([images] * (-(-batch // len(images))))[:batch], dtype=np.float32)

    def time_widths(candidates: list[list[int]]) -> list[float]:
        todo = [c for c in candidates if "-".join(map(str, c)) not in cache]
        if todo:
            with tempfile.TemporaryDirectory() as tmp:
                runners = {}
                for c in todo:
                    model = copy.deepcopy(vib_model)
                    apply_widths(model, c)
                    path = Path(tmp) / f"{'-'.join(map(str, c))}.onnx"
                    export_onnx(prune(model), path, input_shape, opset=18)
                    if calibration is not None:
                        from vib_deploy.deploy.cpu_deploy import quantize_onnx

                        quantize_onnx(path, path, calibration, per_channel=True)
                    runners["-".join(map(str, c))] = cls(path, threads).activate()
                calls = {k: partial(runner.infer, x) for k, runner in runners.items()}
                samples = alternate(calls, rounds=6, iters=10, warmup=5)
                for key, runner in runners.items():
                    cache[key] = percentiles(samples[key])["p50_ms"]
                    runner.deactivate()
        return [cache["-".join(map(str, c))] for c in candidates]

    return time_widths
