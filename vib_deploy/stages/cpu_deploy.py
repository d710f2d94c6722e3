"""The CPU deployment stages: `openvino` (the fp32 IR of every exported model) and `quantize` (INT8 QDQ, and
OpenVINO's own INT8 through NNCF); what they do is described in deploy/cpu_deploy.py, whose helpers they call."""

from __future__ import annotations

import numpy as np

from vib_deploy.deploy.cpu_deploy import QUANTIZED, calibration_images, int8_name, ir_files, onnx_error, quantize_onnx
from vib_deploy.deploy.deployed import ROUNDING, deployables
from vib_deploy.records import (
    NncfModel,
    OpenvinoModel,
    OpenvinoRecord,
    QuantizedModel,
    QuantizeRecord,
    TrainDenseRecord,
)
from vib_deploy.runs.directory import atomic_write, atomic_write_json
from vib_deploy.stages.base import Context


def openvino_ir(ctx: Context) -> list[str]:
    """OpenVINO IR of every exported model, with its sidecar, checked against torch on the full test set."""
    from vib_deploy.backends import get_backend
    from vib_deploy.deploy.cpu_deploy import write_ir
    from vib_deploy.deploy.export import parity
    from vib_deploy.nets import load_model
    from vib_deploy.runs.sidecar import sidecar_path

    get_backend("openvino")  # missing openvino: one line with the install hint
    cfg = ctx.config.export
    models: dict[str, OpenvinoModel] = {}
    outputs: list[str] = []
    x_test = ctx.splits().x_test
    for d in deployables(ctx.run, ctx.config):  # every model the export stage wrote
        xml = ctx.out(f"{d.name}.xml")
        sidecar = write_ir(ctx.run.verified(d.onnx), xml, lambda name, fn: atomic_write(ctx.out(name), fn))
        model = load_model(ctx.run.verified(d.model_file))  # what the .onnx was made from
        x = np.ascontiguousarray(d.inputs(x_test), dtype=np.float32)
        check = parity(xml, model, x, cfg.tolerance, cfg.min_argmax_agreement, backend="openvino")
        models[d.name] = OpenvinoModel.from_json({**check, "sidecar": sidecar})
        outputs += [xml.with_suffix(".bin").name, xml.name, sidecar_path(xml).name]
    OpenvinoRecord(models).write(ctx.out(OpenvinoRecord.FILE))
    return outputs + [OpenvinoRecord.FILE]


def quantize(ctx: Context) -> list[str]:
    """INT8 (QDQ) dense and pruned models, calibrated on training images; their test and validation error on each
    engine."""
    from vib_deploy.backends import BACKENDS

    cfg = ctx.config.quantize
    data = ctx.splits()
    images = calibration_images(data, cfg.calibration_images)
    fp32_error = {d.name: d.error for d in deployables(ctx.run, ctx.config)}
    engines = [b for b in ("onnxruntime", "openvino") if BACKENDS[b].unavailable() is None]
    models: dict[str, QuantizedModel] = {}
    for variant in QUANTIZED:
        src, dst = ctx.run.verified(f"{variant}.onnx"), ctx.out(int8_name(variant))
        quantize_onnx(src, dst, images, cfg.per_channel)
        errors = {e: onnx_error(e, dst, data.x_test, data.y_test) for e in engines}
        val_errors = {e: onnx_error(e, dst, data.x_val, data.y_val) for e in engines}  # the choice's budget check
        nncf = nncf_ir(ctx, variant, images) if cfg.openvino == "nncf" else None
        models[variant] = QuantizedModel(
            dst.name,
            dst.stat().st_size,
            src.stat().st_size,
            errors,
            fp32_error[variant],
            len(data.y_test),
            val_errors,
            nncf,
        )
    QuantizeRecord(
        calibration={"split": "train", "images": len(images), "method": "minmax"},
        format="QDQ",
        weights="int8 per channel" if cfg.per_channel else "int8 per tensor",
        activations="uint8",
        engines=engines,
        variants=models,
    ).write(ctx.out(QuantizeRecord.FILE))
    nncf_files = [f for m in models.values() if m.openvino for f in ir_files(m.openvino.file)]
    return [m.file for m in models.values()] + nncf_files + [QuantizeRecord.FILE]


def nncf_ir(ctx: Context, variant: str, images: np.ndarray) -> NncfModel:
    """NNCF's INT8 IR of the variant's fp32 IR, its validation error within the choice's error budget (the dense fp32
    net's + deploy.max_error_increase): NNCF's `max_drop` is what the budget leaves over the fp32 IR's own error."""
    from vib_deploy.deploy.nncf_int8 import quantize_ir
    from vib_deploy.runs.files import artifact_bytes
    from vib_deploy.runs.sidecar import sidecar_path

    data = ctx.splits()
    src, dst = ctx.run.verified(f"{variant}.xml"), ctx.out(f"{variant}_int8.xml")
    budget = TrainDenseRecord.read(ctx.run).val_error + ctx.config.deploy.max_error_increase  # the choice's
    fp32_val_error = onnx_error("openvino", src, data.x_val, data.y_val)
    max_drop = max(0.0, budget - fp32_val_error)  # what the budget leaves this net (none: as accurate as fp32)
    made = quantize_ir(
        src, images, data.x_val, data.y_val, max_drop + ROUNDING, dst, lambda name, fn: atomic_write(ctx.out(name), fn)
    )
    atomic_write_json(sidecar_path(dst), made.sidecar)
    return NncfModel(
        file=dst.name,
        bytes=artifact_bytes(dst),
        error=onnx_error("openvino", dst, data.x_test, data.y_test),
        val_error=onnx_error("openvino", dst, data.x_val, data.y_val),
        fp32_val_error=fp32_val_error,
        budget=budget,
        max_drop=max_drop,
        quantized=made.quantized,
        kept_fp32=made.kept_fp32,
        sidecar=made.sidecar,
    )
