"""The glue of each stage: read verified artifacts, call the library, write artifacts atomically.

Artifacts of a run directory (each stage writes them to `ctx.out(name)`; they move into place when it commits):
  train-dense: dense.pt, train-dense.json          train-vib: vib.pt, train-vib.json
  prune: pruned.pt, [pruned_reduced.pt], prune.json  export: *.onnx, export.json
  finetune (train.finetune.epochs > 0): finetuned.pt, [finetuned_reduced.pt], finetune.json
  bench: bench.json                                 report: metrics.json, report.md, plots/*.png
  (cpu_deploy.py) openvino: *.xml, *.bin, *.xml.json, openvino.json   quantize: *_int8.onnx, quantize.json

Export, openvino, quantize, bench (and so ship) take the deployed net, `deployed_file` (deployed.py): finetuned.pt
when the finetune stage is on, else pruned.pt; the exactness check stays in prune (pruned vs VIB).

Under torchrun every rank runs the training stages (the loop is data-parallel) and rank 0 alone writes
their artifacts; the other stages run on rank 0 only (see `pipeline.run_stage`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from vib_deploy import distributed
from vib_deploy.deployed import deployed_error, deployed_file
from vib_deploy.errors import UserError
from vib_deploy.layers import count_flops, count_params
from vib_deploy.modelfile import load_model
from vib_deploy.records import BenchFile, BenchRecord, Cost, ExactCheck, PruneRecord
from vib_deploy.runs import atomic_write_json
from vib_deploy.sources import model_source


def _error(model: torch.nn.Module, x: Any, y: Any) -> float:
    from vib_deploy.train import accuracy

    return 1.0 - accuracy(model, x, y, torch.device("cpu"))


def _spec(ctx: Any, stage: str, **kw: Any) -> Any:
    from vib_deploy.train import TrainSpec, resolve_device

    t = ctx.config.train
    return TrainSpec(
        stage=stage, key=ctx.key, batch_size=t.batch_size, seed=t.seed, device=resolve_device(t.device), amp=t.amp, **kw
    )


def train_dense(ctx: Any) -> list[str]:
    """Ordinary training of the dense net; keeps the epoch with the best validation accuracy."""
    from vib_deploy.train import train

    cfg = ctx.config.train.dense
    data = ctx.splits()
    source = model_source(ctx.config)  # checked against the data and pruned exactly before any stage ran
    torch.manual_seed(ctx.config.train.seed)
    dense = source.dense()
    t0 = time.time()
    result = train(
        dense,
        _spec(ctx, "train-dense", epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, select_best=True),
        data,
        ctx.run,
        ctx.progress,
    )
    seconds = time.time() - t0
    dense = dense.cpu()

    def write() -> list[str]:
        source.save(dense, ctx.out("dense.pt"))
        atomic_write_json(
            ctx.out("train-dense.json"),
            {
                "history": result.history,
                "best_epoch": result.best_epoch,
                "resumed_from_epoch": result.resumed_from,
                "seconds": seconds,
                "test_error": _error(dense, data.x_test, data.y_test),
                "val_error": _error(dense, data.x_val, data.y_val),
                "test_samples": len(data.y_test),
                "world_size": distributed.world_size(),
                "images_per_second": result.images_per_second,
                "preprocessing": data.preprocessing(ctx.config.data.pad),
                "epoch_seconds": result.epoch_seconds,
            },
        )
        return ["dense.pt", "train-dense.json"]

    return distributed.on_main(write)  # under torchrun the other ranks wait for rank 0's files


def train_vib(ctx: Any) -> list[str]:
    """VIB training from the dense weights; keeps the last epoch (no test-set or best-epoch selection)."""
    from vib_deploy.train import gate_summary, mask_digest, train

    cfg = ctx.config.train.vib
    data = ctx.splits()
    source = model_source(ctx.config)
    dense = load_model(ctx.run.verified("dense.pt"))  # before seeding: the gates' init draws come first after it
    torch.manual_seed(ctx.config.train.seed)
    gated = source.gated(dense, cfg.threshold)
    weighting = None
    if cfg.kl_weighting == "flops":
        from vib_deploy.klweight import FlopsWeighting

        weighting = FlopsWeighting(gated, source.input_shape)
    t0 = time.time()
    result = train(
        gated,
        _spec(
            ctx,
            "train-vib",
            epochs=cfg.epochs,
            lr=cfg.lr,
            gate_lr=cfg.gate_lr,
            kl_factor=cfg.kl_factor,
            finetune_epochs=cfg.finetune_epochs,
            kl_weighting=weighting,
            weight_decay=cfg.weight_decay,
            gate_weight_decay=cfg.weight_decay,
            schedule=cfg.schedule,
        ),
        data,
        ctx.run,
        ctx.progress,
    )
    seconds = time.time() - t0
    gated = gated.cpu()
    masks = distributed.same_on_all_ranks("gate masks", mask_digest(gated))  # what pruning will cut, from every rank

    def write() -> list[str]:
        source.save(gated, ctx.out("vib.pt"))
        atomic_write_json(
            ctx.out("train-vib.json"),
            {
                "history": result.history,
                "resumed_from_epoch": result.resumed_from,
                "seconds": seconds,
                "test_error": _error(gated, data.x_test, data.y_test),
                "val_error": _error(gated, data.x_val, data.y_val),
                "gates": gate_summary(gated),
                "architecture": source.architecture(gated),
                "world_size": distributed.world_size(),
                "images_per_second": result.images_per_second,
                "epoch_seconds": result.epoch_seconds,
                "mask_sha256_per_rank": masks,
                "kl_weighting": cfg.kl_weighting,
                **({"kl_unit_weights": weighting.weights()} if weighting else {}),  # at the final widths
            },
        )
        return ["vib.pt", "train-vib.json"]

    return distributed.on_main(write)  # under torchrun the other ranks wait for rank 0's files


def prune(ctx: Any) -> list[str]:
    """Structural pruning, checked exact against the VIB model on the full test set."""
    from vib_deploy.prune.result import check_exact

    source = model_source(ctx.config)
    shape = source.input_shape
    vib_model = load_model(ctx.run.verified("vib.pt"))
    data = ctx.splits()
    widths = _round(ctx, source, vib_model, data)  # the VIB net with looser per-gate thresholds (round_to 1: unchanged)
    result, info = source.prune(vib_model)
    exact = check_exact(result, vib_model, torch.as_tensor(data.x_test), ctx.config.prune.tolerance)
    outputs = ["pruned.pt"]
    pruned = result.model.float()
    extra = {"kept_pixels": result.kept_pixels}
    source.save(pruned, ctx.out("pruned.pt"), extra, pruning=info.get("pruning"))
    if result.reduced_model is not None:
        source.save(result.reduced_model.float(), ctx.out("pruned_reduced.pt"), extra)
        outputs.append("pruned_reduced.pt")
    dense = load_model(ctx.run.verified("dense.pt"))
    PruneRecord(
        architecture=[len(k) for k in result.kept_per_gate],
        dense_architecture=source.architecture(vib_model),
        kept_pixels=result.kept_pixels,
        test_error=_error(pruned, data.x_test, data.y_test),
        samples=exact.pop("samples"),
        dense=Cost(count_flops(dense, shape), count_params(dense)),
        pruned=Cost(count_flops(pruned, shape), count_params(pruned)),
        input_shape=tuple(shape),
        scales_left=result.scales_left,
        kept_indices=result.kept_per_gate,
        pruning=info.get("pruning"),
        exact=ExactCheck(**exact),
        **({"round_to": ctx.config.prune.round_to, "widths": widths} if ctx.config.prune.round_to != 1 else {}),
    ).write(ctx.out("prune.json"))
    return outputs + ["prune.json"] + (["widths-sweep.json"] if ctx.config.prune.round_to == "auto" else [])


def _round(ctx: Any, source: Any, vib_model: torch.nn.Module, data: Any) -> list[dict[str, Any]]:
    """prune.round_to: a fixed multiple, or `auto` (measured per layer on bench.backends[0], sweep cached)."""
    from vib_deploy.widths import auto_widths, measured_timer, round_widths

    round_to = ctx.config.prune.round_to
    if round_to != "auto":
        return round_widths(vib_model, round_to)
    from vib_deploy.backends.openvino import cpu_info
    from vib_deploy.runs import sha256_file

    backend, threads = ctx.config.bench.backends[0], ctx.config.bench.threads
    key = {
        "backend": backend,
        "threads": threads,
        "batch": 64,
        **cpu_info(),
        "vib_sha256": sha256_file(ctx.run.verified("vib.pt")),
    }
    name = "widths-sweep.json"  # the last committed sweep is the cache; the new one is staged with the stage's outputs
    old = ctx.run.read_json(name) if name in ctx.run.manifest()["artifacts"] and ctx.run.file(name).exists() else {}
    cache: dict[str, float] = old.get("times_ms", {}) if old.get("key") == key else {}
    timer = measured_timer(
        vib_model,
        lambda m: source.prune(m)[0].model.float(),
        source.input_shape,
        backend,
        data.x_train[:64],
        threads,
        cache,
    )
    widths = auto_widths(vib_model, timer, backend)
    atomic_write_json(ctx.out(name), {"key": key, "times_ms": cache})
    return widths


def finetune(ctx: Any) -> list[str]:
    """The pruned plain net trained again: fresh Adam, cosine, `train.finetune`; the best validation epoch is
    kept, the pruned weights themselves (epoch 0) included. Kept pixels (PixelSelect indices) are buffers and
    never change; the reduced-input net is this net without its PixelSelect."""
    from vib_deploy.prune.sequential import reduced_input
    from vib_deploy.train import train

    cfg = ctx.config.train.finetune
    data = ctx.splits()
    source = model_source(ctx.config)
    info = PruneRecord.read(ctx.run)
    model = load_model(ctx.run.verified("pruned.pt"))
    torch.manual_seed(ctx.config.train.seed)
    t0 = time.time()
    result = train(
        model,
        _spec(
            ctx,
            "finetune",
            epochs=cfg.epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            select_best=True,
            keep_start=True,
        ),
        data,
        ctx.run,
        ctx.progress,
    )
    seconds = time.time() - t0
    model = model.cpu().eval()

    def write() -> list[str]:
        extra = {"kept_pixels": info.kept_pixels}
        source.save(model, ctx.out("finetuned.pt"), extra, pruning=info.pruning)
        outputs = ["finetuned.pt"]
        if info.kept_pixels is not None:
            assert isinstance(model, torch.nn.Sequential)
            source.save(reduced_input(model), ctx.out("finetuned_reduced.pt"), extra)
            outputs.append("finetuned_reduced.pt")
        start = result.start_val_acc
        atomic_write_json(
            ctx.out("finetune.json"),
            {
                "epochs": cfg.epochs,
                "lr": cfg.lr,
                "weight_decay": cfg.weight_decay,
                "history": result.history,
                "best_epoch": result.best_epoch,
                "resumed_from_epoch": result.resumed_from,
                "seconds": seconds,
                "pruned_val_error": None if start is None else 1.0 - start,
                "pruned_test_error": info.test_error,
                "test_error": _error(model, data.x_test, data.y_test),
                "val_error": _error(model, data.x_val, data.y_val),
                "world_size": distributed.world_size(),
                "images_per_second": result.images_per_second,
            },
        )
        return outputs + ["finetune.json"]

    return distributed.on_main(write)


def export(ctx: Any) -> list[str]:
    """ONNX for dense, pruned (full image) and pruned_reduced (kept pixels), each checked and compared."""
    from vib_deploy.export import export_onnx, onnx_summary, parity

    cfg = ctx.config.export
    data = ctx.splits()
    x_test = data.x_test
    prune_info = PruneRecord.read(ctx.run)
    kept_pixels = prune_info.kept_pixels
    report: dict[str, Any] = {}
    outputs = []
    for variant in ("dense", "pruned", "pruned_reduced"):
        if variant == "pruned_reduced" and kept_pixels is None:
            continue
        model = load_model(ctx.run.verified(deployed_file(ctx.config, variant)))
        x = x_test
        shape: tuple[int, ...] = prune_info.input_shape
        meta = {
            "vib_deploy.variant": variant,
            "vib_deploy.run": ctx.config.name,
            "vib_deploy.preprocessing": json.dumps(data.preprocessing(ctx.config.data.pad)),
        }  # what a client does first
        if variant == "pruned_reduced":
            assert kept_pixels is not None
            x = x_test.reshape(len(x_test), -1)[:, kept_pixels]
            shape = (len(kept_pixels),)
            meta["vib_deploy.kept_pixels"] = ",".join(map(str, kept_pixels))
        path = ctx.out(f"{variant}.onnx")
        export_onnx(model, path, shape, cfg.opset, meta)
        report[variant] = {**parity(path, model, x, cfg.tolerance, cfg.min_argmax_agreement), **onnx_summary(path)}
        report[variant].pop("metadata")
        report[variant]["model_file"] = deployed_file(ctx.config, variant)
        outputs.append(f"{variant}.onnx")
    atomic_write_json(ctx.out("export.json"), report)
    return outputs + ["export.json"]


def bench(ctx: Any) -> list[str]:
    """Dense vs pruned (fp32, and int8 where asked) latency/throughput/memory per backend, alternating rounds."""
    from vib_deploy.bench import machine_info, run_bench, speedups
    from vib_deploy.memory import refuse_oversized_input

    cfg = ctx.config.bench
    images = ctx.splits().x_test[:512]
    refuse_oversized_input(cfg.batch_sizes, images.shape[1:], "bench.batch_sizes (--batch)")
    variants = bench_variants(ctx)
    records = run_bench(
        variants,
        images,
        cfg.backends,
        cfg.batch_sizes,
        cfg.threads,
        cfg.rounds,
        cfg.iters_per_round,
        cfg.warmup,
        cfg.memory,
        ctx.progress,
    )
    files = {v.name: deployed_file(ctx.config, v.name) for v in variants if v.precision == "fp32"}
    BenchFile(
        tuple(BenchRecord.from_json(r) for r in records), speedups(records), machine_info(), model_files=files
    ).write(ctx.out("bench.json"))
    return ["bench.json"]


def bench_variants(ctx: Any) -> list[Any]:
    """What the bench times: dense, pruned (and pruned_reduced) in fp32; their INT8 models when int8 is asked for."""
    from vib_deploy.bench import Variant
    from vib_deploy.cpu_deploy import QUANTIZED, int8_name

    prune_info, run = ctx.read_json("prune.json"), ctx.run
    dense_error = ctx.read_json("train-dense.json")["test_error"]
    widths = {"dense": prune_info["dense_architecture"], "pruned": prune_info["architecture"]}
    widths["pruned_reduced"] = widths["pruned"]
    names = ["dense", "pruned"] + (["pruned_reduced"] if prune_info["kept_pixels"] is not None else [])
    pruned_error = deployed_error(ctx)  # the fine-tuned net's when the finetune stage is on
    variants = [
        Variant(
            n,
            {".onnx": run.verified(f"{n}.onnx"), ".pt": run.verified(deployed_file(ctx.config, n))},
            prune_info["kept_pixels"] if n == "pruned_reduced" else None,
            "fp32",
            {"*": dense_error if n == "dense" else pruned_error},
            widths[n],
        )
        for n in names
    ]
    precisions = ctx.config.bench.precisions or (["fp32", "int8"] if ctx.config.quantize.enabled else ["fp32"])
    if "int8" in precisions:
        if "quantize" not in run.manifest()["stages"]:
            raise UserError(
                f"bench precision int8 needs the INT8 models: run `vib-deploy quantize {run.path}` first "
                "(or set quantize.enabled: true in the pipeline)"
            )
        quant = ctx.read_json("quantize.json")
        variants += [
            Variant(n, {".onnx": run.verified(int8_name(n))}, None, "int8", quant[n]["error"], widths[n])
            for n in QUANTIZED
        ]
    return [v for v in variants if v.precision in precisions]


def report(ctx: Any) -> list[str]:
    """metrics.json, report.md and plots."""
    from vib_deploy.report import write_report

    return write_report(ctx.run, ctx.config, ctx.out)
