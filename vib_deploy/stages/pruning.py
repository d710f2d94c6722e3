"""The prune stage: structural pruning of the VIB net, checked exact against it: float32 on the
whole test set, float64 on a fixed sample of it (prune/result.py).

prune: pruned.pt, [pruned_reduced.pt], prune.json, [widths-sweep.json (prune.round_to: auto)]
"""

from __future__ import annotations

from typing import Any

import torch

from vib_deploy.model.layers import count_flops, count_params
from vib_deploy.nets import load_model
from vib_deploy.records import Cost, ExactCheck, PruneRecord, WidthsSweep
from vib_deploy.stages.base import Context
from vib_deploy.stages.sources import model_source
from vib_deploy.stages.training import error_of


def prune(ctx: Context) -> list[str]:
    """Structural pruning, checked exact against the VIB model (float32: every test image; float64: 256)."""
    from vib_deploy.prune.result import check_exact

    source = model_source(ctx.config)
    shape = source.input_shape
    vib_model = load_model(ctx.run.verified("vib.pt"))
    data = ctx.splits()
    widths = _round(ctx, source, vib_model, data)  # the VIB net with looser per-gate thresholds (round_to 1: unchanged)
    result, info = source.prune(vib_model)
    exact = check_exact(result, vib_model, torch.as_tensor(data.x_test), ctx.config.prune.tolerance, data.y_test)
    outputs = ["pruned.pt"]
    pruned = result.model.float()
    extra = {"kept_pixels": result.kept_pixels}
    source.save(pruned, ctx.out("pruned.pt"), extra, pruning=info.get("pruning"))
    if result.reduced_model is not None:
        source.save(result.reduced_model.float(), ctx.out("pruned_reduced.pt"), extra)
        outputs.append("pruned_reduced.pt")
    dense = load_model(ctx.run.verified("dense.pt"))
    round_to = ctx.config.prune.round_to
    PruneRecord(
        architecture=[len(k) for k in result.kept_per_gate],
        dense_architecture=source.architecture(vib_model),
        kept_pixels=result.kept_pixels,
        test_error=exact.pop("error"),  # the float32 pruned net's, from the logits the check computed
        samples=exact.pop("samples"),
        dense=Cost(count_flops(dense, shape), count_params(dense)),
        pruned=Cost(count_flops(pruned, shape), count_params(pruned)),
        input_shape=tuple(shape),
        scales_left=result.scales_left,
        kept_indices=result.kept_per_gate,
        pruning=info.get("pruning"),
        exact=ExactCheck(**exact),
        **({"round_to": round_to, "widths": widths} if round_to != 1 else {}),
        val_error=error_of(pruned, data.x_val, data.y_val),  # what deploy.max_error_increase is checked on
    ).write(ctx.out(PruneRecord.FILE))
    return outputs + [PruneRecord.FILE] + ([WidthsSweep.FILE] if round_to == "auto" else [])


def _round(ctx: Context, source: Any, vib_model: torch.nn.Module, data: Any) -> list[dict[str, Any]]:
    """prune.round_to: a fixed multiple, or `auto` (measured per layer on deploy.target, else on bench.backends[0];
    sweep cached)."""
    from vib_deploy.deploy.cpu_deploy import calibration_images
    from vib_deploy.deploy.widths import auto_widths, measured_timer, round_widths

    round_to = ctx.config.prune.round_to
    if round_to == "block":
        return round_widths(vib_model, target_block(ctx.config), block=True)
    if round_to != "auto":
        return round_widths(vib_model, round_to)
    from vib_deploy.measure.machine import cpu_info
    from vib_deploy.runs.directory import sha256_file

    target = ctx.config.target()  # None: the first bench backend, fp32, batch 64 (as before deploy.target existed)
    backend, threads = target.engine if target else ctx.config.bench.backends[0], ctx.config.bench.threads
    batch, int8 = (target.batch, target.precision == "int8") if target else (64, False)
    key = {
        "backend": backend,
        "threads": threads,
        "batch": batch,
        **({"precision": "int8"} if int8 else {}),
        **cpu_info(),
        "vib_sha256": sha256_file(ctx.run.verified("vib.pt")),
    }
    # the last committed sweep is the cache; the new one is staged with the stage's outputs
    old = (
        WidthsSweep.read(ctx.run)
        if ctx.run.view().has(WidthsSweep.FILE) and ctx.run.file(WidthsSweep.FILE).exists()
        else None
    )
    cache: dict[str, float] = dict(old.times_ms) if old is not None and old.key == key else {}
    timer = measured_timer(
        vib_model,
        lambda m: source.prune(m)[0].model.float(),
        source.input_shape,
        backend,
        data.x_train[:64],
        threads,
        cache,
        batch,
        calibration_images(data, ctx.config.quantize.calibration_images) if int8 else None,
    )
    widths = auto_widths(vib_model, timer, str(target) if target else backend)
    WidthsSweep(key, cache).write(ctx.out(WidthsSweep.FILE))
    return widths


def target_block(config: Any) -> int:
    """prune.round_to: block: the channel block of deploy.target (else bench.backends[0], fp32, batch 64), timed once
    per target identity and cached (deploy/block.py)."""
    from vib_deploy.bench.layer_timing import onnx_measure
    from vib_deploy.deploy.block import measured_block
    from vib_deploy.measure.latency import table_key

    target = config.target()
    engine, precision, batch = (
        (target.engine, target.precision, target.batch)
        if target
        else (
            config.bench.backends[0],
            "fp32",
            64,
        )
    )
    threads, per_channel = config.bench.threads, config.quantize.per_channel
    key = table_key(engine, precision, batch, threads, per_channel)
    found = measured_block(key, onnx_measure(engine, precision, batch, threads, per_channel))
    return int(found["block"])  # prune.json's widths say it: "multiple of <block> (the target's channel block)"
