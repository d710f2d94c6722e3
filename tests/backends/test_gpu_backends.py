"""GPU engines: AOTInductor on CPU (parity vs torch), CUDA graphs' reason on CPU, the registry; GPU-marked parity on CUDA."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vib_deploy.backends import BACKENDS, get_backend
from vib_deploy.backends.aotinductor import AOTInductorRunner, compile_package, sidecar_path
from vib_deploy.backends.torch_cuda import TorchCudaGraphsRunner, TorchCudaRunner
from vib_deploy.errors import UserError
from vib_deploy.nets import save_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")


def _mlp(path: Path) -> Path:
    torch.manual_seed(0)
    save_model(nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)), path)
    return path


def _conv(path: Path) -> Path:
    torch.manual_seed(0)
    save_model(
        nn.Sequential(
            nn.Conv2d(1, 8, 3),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Flatten(),
            nn.Linear(8 * 13 * 13, 10),
        ).eval(),
        path,
    )
    return path


def _x(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).random((batch, 1, 28, 28), dtype=np.float32)


def test_registry_has_the_gpu_engines():
    for name in ("torch-cuda", "torch-cuda-graphs", "aotinductor", "onnxruntime-cuda", "onnxruntime-tensorrt"):
        assert BACKENDS[name].name == name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answers")
def test_cuda_engines_say_why_not_on_cpu():
    assert "no CUDA device" in (TorchCudaRunner.unavailable() or "")
    assert "CUDA graphs need a CUDA device" in (TorchCudaGraphsRunner.unavailable_on("cpu") or "")
    with pytest.raises(UserError, match="backend torch-cuda-graphs is not available: no CUDA device"):
        get_backend("torch-cuda-graphs")
    with pytest.raises(UserError, match="onnxruntime-cuda is not available: .*CUDAExecutionProvider"):
        get_backend("onnxruntime-cuda")
    assert AOTInductorRunner.unavailable() is None  # compiles and runs on CPU


def test_cuda_graphs_runner_refuses_cpu(tmp_path):
    runner = TorchCudaGraphsRunner(_mlp(tmp_path / "m.pt"), device="cpu")
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        runner.activate()


def test_torch_runner_precisions_on_cpu(tmp_path):
    path = _conv(tmp_path / "c.pt")
    fp32 = TorchCudaRunner(path, device="cpu").activate()
    bf16 = TorchCudaRunner(path, device="cpu", precision="bf16").activate()
    x = _x(16)
    ref = fp32.infer(x)
    assert abs(bf16.weight_bytes() * 2 - fp32.weight_bytes()) == 8  # all halved but BN's int64 batch counter
    diff = np.abs(bf16.infer(x) - ref).max()
    assert 0 < diff <= 5e-2 * max(1.0, np.abs(ref).max())  # bf16: 8 mantissa bits
    with pytest.raises(ValueError, match="precision"):
        TorchCudaRunner(path, device="cpu", precision="int8")


@pytest.mark.e2e
def test_aotinductor_on_cpu_matches_torch(tmp_path, monkeypatch):
    """One compile (~16 s on a 2-core CPU with the wrapper at -O0; 36 s at the default -O1, which changes the C++
    wrapper's optimisation only, not the kernels): parity vs eager torch within 1e-5 at batches 1, 7, 64 (observed: 0)."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.aot_inductor, "compile_wrapper_opt_level", "O0")
    path = _mlp(tmp_path / "m.pt")
    package = tmp_path / "m.cpu.fp32.pt2"
    meta = compile_package(path, package, (1, 28, 28), device="cpu", max_batch=64)
    assert meta["device"] == "cpu" and meta["batch_max"] == 64 and meta["torch_version"] == torch.__version__
    assert package.is_file() and sidecar_path(package).is_file()
    runner = AOTInductorRunner(package, device="cpu").activate()
    ref = TorchCudaRunner(path, device="cpu").activate()
    for batch in (1, 7, 64):
        assert np.abs(runner.infer(_x(batch)) - ref.infer(_x(batch))).max() <= 1e-5
    with pytest.raises(UserError, match="batch 65 is outside the compiled range 1..64"):
        runner.infer(_x(65))
    with pytest.raises(UserError, match="bf16 package|fp32 package"):
        AOTInductorRunner(package, device="cpu", precision="bf16").activate()


def test_aotinductor_sidecar_checks(tmp_path):
    import json

    package = tmp_path / "m.pt2"
    package.write_bytes(b"not compiled")
    with pytest.raises(UserError, match="no sidecar"):
        AOTInductorRunner(package, device="cpu").activate()
    meta = {
        "torch_version": "2.0.0",
        "device": "cpu",
        "compute_capability": None,
        "precision": "fp32",
        "batch_min": 1,
        "batch_max": 8,
    }
    sidecar_path(package).write_text(json.dumps(meta))
    with pytest.raises(UserError, match="compiled for torch 2.0.0, this is torch .*; recompile it"):
        AOTInductorRunner(package, device="cpu").activate()
    sidecar_path(package).write_text(
        json.dumps({**meta, "torch_version": torch.__version__, "device": "cuda", "compute_capability": "9.0"})
    )
    with pytest.raises(UserError, match=r"compiled for device cuda, this is device cpu; recompile it"):
        AOTInductorRunner(package, device="cpu").activate()


# -- on a GPU: every engine vs fp32 torch on CPU -------------------------------------------------------
@pytest.mark.gpu
@cuda
@pytest.mark.parametrize(
    "cls,precision,tol",
    [
        (TorchCudaRunner, "fp32", 1e-2),
        (TorchCudaRunner, "bf16", 1e-1),
        (TorchCudaGraphsRunner, "fp32", 1e-2),
        (TorchCudaGraphsRunner, "fp16", 5e-2),
    ],
)
def test_cuda_engines_match_cpu_torch(tmp_path, cls, precision, tol):
    """Tolerance: max |Δlogit| <= tol x max(1, |logit|) (fp32 allows TF32 convs); fp32: argmax agreement >= 99 %."""
    path = _conv(tmp_path / "c.pt")
    ref_runner = TorchCudaRunner(path, device="cpu").activate()
    runner = cls(path, device="cuda", precision=precision).activate()
    for batch in (1, 8, 64, 64):  # 64 twice: a CUDA graph replayed
        x = _x(batch)
        ref = ref_runner.infer(x)
        got = runner.infer(x)
        assert np.abs(got - ref).max() <= tol * max(1.0, np.abs(ref).max())
        if precision == "fp32":  # random nets have close logits: bf16/fp16 rounding may flip a near tie
            assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99


@pytest.mark.gpu
@cuda
def test_aotinductor_on_cuda_matches_torch(tmp_path):
    path = _conv(tmp_path / "c.pt")
    package = tmp_path / "c.cuda.fp32.pt2"
    meta = compile_package(path, package, (1, 28, 28), device="cuda", max_batch=256)
    assert meta["compute_capability"] == "{}.{}".format(*torch.cuda.get_device_capability())
    runner = AOTInductorRunner(package, device="cuda").activate()
    ref_runner = TorchCudaRunner(path, device="cpu").activate()
    for batch in (1, 8, 256):
        ref = ref_runner.infer(_x(batch))
        assert np.abs(runner.infer(_x(batch)) - ref).max() <= 1e-2 * max(1.0, np.abs(ref).max())


@pytest.mark.gpu
@cuda
def test_cuda_graph_output_is_replayed_not_recomputed_eagerly(tmp_path):
    runner = TorchCudaGraphsRunner(_conv(tmp_path / "c.pt"), device="cuda").activate()
    a, b = runner.prepare(_x(8)), runner.prepare(_x(9)[:8])
    runner.infer_tensor(a)
    assert len(runner.graphs) == 1
    out_b = runner.infer_tensor(b).clone()
    assert len(runner.graphs) == 1  # same shape: the same graph, new input copied in
    eager = TorchCudaRunner(_conv(tmp_path / "c2.pt"), device="cuda").activate()
    assert torch.allclose(out_b.float(), eager.infer_tensor(eager.prepare(_x(9)[:8])).float(), atol=1e-2, rtol=1e-2)
