"""CPU deployment: what the `openvino` and `quantize` stages (stages/cpu_deploy.py) are made of -- calibration images,
static INT8 (QDQ) with ONNX Runtime, the error of an ONNX model or IR on an engine. The stages:

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

from vib_deploy.errors import UserError
from vib_deploy.runs.directory import atomic_write

QUANTIZED = ("dense", "pruned")  # pruned_reduced takes kept pixels: the same net as pruned, not quantized twice


def int8_name(variant: str) -> str:
    return f"{variant}_int8.onnx"


def write_ir(onnx: Path, xml: Path, write: Any) -> dict[str, Any]:
    """The fp32 OpenVINO IR of an ONNX model (`.xml` + `.bin`, through `write(name, fn)`) and its sidecar beside it."""
    from vib_deploy.backends.openvino import save_ir
    from vib_deploy.runs.directory import atomic_write_json
    from vib_deploy.runs.sidecar import sidecar_path

    sidecar = save_ir(onnx, xml, write)
    atomic_write_json(sidecar_path(xml), sidecar)
    return sidecar


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


def ir_files(xml: str) -> list[str]:
    """An IR's files, weights first: `.bin`, `.xml`, the `.xml.json` sidecar."""
    from vib_deploy.runs.sidecar import sidecar_path

    return [str(Path(xml).with_suffix(".bin")), xml, str(sidecar_path(Path(xml)))]
