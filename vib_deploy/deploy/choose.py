"""The deployment chosen for the user: the fastest pruned deployment within the error budget, against the fastest
dense one, at one batch size.

Candidates are the bench's dense and pruned deployments (every benched engine and precision; `pruned` is the
fine-tuned net where train.finetune ran). `pruned_reduced` is not a candidate: it takes the kept pixels, not the
images a client sends. A deployment is eligible when its *validation* error is within the budget, the dense fp32
net's validation error plus `deploy.max_error_increase`; test errors are reported beside it and never choose.

Validation errors: dense fp32 from train-dense, pruned fp32 from finetune (else prune, else -- runs made before
prune.json recorded it -- the VIB net's, which the pruned net equals when pruning was exact, no `round_to`); every
fp32 engine shares its net's figure (ONNX Runtime and OpenVINO agree with torch within the export parity check);
INT8 from the quantize stage, measured per engine (`deployed.int8_deployment`: on OpenVINO, NNCF's IR where
quantize.openvino is nncf). A deployment without one is left out and named in `notes`.

    auto                           the fastest eligible pruned deployment at the largest bench batch size
    <engine>-<precision>[@batch]   that engine and precision for the pruned side, at its batch, when eligible

The dense side is the fastest eligible dense deployment at the same batch whatever the target: a dense INT8 over
the budget is not eligible either, so an inaccurate dense net cannot make the pruned one look slow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vib_deploy.config import Target
from vib_deploy.deploy.deploy_matrix import ENGINE_SHORT, full_records
from vib_deploy.deploy.deployed import ROUNDING, int8_deployment
from vib_deploy.errors import UserError
from vib_deploy.measure.timing import speedup
from vib_deploy.records import RunSummary
from vib_deploy.records.summary import Deployment, DeploymentChoice
from vib_deploy.runs.directory import RunDir, atomic_write_json

CANDIDATE_VARIANTS = ("dense", "pruned")


def pruned_val_error(s: RunSummary) -> float | None:
    """The deployed pruned net's validation error (the fine-tuned net's where that stage ran)."""
    if s.finetuned is not None:
        return s.finetuned.val_error
    if s.pruned.val_error is not None:
        return s.pruned.val_error
    return s.vib.val_error if s.pruned.round_to is None else None


def val_error(s: RunSummary, variant: str, engine: str, precision: str) -> float | None:
    """Validation error of one deployment; None where the run did not record it."""
    if precision == "int8":
        q = s.quantize.variants.get(variant) if s.quantize is not None else None
        return int8_deployment(q, engine).val_error if q is not None else None
    return s.dense.val_error if variant == "dense" else pruned_val_error(s)


def candidates(s: RunSummary, batch: int) -> tuple[list[Deployment], list[str]]:
    """Every dense and pruned deployment benched at `batch` with a validation error; the others, named."""
    out: list[Deployment] = []
    missing: dict[str, list[str]] = {}  # the stage that records the validation error -> deployments without one
    for r in full_records(s):
        if r["batch"] != batch or r["variant"] not in CANDIDATE_VARIANTS:
            continue
        val = val_error(s, r["variant"], r["backend"], r["precision"])
        if val is None:
            stage = "quantize" if r["precision"] == "int8" else "prune"
            missing.setdefault(stage, []).append(f"{r['backend']} {r['precision']} {r['variant']}")
            continue
        widths = list(r["widths"] or [])
        out.append(
            Deployment(
                r["backend"], r["precision"], r["variant"], batch, r["p50_ms"], val, r["error"], widths, r["method"]
            )
        )
    notes = [
        f"not considered, no validation error recorded (the {stage} stage of this run predates it; rerun it with "
        f"--force): {', '.join(names)}"
        for stage, names in missing.items()
    ]
    return out, notes


def choose(
    s: RunSummary, target: Target | None, max_error_increase: float, batch: int | None = None
) -> DeploymentChoice:
    """The fastest pruned deployment within the budget (or the named target's) and the fastest dense one, at the
    target's batch (auto: `batch`, by default the largest bench batch size)."""
    if target is not None:
        batch = target.batch
    elif batch is None:
        batch = max((r.batch for r in s.bench), default=0)
    pool, notes = candidates(s, batch)
    budget = s.dense.val_error + max_error_increase
    eligible = [d for d in pool if d.val_error <= budget + ROUNDING]
    named = (target.engine, target.precision) if target else None
    pruned = [d for d in pool if d.variant == "pruned" and named in (None, (d.engine, d.precision))]
    chosen = _fastest([d for d in eligible if d.variant == "pruned" and named in (None, (d.engine, d.precision))])
    dense = _fastest([d for d in eligible if d.variant == "dense"])
    ratio = speedup(dense.p50_ms, chosen.p50_ms) if chosen and dense else None
    return DeploymentChoice(
        target=str(target) if target else "auto",
        batch=batch,
        max_error_increase=max_error_increase,
        dense_val_error=s.dense.val_error,
        budget=budget,
        chosen=chosen,
        best_dense=dense,
        speedup=ratio,
        ideal_speedup=s.ideal_speedup,
        measured_over_ideal=ratio / s.ideal_speedup if ratio is not None else None,
        why_none=None if chosen else _why_none(pruned, budget, target, batch),
        notes=notes,
    )


def _fastest(deployments: list[Deployment]) -> Deployment | None:
    return min(deployments, key=lambda d: d.p50_ms, default=None)


def _why_none(pruned: list[Deployment], budget: float, target: Target | None, batch: int) -> str:
    if not pruned:
        what = f"deploy.target {target}" if target else "a pruned deployment"
        return f"no {what} benched at batch {batch} with a validation error"
    best = min(pruned, key=lambda d: d.val_error)
    return (
        f"no pruned deployment within the error budget (validation error ≤ {budget:.2%}); the most accurate, "
        f"{label(best)}, has {best.val_error:.2%}"
    )


def choice_of(s: RunSummary, config: Any) -> DeploymentChoice:
    """The run's choice as metrics.json records it; made from `config` for a metrics.json made before it was."""
    return s.choice if s.choice is not None else choose(s, config.target(), config.deploy.max_error_increase)


def label(d: Deployment) -> str:
    """`OV int8 (NNCF, 2 ops kept fp32) pruned`: engine, precision, how the INT8 model was made (not QDQ), variant."""
    method = f" ({d.method})" if d.method else ""
    return f"{ENGINE_SHORT.get(d.engine, d.engine)} {d.precision}{method} {d.variant}"


def _figures(d: Deployment) -> str:
    test = f" / test {d.error:.2%}" if d.error is not None else ""
    return f"{label(d)} {d.p50_ms:.3f} ms; error val {d.val_error:.2%}{test}"


def choice_rows(c: DeploymentChoice) -> list[tuple[str, str]]:
    """The final table's rows of the choice: chosen, best dense, measured speedup of the ideal, the budget."""
    rows = [
        (f"chosen (deploy.target {c.target}, b{c.batch})", _figures(c.chosen) if c.chosen else f"none: {c.why_none}")
    ]
    if c.best_dense is not None:
        rows.append((f"best dense (b{c.batch})", _figures(c.best_dense)))
    if c.speedup is not None and c.measured_over_ideal is not None:
        rows.append(
            ("chosen speedup", f"{c.speedup:.2f}× of an ideal {c.ideal_speedup:.1f}× ({c.measured_over_ideal:.2f})")
        )
    rows.append(
        (
            "error budget (validation)",
            f"{c.dense_val_error:.2%} (dense fp32) + {c.max_error_increase * 100:.2f} pt = {c.budget:.2%}",
        )
    )
    return rows


def choice_markdown(c: DeploymentChoice) -> str:
    """report.md's section on the chosen deployment."""
    how = (
        "the fastest pruned deployment over every benched engine and precision"
        if c.target == "auto"
        else f"`deploy.target: {c.target}`"
    )
    lines = [
        "## Chosen deployment",
        "",
        f"Chosen: {how} at batch {c.batch} whose validation error is within the budget (the dense fp32 net's "
        f"{c.dense_val_error:.2%} + `deploy.max_error_increase` {c.max_error_increase:g} = {c.budget:.2%}), against "
        "the fastest dense deployment within the same budget. Validation chose; test errors are reported. "
        "`vib-deploy package` ships the chosen one as the model named after the run.",
        "",
        *(f"- {name}: {value}" for name, value in choice_rows(c)),
    ]
    if c.chosen is not None and c.chosen.engine == "openvino":
        lines.append(
            "- served by Triton's OpenVINO backend; `vib-deploy serve` (no OpenVINO backend) runs its ONNX twin "
            "(model.onnx) through onnxruntime"
        )
    lines += [f"- {n}" for n in c.notes]
    return "\n".join(lines) + "\n"


def headline_records(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """Per run and benched batch: the fastest dense and pruned deployments within the run's error budget (chosen on
    validation, any engine and precision), with TEST errors as fractions (the reported figures); best_pruned is None
    where no pruned deployment is within the budget."""
    from vib_deploy.config import read_run_config

    out = []
    for run_dir in run_dirs:
        config = read_run_config(run_dir)
        s = RunSummary.read(RunDir(Path(run_dir)))
        for batch in sorted({r.batch for r in s.bench}):
            c = choose(s, None, config.deploy.max_error_increase, batch)
            out.append(
                {
                    "run": config.name,
                    "run_dir": str(run_dir),  # the name is the pipeline's: seeds and points share it
                    "seed": config.train.seed,
                    "model": s.model,
                    "batch": batch,
                    "ideal_speedup": s.ideal_speedup,
                    "dense_fp32_error": s.dense.error,
                    "best_dense": _headline(c.best_dense, widths=False),
                    "best_pruned": _headline(c.chosen, widths=True),
                }
            )
    return out


def write_headlines(run_dirs: list[Path], out: Path) -> list[dict[str, Any]]:
    """`headline_records` of the runs, written to `out` atomically."""
    if not run_dirs:
        raise UserError("name at least one run directory")
    if Path(out).is_dir():
        raise UserError(f"--out {out} is a folder; name the JSON file to write")
    records = headline_records(run_dirs)
    atomic_write_json(out, records)
    return records


def _headline(d: Deployment | None, widths: bool) -> dict[str, Any] | None:
    if d is None:
        return None
    out = {"engine": d.engine, "precision": d.precision, "p50_ms": d.p50_ms, "error": d.error}
    return {**out, "widths": d.widths} if widths else out
