"""ONNX Runtime backend (CPU execution provider here; CUDA when onnxruntime-gpu is installed)."""

from __future__ import annotations

import importlib.util

import numpy as np

from vib_deploy.backends.base import Runner
from vib_deploy.errors import UserError, first_line


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"
    artifact_suffix = ".onnx"
    bench_stage = True

    @classmethod
    def unavailable(cls) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return "pip install onnxruntime (or onnxruntime-gpu)"
        return None

    def activate_impl(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for garbage or unsupported models
            raise UserError(f"{self.path}: ONNX Runtime cannot load it ({type(e).__name__}: {first_line(e)})") from e
        self.input_name = self.session.get_inputs()[0].name

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: x})[0])

    def deactivate_impl(self) -> None:
        del self.session
