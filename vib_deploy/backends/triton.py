"""Triton client backend: runs a model that a Triton server serves, over gRPC or HTTP (tritonclient).

Unlike the in-process backends, the artifact is a model *name* on a running server: the runner is made
with the server's URL and the model name (`vib-deploy bench --backend triton` starts a local server).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from vib_deploy.backends.base import Runner


class TritonRunner(Runner):
    name = "triton"
    artifact_suffix = ".onnx"  # what the served model was made from
    needs_server = True

    def __init__(
        self,
        path: Path,
        threads: int = 1,
        url: str = "127.0.0.1:8001",
        model: str = "",
        protocol: str = "grpc",
        input_name: str = "input",
        output_name: str = "logits",
    ):
        super().__init__(path, threads)
        self.url, self.model, self.protocol = url, model, protocol
        self.input_name, self.output_name = input_name, output_name

    @classmethod
    def unavailable(cls) -> str | None:
        if importlib.util.find_spec("tritonclient") is None:
            return "pip install 'vib-deploy[ship]' (tritonclient[grpc,http])"
        return None

    def activate_impl(self) -> None:
        if self.protocol == "grpc":
            import tritonclient.grpc as lib
        else:
            import tritonclient.http as lib
        self.lib = lib
        self.client = lib.InferenceServerClient(self.url)
        self.outputs = [lib.InferRequestedOutput(self.output_name)]

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        inp = self.lib.InferInput(self.input_name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = self.client.infer(self.model, [inp], outputs=self.outputs)
        y = None if result is None else result.as_numpy(self.output_name)
        if y is None:
            raise RuntimeError(f"Triton returned no {self.output_name!r} for model {self.model!r}")
        return y

    def deactivate_impl(self) -> None:
        self.client.close()
