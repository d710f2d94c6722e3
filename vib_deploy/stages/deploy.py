"""The export and bench stages, over the run's deployable variants (`deployed.deployables`).

export: dense.onnx, pruned.onnx, [pruned_reduced.onnx], export.json        bench: bench.json
"""

from __future__ import annotations

import json
from typing import Any

from vib_deploy.deploy.deployed import deployables, int8_deployment
from vib_deploy.errors import UserError
from vib_deploy.nets import load_model
from vib_deploy.records import (
    BenchFile,
    BenchRecord,
    ExportedModel,
    ExportRecord,
    QuantizedModel,
    QuantizeRecord,
    Speedup,
)
from vib_deploy.stages.base import Context


def export(ctx: Context) -> list[str]:
    """ONNX for dense, pruned (full image) and pruned_reduced (kept pixels), each checked and compared."""
    from vib_deploy.deploy.export import export_onnx, onnx_summary, parity

    cfg = ctx.config.export
    data = ctx.splits()
    models: dict[str, ExportedModel] = {}
    for d in deployables(ctx.run, ctx.config):
        model = load_model(ctx.run.verified(d.model_file))
        meta = {
            "vib_deploy.variant": d.name,
            "vib_deploy.run": ctx.config.name,
            "vib_deploy.preprocessing": json.dumps(data.preprocessing(ctx.config.data.pad)),
        }  # what a client does first
        if d.kept_pixels is not None:
            meta["vib_deploy.kept_pixels"] = ",".join(map(str, d.kept_pixels))
        path = ctx.out(d.onnx)
        export_onnx(model, path, d.input_shape, cfg.opset, meta)
        summary = onnx_summary(path)
        summary.pop("metadata")
        check = parity(path, model, d.inputs(data.x_test), cfg.tolerance, cfg.min_argmax_agreement)
        models[d.name] = ExportedModel.from_json({**check, **summary, "model_file": d.model_file})
    ExportRecord(models).write(ctx.out(ExportRecord.FILE))
    return [f"{name}.onnx" for name in models] + [ExportRecord.FILE]


def bench(ctx: Context) -> list[str]:
    """Dense vs pruned (fp32, and int8 where asked) latency/throughput/memory per backend, alternating rounds."""
    from vib_deploy.bench.inprocess import machine_info, run_bench, speedups
    from vib_deploy.measure.memory import refuse_oversized_input

    cfg = ctx.config.bench
    images = ctx.splits().x_test[:512]
    refuse_oversized_input(cfg.batch_sizes, images.shape[1:], "bench.batch_sizes (--batch)")
    variants = bench_variants(ctx)
    records = run_bench(
        variants,
        images,
        list[str](cfg.backends),
        cfg.batch_sizes,
        cfg.threads,
        cfg.rounds,
        cfg.iters_per_round,
        cfg.warmup,
        cfg.memory,
        ctx.progress,
    )
    files = {d.name: d.model_file for d in deployables(ctx.run, ctx.config)}
    files = {v.name: files[v.name] for v in variants if v.precision == "fp32"}
    BenchFile(
        tuple(BenchRecord.from_json(r) for r in records),
        tuple(Speedup.from_json(s) for s in speedups(records)),
        machine_info(),
        model_files=files,
    ).write(ctx.out(BenchFile.FILE))
    return [BenchFile.FILE]


def bench_variants(ctx: Context) -> list[Any]:
    """What the bench times: dense, pruned (and pruned_reduced) in fp32; their INT8 models when int8 is asked for."""
    from vib_deploy.bench.inprocess import Variant
    from vib_deploy.deploy.cpu_deploy import QUANTIZED

    run = ctx.run
    deployed = deployables(run, ctx.config)
    variants = [
        Variant(
            d.name,
            {".onnx": run.verified(d.onnx), ".pt": run.verified(d.model_file)},
            d.kept_pixels,
            "fp32",
            {"*": d.error},
            d.widths,
        )
        for d in deployed
    ]
    precisions = ctx.config.bench.precisions or (["fp32", "int8"] if ctx.config.quantize.enabled else ["fp32"])
    if "int8" in precisions:
        if not run.view().ran("quantize"):
            raise UserError(
                f"bench precision int8 needs the INT8 models: run `vib-deploy quantize {run.path}` first "
                "(or set quantize.enabled: true in the pipeline)"
            )
        quant = QuantizeRecord.read(run).variants
        widths = {d.name: d.widths for d in deployed}
        variants += [int8_variant(run, n, quant[n], widths[n]) for n in QUANTIZED]
    return [v for v in variants if v.precision in precisions]


def int8_variant(run: Any, name: str, q: QuantizedModel, widths: list[int]) -> Any:
    """A variant's INT8 models to time: the QDQ ONNX, and on OpenVINO NNCF's IR where the quantize stage made one."""
    from vib_deploy.bench.inprocess import Variant
    from vib_deploy.deploy.cpu_deploy import int8_name

    ov = int8_deployment(q, "openvino")
    own = {"openvino": run.verified(ov.file)} if ov.method else {}  # an engine's own file before the ONNX one
    errors = {engine: e for engine in q.error if (e := int8_deployment(q, engine).error) is not None}
    return Variant(name, {".onnx": run.verified(int8_name(name)), **own}, None, "int8", errors, widths)
