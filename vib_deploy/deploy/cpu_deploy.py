"""CPU deployment stages: OpenVINO IR (`openvino`) and static INT8 quantization (`quantize`).

openvino: each exported ONNX model -> `<variant>.xml` + `<variant>.bin` (fp32 IR) + `<variant>.xml.json` (sidecar:
    OpenVINO version, CPU and ISA flags, precision, input shapes, ONNX sha256), then the IR vs torch on the full
    test set with the export tolerance (`export.tolerance`, `export.min_argmax_agreement`), enforced.
quantize: `dense.onnx`, `pruned.onnx` -> `<variant>_int8.onnx` with ONNX Runtime's `quantize_static` (QDQ,
    int8 weights -- per channel by default -- and uint8 activations), calibrated on `quantize.calibration_images`
    images of the *training* split only. Each INT8 model's test error is measured on the full test set on every
    engine that runs it (ONNX Runtime, and OpenVINO, which executes QDQ as int8), next to its fp32 error, and its
    validation error likewise (what the deployment choice compares with `deploy.max_error_increase`).
    quantize.openvino: nncf also makes OpenVINO's own INT8, `<variant>_int8.xml` + `.bin` + `.xml.json`: NNCF's
    accuracy control on the openvino stage's fp32 IR (`nncf_int8`), its validation error held within the choice's
    error budget (the dense fp32 net's + `deploy.max_error_increase`); OpenVINO's INT8 in bench, choice and package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np

from vib_deploy.deploy.deployed import ROUNDING, deployables
from vib_deploy.errors import UserError
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

QUANTIZED = ("dense", "pruned")  # pruned_reduced takes kept pixels: the same net as pruned, not quantized twice


def int8_name(variant: str) -> str:
    return f"{variant}_int8.onnx"


def openvino_ir(ctx: Context) -> list[str]:
    """OpenVINO IR of every exported model, with its sidecar, checked against torch on the full test set."""
    from vib_deploy.backends import get_backend
    from vib_deploy.backends.openvino import save_ir, sidecar_path
    from vib_deploy.deploy.export import parity
    from vib_deploy.model.modelfile import load_model

    get_backend("openvino")  # missing openvino: one line with the install hint
    cfg = ctx.config.export
    models: dict[str, OpenvinoModel] = {}
    outputs: list[str] = []
    x_test = ctx.splits().x_test
    for d in deployables(ctx.run, ctx.config):  # every model the export stage wrote
        xml = ctx.out(f"{d.name}.xml")
        sidecar = save_ir(ctx.run.verified(d.onnx), xml, lambda name, fn: atomic_write(ctx.out(name), fn))
        atomic_write_json(sidecar_path(xml), sidecar)
        model = load_model(ctx.run.verified(d.model_file))  # what the .onnx was made from
        x = np.ascontiguousarray(d.inputs(x_test), dtype=np.float32)
        check = parity(xml, model, x, cfg.tolerance, cfg.min_argmax_agreement, backend="openvino")
        models[d.name] = OpenvinoModel.from_json({**check, "sidecar": sidecar})
        outputs += [xml.with_suffix(".bin").name, xml.name, sidecar_path(xml).name]
    OpenvinoRecord(models).write(ctx.out(OpenvinoRecord.FILE))
    return outputs + [OpenvinoRecord.FILE]


def calibration_images(splits: Any, n: int) -> np.ndarray:
    """`n` images spread evenly over the training split (never validation or test images)."""
    x = splits.x_train
    if n > len(x):
        raise UserError(f"quantize.calibration_images is {n} but the training split has only {len(x)} images")
    return np.ascontiguousarray(x[np.linspace(0, len(x) - 1, n).round().astype(int)], dtype=np.float32)


class _Batches:
    """ONNX Runtime's CalibrationDataReader protocol (`get_next` -> feed dict or None) over fixed images."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = 50):
        self.feeds = [{input_name: images[i : i + batch]} for i in range(0, len(images), batch)]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]


def quantize_onnx(src: Path, dst: Path, images: np.ndarray, per_channel: bool) -> None:
    """Static INT8 (QDQ) of `src` into `dst` (atomically), activation ranges from `images` (min-max)."""
    import logging

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from vib_deploy.deploy.export import INPUT_NAME

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static logs a pre-processing hint at WARNING

    def write(tmp: Path) -> None:
        quantize_static(
            str(src),
            str(tmp),
            cast(CalibrationDataReader, _Batches(images, INPUT_NAME)),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=CalibrationMethod.MinMax,
        )

    atomic_write(dst, write)


def onnx_error(backend: str, path: Path, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    """Top-1 error of an ONNX model (or OpenVINO IR on openvino) on `backend` over all of (x, y)."""
    from vib_deploy.backends import get_backend

    runner = get_backend(backend)(path, threads=2).activate()
    wrong = sum(
        int((runner.infer(np.ascontiguousarray(x[i : i + batch])).argmax(1) != y[i : i + batch]).sum())
        for i in range(0, len(x), batch)
    )
    runner.deactivate()
    return wrong / len(x)


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


def ir_files(xml: str) -> list[str]:
    """An IR's files, weights first: `.bin`, `.xml`, the `.xml.json` sidecar."""
    from vib_deploy.runs.sidecar import sidecar_path

    return [str(Path(xml).with_suffix(".bin")), xml, str(sidecar_path(Path(xml)))]


def nncf_ir(ctx: Context, variant: str, images: np.ndarray) -> NncfModel:
    """NNCF's INT8 IR of the variant's fp32 IR, its validation error within the choice's error budget (the dense fp32
    net's + deploy.max_error_increase): NNCF's `max_drop` is what the budget leaves over the fp32 IR's own error."""
    from vib_deploy.backends.openvino import sidecar_path
    from vib_deploy.deploy.nncf_int8 import quantize_ir
    from vib_deploy.measure.bench import artifact_bytes

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
