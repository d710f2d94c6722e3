"""NNCF's OpenVINO INT8 with accuracy control (vib_deploy/deploy/nncf_int8.py) on a small real net and real MNIST: the
budget held on validation, the operations kept in fp32 read from the graphs as NNCF itself reports them."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="the openvino wheel is a dependency: `make setup` installs it")
pytest.importorskip("nncf", reason="NNCF is not installed: pip install 'vib-deploy[nncf]'")

MAX_DROP = 0.01


def _outlier_net() -> torch.nn.Module:
    """An MLP whose hidden unit 0 is always 1e4 and unused: per-tensor INT8 of the second layer's input then has a
    step of ~40 and rounds every other unit to 0, so quantizing that layer costs most of the accuracy."""
    torch.manual_seed(0)
    first, second = torch.nn.Linear(784, 64), torch.nn.Linear(64, 10)
    with torch.no_grad():
        first.weight[0], first.bias[0], second.weight[:, 0] = 0.0, 1e4, 0.0
    return torch.nn.Sequential(torch.nn.Flatten(), first, torch.nn.ReLU(), second).eval()


@pytest.fixture(scope="module")
def made(tmp_path_factory, mnist_root):
    """The net's fp32 IR quantized by `quantize_ir` (NNCF's log captured), with the real images it saw."""
    from nncf.common.logging import nncf_logger

    from vib_deploy.backends.openvino import save_ir, sidecar_path
    from vib_deploy.config import parse_config
    from vib_deploy.data.datasets import splits_of
    from vib_deploy.deploy import nncf_int8
    from vib_deploy.deploy.export import export_onnx
    from vib_deploy.runs.directory import atomic_write, atomic_write_json

    tmp = tmp_path_factory.mktemp("nncf")
    net = _outlier_net()
    export_onnx(net, tmp / "m.onnx", (1, 28, 28), opset=18)
    write = lambda name, fn: atomic_write(tmp / name, fn)  # noqa: E731
    atomic_write_json(sidecar_path(tmp / "m.xml"), save_ir(tmp / "m.onnx", tmp / "m.xml", write))
    data = splits_of(parse_config({"name": "t", "model": {"name": "lenet300"}}, "t").data)
    labels = lambda x: net(torch.from_numpy(x)).argmax(1).numpy()  # noqa: E731  fp32 top-1 is 100% by construction
    x_val, x_test = data.x_val[:300], data.x_test[:300]
    log: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: log.append(record.getMessage())  # type: ignore[method-assign]
    level = nncf_logger.level
    nncf_logger.addHandler(handler)
    nncf_logger.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(nncf_int8, "_quiet", contextlib.nullcontext)  # NNCF's own account, for the test to read
            result = nncf_int8.quantize_ir(
                tmp / "m.xml", data.x_train[:300], x_val, labels(x_val), MAX_DROP, tmp / "m_int8.xml", write
            )
    finally:
        nncf_logger.removeHandler(handler)
        nncf_logger.setLevel(level)
    atomic_write_json(sidecar_path(tmp / "m_int8.xml"), result.sidecar)
    return tmp, result, (x_val, labels(x_val)), (x_test, labels(x_test)), log


def _error(xml: Path, x: np.ndarray, y: np.ndarray) -> float:
    from vib_deploy.deploy.cpu_deploy import onnx_error

    return onnx_error("openvino", xml, x, y)


def test_accuracy_control_holds_the_budget_that_plain_int8_breaks(made):
    tmp, result, (x_val, y_val), (x_test, y_test), log = made
    assert _error(tmp / "m.xml", x_val, y_val) == 0.0  # the fp32 IR: every label is its own top-1
    plain = float(re.search(r"Metric of quantized model: ([0-9.]+)", "\n".join(log)).group(1))  # type: ignore[union-attr]
    # the premise of this test: fully quantized, the planted outlier costs more than 20 points on validation (if
    # NNCF stops degrading this net, the budget assertions below would prove nothing, so this fails instead)
    assert 1 - plain > 0.2, f"plain INT8 kept {plain:.1%} validation accuracy: the test net no longer breaks INT8"
    assert _error(tmp / "m_int8.xml", x_val, y_val) <= MAX_DROP  # the budget, measured on our own OpenVINO runner
    assert _error(tmp / "m_int8.xml", x_test, y_test) <= 0.03  # held-out test images: 9 of 300 at most


def test_the_ops_kept_in_fp32_are_those_nncf_reports(made):
    _, result, _, _, log = made
    assert result.kept_fp32 and set(result.kept_fp32) < set(result.quantized)
    report = next(m for m in log if "were reverted back to the floating-point precision" in m)
    reverted, total = re.match(r"(\d+) out of (\d+)", report).groups()  # type: ignore[union-attr]
    assert (int(reverted), int(total)) == (len(result.kept_fp32), len(result.quantized))
    assert sorted(line.strip() for line in report.splitlines()[1:]) == result.kept_fp32


def test_the_int8_ir_runs_int8_and_has_its_sidecar(made):
    from vib_deploy.backends.openvino import OpenVinoRunner
    from vib_deploy.runs.directory import sha256_file

    tmp, result, (x_val, _), _, _ = made
    xml = (tmp / "m_int8.xml").read_text()
    assert 'type="FakeQuantize"' in xml and 'element_type="i8"' in xml  # int8 weights, quantized activations
    side = result.sidecar
    assert side["precision"] == "int8" and side["quantizer"].startswith("nncf ") and side["source"] == "m.xml"
    assert side["source_sha256"] == sha256_file(tmp / "m.xml") and side["bin_sha256"] == sha256_file(tmp / "m_int8.bin")
    assert OpenVinoRunner(tmp / "m_int8.xml").activate().infer(x_val[:4]).shape == (4, 10)  # the sidecar checks


def test_missing_nncf_is_one_line_with_the_install_hint(monkeypatch):
    from vib_deploy.deploy.nncf_int8 import _nncf
    from vib_deploy.errors import UserError

    monkeypatch.setitem(sys.modules, "nncf", None)  # `import nncf` raises ImportError
    with pytest.raises(UserError, match=r"quantize.openvino: nncf needs NNCF: pip install 'vib-deploy\[nncf\]'"):
        _nncf()
