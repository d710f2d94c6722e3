"""TensorRT backend: runs a plan built by `vib_deploy.deploy.engine` with execute_async_v3 on a CUDA stream.

This module owns what a plan must match to be run here (`EngineSidecar`, `check_plan`) and whether
TensorRT can run at all (`unavailable`); `import tensorrt` happens inside functions only.

Device buffers and the stream come from torch (no extra CUDA bindings needed). The engine's sidecar
is checked against the running GPU and TensorRT version before deserializing, so a mismatched plan
is one clear error, never a crash inside TensorRT.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vib_deploy.backends.base import Runner
from vib_deploy.errors import UserError
from vib_deploy.runs.sidecar import check_sidecar


def tensorrt_version() -> str | None:
    """The installed TensorRT's version, or None (type stubs alone do not count)."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return getattr(trt, "__version__", None) if hasattr(trt, "Builder") else None


def unavailable() -> str | None:
    """None when an engine can be built here, else why not."""
    if tensorrt_version() is None:
        return "TensorRT is not installed (pip install 'vib-deploy[tensorrt]' on a machine with an NVIDIA GPU)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    return None


@dataclass(frozen=True)
class EngineSidecar:
    """What an engine was built from and for; checked before the engine is ever deserialized."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: dict[str, list[list[int]]]  # input name -> [min, opt, max] shapes
    inputs: dict[str, list[int]]
    outputs: dict[str, list[int]]
    onnx_sha256: str
    build_seconds: float
    device_memory_bytes: int


def current_gpu() -> tuple[str, str]:
    """(name, compute capability "major.minor") of CUDA device 0."""
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def check_plan(plan: Path) -> EngineSidecar:
    """Read `<plan>.json` and check it matches the running GPU and TensorRT: one clear error if not."""
    import tensorrt as trt

    gpu, cc = current_gpu()
    expected = [("tensorrt_version", "TensorRT", trt.__version__), ("compute_capability", "compute capability", cc)]
    missing = "rebuild with `vib-deploy build-engine`"
    return EngineSidecar(**check_sidecar(plan, expected, "built", f"rebuild it here (this GPU: {gpu})", missing))


class TensorRTRunner(Runner):
    name = "tensorrt"
    artifact_suffix = ".plan"
    devices = ("cuda",)

    @classmethod
    def unavailable(cls) -> str | None:
        return unavailable()

    @property
    def device(self) -> str:
        return "cuda"

    def activate_impl(self) -> None:
        import tensorrt as trt
        import torch

        check_plan(self.path)
        self.torch = torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise UserError(f"{self.path}: TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.stream = torch.cuda.Stream()

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        x_gpu = torch.from_numpy(x).to("cuda", non_blocking=False)
        self.context.set_input_shape(self.input_name, tuple(x_gpu.shape))
        dims = self.context.get_tensor_shape(self.output_name)
        out_shape = tuple(int(dims[i]) for i in range(len(dims)))
        y_gpu = torch.empty(out_shape, dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input_name, x_gpu.data_ptr())
        self.context.set_tensor_address(self.output_name, y_gpu.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        return y_gpu.cpu().numpy()

    def deactivate_impl(self) -> None:
        del self.context, self.engine
