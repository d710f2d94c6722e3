"""ONNX Runtime on a GPU: the CUDA and TensorRT execution providers of `onnxruntime-gpu`.

Available only where onnxruntime reports the provider (the CPU build of onnxruntime has neither); there is no
silent fallback to the CPU provider: a session that did not get the asked provider first is an error. Inputs
and outputs stay in GPU memory through IOBinding on torch tensors (`prepare` / `infer_tensor`), so timings are
the session's, not host<->device copies.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from vib_deploy.backends.base import DeviceRunner, cuda_problem
from vib_deploy.errors import UserError


class OnnxRuntimeCudaRunner(DeviceRunner):
    name = "onnxruntime-cuda"
    artifact_suffix = ".onnx"
    devices = ("cuda",)
    precisions = ("fp32",)  # the fp32 ONNX model only
    host_clock = True  # the session runs on its own stream: timed on the host clock after a device sync
    provider = "CUDAExecutionProvider"

    @classmethod
    def unavailable_on(cls, device: str) -> str | None:
        if not device.startswith("cuda"):
            return f"{cls.provider} needs a CUDA device"
        if importlib.util.find_spec("onnxruntime") is None:
            return "pip install onnxruntime-gpu"
        import onnxruntime as ort

        if cls.provider not in ort.get_available_providers():
            return (
                f"onnxruntime {ort.__version__} has no {cls.provider} (providers: {', '.join(ort.get_available_providers())}); "
                "pip install onnxruntime-gpu"
            )
        return cuda_problem()

    def _providers(self) -> list[Any]:
        return [(self.provider, {"device_id": self.device_index})]

    def activate_impl(self) -> None:
        import onnxruntime as ort
        import torch

        self.torch, self.dtype = torch, torch.float32
        self.device_index = torch.device(self._device).index or 0
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), options, providers=self._providers())
        if self.session.get_providers()[0] != self.provider:
            raise UserError(
                f"{self.path}: onnxruntime gave providers {self.session.get_providers()}, not {self.provider} first"
            )
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def infer_tensor(self, x: Any) -> Any:
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, "cuda", self.device_index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, "cuda", self.device_index)
        self.session.run_with_iobinding(binding)
        return binding

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self.infer_tensor(self.prepare(x)).copy_outputs_to_cpu()[0]

    def weight_bytes(self) -> int:
        import onnx

        model = onnx.load(str(self.path))
        return int(sum(np.prod(t.dims) * 4 for t in model.graph.initializer))

    def deactivate_impl(self) -> None:
        del self.session


class OnnxRuntimeTensorRTRunner(OnnxRuntimeCudaRunner):
    name = "onnxruntime-tensorrt"
    provider = "TensorrtExecutionProvider"

    def _providers(self) -> list[Any]:
        # CUDA after TensorRT: nodes TensorRT does not take run on CUDA, never on the CPU
        return [
            (self.provider, {"device_id": self.device_index}),
            ("CUDAExecutionProvider", {"device_id": self.device_index}),
        ]
