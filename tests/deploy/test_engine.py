"""TensorRT engines. Without CUDA + TensorRT (these CPU machines) the command says "not available";
with them, a real engine is built and compared with ONNX Runtime on real MNIST."""

import json

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from vib_deploy.deploy.engine import unavailable

TRT_PROBLEM = unavailable()
needs_trt = pytest.mark.skipif(
    TRT_PROBLEM is not None, reason=f"TensorRT engine tests need CUDA + TensorRT: {TRT_PROBLEM}"
)


@pytest.mark.skipif(TRT_PROBLEM is None, reason="TensorRT is available here: the real build test runs instead")
def test_build_engine_says_not_available(tmp_path):
    proc = run_cli("build-engine", str(tmp_path))
    assert proc.returncode == 2
    assert "TensorRT engines cannot be built here" in proc.stderr and "Traceback" not in proc.stderr


@needs_trt
def test_engine_matches_onnxruntime(tmp_path):
    from vib_deploy.backends.onnxruntime import OnnxRuntimeRunner
    from vib_deploy.backends.tensorrt import TensorRTRunner
    from vib_deploy.deploy.engine import build_engine
    from vib_deploy.deploy.export import export_onnx
    from vib_deploy.zoo import gated_model, strip_gates

    torch.manual_seed(0)
    model = strip_gates(gated_model("lenet5")).eval()
    onnx_path = tmp_path / "m.onnx"
    export_onnx(model, onnx_path, (1, 28, 28), opset=18)
    plan = tmp_path / "m.plan"
    sidecar = build_engine(onnx_path, plan, "fp32", 1, 8, 32, 256 << 20, tmp_path / "timing.cache")
    assert json.loads((tmp_path / "m.plan.json").read_text())["precision"] == "fp32"
    assert sidecar.profile["input"] == [[1, 1, 28, 28], [8, 1, 28, 28], [32, 1, 28, 28]]
    x = np.random.default_rng(0).random((17, 1, 28, 28), dtype=np.float32)
    trt_out = TensorRTRunner(plan).activate().infer(x)
    ort_out = OnnxRuntimeRunner(onnx_path).activate().infer(x)
    assert np.abs(trt_out - ort_out).max() <= 1e-3  # fp32 with TF32 allowed by default on Ampere+


@needs_trt
def test_mismatched_sidecar_is_clear_error(tmp_path):
    from vib_deploy.backends.tensorrt import TensorRTRunner
    from vib_deploy.deploy.engine import build_engine
    from vib_deploy.deploy.export import export_onnx
    from vib_deploy.errors import UserError
    from vib_deploy.zoo import gated_model, strip_gates

    model = strip_gates(gated_model("lenet300")).eval()
    export_onnx(model, tmp_path / "m.onnx", (1, 28, 28), opset=18)
    build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", "fp32", 1, 1, 4, 64 << 20)
    meta = json.loads((tmp_path / "m.plan.json").read_text())
    meta["compute_capability"] = "1.0"
    (tmp_path / "m.plan.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="was built for .* rebuild it here"):
        TensorRTRunner(tmp_path / "m.plan").activate()
