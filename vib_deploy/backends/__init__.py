"""Inference backends behind one tiny interface (`base.Runner`); the registry is data."""

from __future__ import annotations

from vib_deploy.backends.aotinductor import AOTInductorRunner
from vib_deploy.backends.base import Runner
from vib_deploy.backends.onnxruntime import OnnxRuntimeRunner
from vib_deploy.backends.onnxruntime_gpu import OnnxRuntimeCudaRunner, OnnxRuntimeTensorRTRunner
from vib_deploy.backends.openvino import OpenVinoRunner
from vib_deploy.backends.tensorrt import TensorRTRunner
from vib_deploy.backends.torch import TorchRunner
from vib_deploy.backends.torch_cuda import TorchCudaGraphsRunner, TorchCudaRunner
from vib_deploy.errors import UserError

BACKENDS: dict[str, type[Runner]] = {
    "onnxruntime": OnnxRuntimeRunner,
    "torch": TorchRunner,
    "tensorrt": TensorRTRunner,
    "openvino": OpenVinoRunner,
}
# GPU engines (gpu_bench times them with CUDA events; see backends/torch_cuda.py, aotinductor.py, onnxruntime_gpu.py)
BACKENDS.update(
    {
        "torch-cuda": TorchCudaRunner,
        "torch-cuda-graphs": TorchCudaGraphsRunner,
        "aotinductor": AOTInductorRunner,
        "onnxruntime-cuda": OnnxRuntimeCudaRunner,
        "onnxruntime-tensorrt": OnnxRuntimeTensorRTRunner,
    }
)


def get_backend(name: str) -> type[Runner]:
    """The runner class of a backend; an unknown or unavailable one is a UserError with the install hint."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    cls = BACKENDS[name]
    problem = cls.unavailable()
    if problem:
        raise UserError(f"backend {name} is not available: {problem}")
    return cls
