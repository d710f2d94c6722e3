"""The glue of each stage: read verified artifacts, call the library, write artifacts atomically.

Artifacts of a run directory (each stage writes them to `ctx.out(name)`; they move into place when it commits):
  train-dense: dense.pt, train-dense.json          train-vib: vib.pt, train-vib.json
  prune: pruned.pt, [pruned_reduced.pt], prune.json  export: *.onnx, export.json
  finetune (train.finetune.epochs > 0): finetuned.pt, [finetuned_reduced.pt], finetune.json
  bench: bench.json                                 report: metrics.json, report.md, plots/*.png

Export, bench (and so ship) take the deployed net, `deployed_file`: finetuned.pt when the finetune stage is
on, else pruned.pt; the exactness check stays in prune (pruned vs VIB).

Under torchrun every rank runs the training stages (the loop is data-parallel) and rank 0 alone writes
their artifacts; the other stages run on rank 0 only (see `pipeline.run_stage`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from vib_deploy import distributed
from vib_deploy.models import model_source
from vib_deploy.nets import count_flops, count_params, load_model
from vib_deploy.runs import atomic_write_json


def _error(model: torch.nn.Module, x: Any, y: Any) -> float:
    from vib_deploy.train import accuracy

    return 1.0 - accuracy(model, x, y, torch.device("cpu"))


def _spec(ctx: Any, stage: str, **kw: Any) -> Any:
    from vib_deploy.train import TrainSpec, resolve_device

    t = ctx.config.train
    return TrainSpec(stage=stage, key=ctx.key, batch_size=t.batch_size, seed=t.seed, device=resolve_device(t.device), **kw)


def train_dense(ctx: Any) -> list[str]:
    """Ordinary training of the dense net; keeps the epoch with the best validation accuracy."""
    from vib_deploy.train import train

    cfg = ctx.config.train.dense
    data = ctx.splits()
    source = model_source(ctx.config)  # checked against the data and pruned exactly before any stage ran
    torch.manual_seed(ctx.config.train.seed)
    dense = source.dense()
    t0 = time.time()
    result = train(dense, _spec(ctx, "train-dense", epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                select_best=True), data, ctx.run, ctx.progress)
    seconds = time.time() - t0
    dense = dense.cpu()

    def write() -> list[str]:
        source.save(dense, ctx.out("dense.pt"))
        atomic_write_json(ctx.out("train-dense.json"), {
            "history": result.history, "best_epoch": result.best_epoch, "resumed_from_epoch": result.resumed_from,
            "seconds": seconds, "test_error": _error(dense, data.x_test, data.y_test),
            "val_error": _error(dense, data.x_val, data.y_val), "test_samples": len(data.y_test),
            "world_size": distributed.world_size(), "images_per_second": result.images_per_second,
        })
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
    result = train(gated, _spec(ctx, "train-vib", epochs=cfg.epochs, lr=cfg.lr, gate_lr=cfg.gate_lr, kl_factor=cfg.kl_factor,
                                finetune_epochs=cfg.finetune_epochs, kl_weighting=weighting, weight_decay=cfg.weight_decay,
                                gate_weight_decay=cfg.weight_decay, schedule=cfg.schedule), data, ctx.run, ctx.progress)
    seconds = time.time() - t0
    gated = gated.cpu()
    masks = distributed.same_on_all_ranks("gate masks", mask_digest(gated))  # what pruning will cut, from every rank

    def write() -> list[str]:
        source.save(gated, ctx.out("vib.pt"))
        atomic_write_json(ctx.out("train-vib.json"), {
            "history": result.history, "resumed_from_epoch": result.resumed_from, "seconds": seconds,
            "test_error": _error(gated, data.x_test, data.y_test), "val_error": _error(gated, data.x_val, data.y_val),
            "gates": gate_summary(gated), "architecture": source.architecture(gated),
            "world_size": distributed.world_size(), "images_per_second": result.images_per_second,
            "mask_sha256_per_rank": masks, "kl_weighting": cfg.kl_weighting,
            **({"kl_unit_weights": weighting.weights()} if weighting else {}),  # at the final widths
        })
        return ["vib.pt", "train-vib.json"]

    return distributed.on_main(write)  # under torchrun the other ranks wait for rank 0's files


def prune(ctx: Any) -> list[str]:
    """Structural pruning, checked exact against the VIB model on the full test set."""
    from vib_deploy.prune import check_exact

    source = model_source(ctx.config)
    shape = source.input_shape
    vib_model = load_model(ctx.run.verified("vib.pt"))
    data = ctx.splits()
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
    kept = [len(k) for k in result.kept_per_gate]
    atomic_write_json(ctx.out("prune.json"), {
        **exact, "architecture": kept, "dense_architecture": source.architecture(vib_model),
        "kept_indices": result.kept_per_gate, "kept_pixels": result.kept_pixels, "scales_left": result.scales_left,
        "input_shape": list(shape), "pruning": info.get("pruning"),
        "test_error": _error(pruned, data.x_test, data.y_test),
        "dense": {"flops": count_flops(dense, shape), "params": count_params(dense)},
        "pruned": {"flops": count_flops(pruned, shape), "params": count_params(pruned)},
    })
    return outputs + ["prune.json"]


def deployed_file(config: Any, variant: str) -> str:
    """The model file a variant ("dense", "pruned", "pruned_reduced") is exported and timed from."""
    if variant == "dense":
        return "dense.pt"
    return variant.replace("pruned", "finetuned" if config.train.finetune.epochs > 0 else "pruned", 1) + ".pt"


def finetune(ctx: Any) -> list[str]:
    """The pruned plain net trained again: fresh Adam, cosine, `train.finetune`; the best validation epoch is
    kept, the pruned weights themselves (epoch 0) included. Kept pixels (PixelSelect indices) are buffers and
    never change; the reduced-input net is this net without its PixelSelect."""
    from vib_deploy.prune import reduced_input
    from vib_deploy.train import train

    cfg = ctx.config.train.finetune
    data = ctx.splits()
    source = model_source(ctx.config)
    info = ctx.read_json("prune.json")
    model = load_model(ctx.run.verified("pruned.pt"))
    torch.manual_seed(ctx.config.train.seed)
    t0 = time.time()
    result = train(model, _spec(ctx, "finetune", epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                select_best=True, keep_start=True), data, ctx.run, ctx.progress)
    seconds = time.time() - t0
    model = model.cpu().eval()

    def write() -> list[str]:
        extra = {"kept_pixels": info["kept_pixels"]}
        source.save(model, ctx.out("finetuned.pt"), extra, pruning=info.get("pruning"))
        outputs = ["finetuned.pt"]
        if info["kept_pixels"] is not None:
            assert isinstance(model, torch.nn.Sequential)
            source.save(reduced_input(model), ctx.out("finetuned_reduced.pt"), extra)
            outputs.append("finetuned_reduced.pt")
        start = result.start_val_acc
        atomic_write_json(ctx.out("finetune.json"), {
            "epochs": cfg.epochs, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "history": result.history,
            "best_epoch": result.best_epoch, "resumed_from_epoch": result.resumed_from, "seconds": seconds,
            "pruned_val_error": None if start is None else 1.0 - start, "pruned_test_error": info["test_error"],
            "test_error": _error(model, data.x_test, data.y_test), "val_error": _error(model, data.x_val, data.y_val),
            "world_size": distributed.world_size(), "images_per_second": result.images_per_second,
        })
        return outputs + ["finetune.json"]

    return distributed.on_main(write)


def export(ctx: Any) -> list[str]:
    """ONNX for dense, pruned (full image) and pruned_reduced (kept pixels), each checked and compared."""
    from vib_deploy.export import export_onnx, onnx_summary, parity

    cfg = ctx.config.export
    data = ctx.splits()
    x_test = data.x_test
    prune_info = ctx.read_json("prune.json")
    report: dict[str, Any] = {}
    outputs = []
    for variant in ("dense", "pruned", "pruned_reduced"):
        if variant == "pruned_reduced" and prune_info["kept_pixels"] is None:
            continue
        model = load_model(ctx.run.verified(deployed_file(ctx.config, variant)))
        x = x_test
        shape: tuple[int, ...] = tuple(prune_info.get("input_shape", (1, 28, 28)))
        meta = {"vib_deploy.variant": variant, "vib_deploy.run": ctx.config.name}
        if variant == "pruned_reduced":
            x = x_test.reshape(len(x_test), -1)[:, prune_info["kept_pixels"]]
            shape = (len(prune_info["kept_pixels"]),)
            meta["vib_deploy.kept_pixels"] = ",".join(map(str, prune_info["kept_pixels"]))
        path = ctx.out(f"{variant}.onnx")
        export_onnx(model, path, shape, cfg.opset, meta)
        report[variant] = {**parity(path, model, x, cfg.tolerance, cfg.min_argmax_agreement), **onnx_summary(path)}
        report[variant].pop("metadata")
        report[variant]["model_file"] = deployed_file(ctx.config, variant)
        outputs.append(f"{variant}.onnx")
    atomic_write_json(ctx.out("export.json"), report)
    return outputs + ["export.json"]


def bench(ctx: Any) -> list[str]:
    """Dense vs pruned latency/throughput/memory on each configured backend, alternating rounds."""
    from vib_deploy.bench import Variant, machine_info, run_bench, speedups

    cfg = ctx.config.bench
    prune_info = ctx.read_json("prune.json")
    run = ctx.run
    names = ["dense", "pruned"] + (["pruned_reduced"] if prune_info["kept_pixels"] is not None else [])
    files = {name: deployed_file(ctx.config, name) for name in names}
    variants = [Variant(name, {".onnx": run.verified(f"{name}.onnx"), ".pt": run.verified(files[name])},
                        prune_info["kept_pixels"] if name == "pruned_reduced" else None) for name in names]
    images = ctx.splits().x_test[:512]
    records = run_bench(variants, images, cfg.backends, cfg.batch_sizes, cfg.threads, cfg.rounds, cfg.iters_per_round,
                        cfg.warmup, cfg.memory, ctx.progress)
    atomic_write_json(ctx.out("bench.json"), {"records": records, "speedup": speedups(records), "machine": machine_info(),
                                              "model_files": files})
    return ["bench.json"]


def report(ctx: Any) -> list[str]:
    """metrics.json, report.md and plots."""
    from vib_deploy.report import write_report

    return write_report(ctx.run, ctx.config, ctx.out)
