"""TensorRT backend: runs a plan built by `vib_deploy.engine` with execute_async_v3 on a CUDA stream.

Device buffers and the stream come from torch (no extra CUDA bindings needed). The engine's sidecar
is checked against the running GPU and TensorRT version before deserializing, so a mismatched plan
is one clear error, never a crash inside TensorRT.
"""

from __future__ import annotations

import numpy as np

from vib_deploy.backends.base import Runner


class TensorRTRunner(Runner):
    name = "tensorrt"
    artifact_suffix = ".plan"

    @classmethod
    def unavailable(cls) -> str | None:
        from vib_deploy.engine import unavailable

        return unavailable()

    @property
    def device(self) -> str:
        return "cuda"

    def activate_impl(self) -> None:
        import tensorrt as trt
        import torch

        from vib_deploy.engine import check_sidecar
        from vib_deploy.errors import UserError

        check_sidecar(self.path)
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
