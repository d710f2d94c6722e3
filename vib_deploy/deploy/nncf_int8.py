"""OpenVINO's INT8 within an error budget: NNCF's `quantize_with_accuracy_control` on an fp32 IR.

NNCF quantizes the IR (FakeQuantize on activations, int8 weights), calibrated on training images, then measures
top-1 accuracy on the validation split and, while the drop from the fp32 IR is over `max_drop` (absolute), puts the
operations that cost most back in fp32, one group at a time. Which ones it kept in fp32 is read from the graphs
(`quantized_ops`): the operations plain NNCF quantization makes int8, less those the result still runs in int8.
`nncf` is imported here only (`pip install 'vib-deploy[nncf]'`).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vib_deploy.errors import UserError

INSTALL_HINT = "pip install 'vib-deploy[nncf]' (nncf 3.4 or later)"


@dataclass(frozen=True)
class NncfResult:
    """What NNCF made of one IR: the IR's sidecar facts, the operations it quantizes, those it kept in fp32."""

    sidecar: dict[str, Any]
    quantized: list[str]  # operations plain NNCF quantization runs in int8
    kept_fp32: list[str]  # of those, the ones accuracy control put back in fp32


def _nncf() -> Any:
    try:
        import nncf
    except ImportError as e:
        raise UserError(f"quantize.openvino: nncf needs NNCF: {INSTALL_HINT} ({type(e).__name__}: {e})") from e
    return nncf


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF's INFO log and progress bars (written to stdout) kept off the console while it runs."""
    from nncf.common.logging import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf_logger.setLevel(level)


def quantized_ops(model: Any) -> set[str]:
    """Names of the operations `model` (an `ov.Model`) runs in int8: each quantizable operation a FakeQuantize feeds,
    through quantize-agnostic ones (NNCF's own count of quantized operations, by name)."""
    from nncf.openvino.graph.metatypes.groups import FAKE_QUANTIZE_OPERATIONS, INPUTS_QUANTIZABLE_OPERATIONS
    from nncf.openvino.graph.nncf_graph_builder import GraphConverter

    graph = GraphConverter.create_nncf_graph(model)
    out: set[str] = set()
    for fq in graph.get_nodes_by_metatypes(FAKE_QUANTIZE_OPERATIONS):
        todo = list(graph.get_next_nodes(fq))
        while todo:
            node = todo.pop()
            if node.metatype in INPUTS_QUANTIZABLE_OPERATIONS:
                out.add(node.node_name)
            else:
                todo.extend(graph.get_next_nodes(node))
    return out


def _top1(compiled: Any, items: Iterable[tuple[np.ndarray, int]], batch: int = 500) -> tuple[float, list[float]]:
    """NNCF's validation function: top-1 accuracy of `compiled` (an `ov.CompiledModel`) over (image, label) items,
    and 1.0 / 0.0 per item (what NNCF ranks operations by)."""
    pairs = list(items)
    x = np.stack([p[0] for p in pairs]).astype(np.float32)
    y = np.array([p[1] for p in pairs])
    right = np.concatenate(
        [compiled(x[i : i + batch])[0].argmax(1) == y[i : i + batch] for i in range(0, len(x), batch)]
    )
    return float(right.mean()), right.astype(float).tolist()


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # an int8 dot product with 32-bit accumulation


def overflow_fix() -> Any:
    """NNCF's overflow fix in every layer on a CPU without VNNI (none: NNCF's default, the first layer only).

    Without VNNI, OpenVINO's INT8 convolution and MatMul sum pairs of u8 x s8 products in int16 (vpmaddubsw), which
    saturates; NNCF's fix stores 7-bit weights so the pairs fit. On a 2-core AMD EPYC with AVX2 only, a 784-64-10 MLP
    on MNIST lost 11.7 points of validation accuracy with its first layer in INT8 and no fix in that layer, so
    accuracy control had to keep every layer in fp32 (tests/deploy/test_nncf_int8.py)."""
    from vib_deploy.measure.machine import cpu_facts

    if any(flag in cpu_facts().isa for flag in VNNI_FLAGS):
        return None
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    return AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)


def quantize_ir(
    src: Path,
    calibration: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    max_drop: float,
    dst: Path,
    write: Any,
) -> NncfResult:
    """INT8 IR of the fp32 IR `src` at `dst` (+ .bin, each file written by `write(name, fn)`): NNCF calibrated on
    `calibration` (training images), its validation top-1 at most `max_drop` (absolute) under the fp32 IR's."""
    from vib_deploy.backends.openvino import check_ir, ir_facts, write_ir
    from vib_deploy.runs.directory import sha256_file

    nncf = _nncf()
    import openvino as ov

    check_ir(src)  # IR of this OpenVINO version
    core = ov.Core()
    cal = nncf.Dataset(list(calibration), lambda x: x[None])  # one image per item, (1, C, H, W)
    val = nncf.Dataset(list(zip(x_val, y_val.tolist())), lambda item: item[0][None])
    overflow = overflow_fix()
    with _quiet():
        plain = nncf.quantize(
            core.read_model(str(src)), cal, subset_size=len(calibration), advanced_parameters=overflow
        )
        model = nncf.quantize_with_accuracy_control(
            core.read_model(str(src)),
            calibration_dataset=cal,
            validation_dataset=val,
            validation_fn=_top1,
            max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            subset_size=len(calibration),
            advanced_quantization_parameters=overflow,
        )
    quantized = quantized_ops(plain)
    write_ir(model, dst, write)
    facts = {"quantizer": f"nncf {nncf.__version__}", "source": src.name, "source_sha256": sha256_file(src)}
    if overflow is not None:
        facts["overflow_fix"] = "enable"  # 7-bit weights in every layer: this CPU has no VNNI
    return NncfResult(
        sidecar={**ir_facts(model, "int8"), **facts, "bin_sha256": sha256_file(dst.with_suffix(".bin"))},
        quantized=sorted(quantized),
        kept_fp32=sorted(quantized - quantized_ops(model)),
    )
