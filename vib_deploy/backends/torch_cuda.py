"""PyTorch on a GPU: eager (`torch-cuda`) and CUDA graphs (`torch-cuda-graphs`, one captured graph per batch size).

Both load a model saved by vib-deploy (`load_model`), move it to the device in the asked precision (fp32, bf16 or
fp16 weights and activations) and, for conv nets, to channels_last. Besides the numpy `infer`, they offer
`prepare` (a batch as a device tensor in the model's dtype and layout) and `infer_tensor` (device in, device out)
so the GPU benchmark times the model, not host<->device copies.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vib_deploy.backends.base import Runner

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def cuda_problem() -> str | None:
    """None when torch sees a CUDA device, else why not."""
    import torch

    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    return f"no CUDA device (torch {torch.__version__}, {build})"


class TorchCudaRunner(Runner):
    """Eager PyTorch on `device` (cuda, cuda:N; cpu only as the dry run's stand-in)."""

    name = "torch-cuda"
    artifact_suffix = ".pt"

    def __init__(self, path: Any, threads: int = 1, device: str = "cuda", precision: str = "fp32"):
        super().__init__(path, threads)
        if precision not in DTYPES:
            raise ValueError(f"precision must be one of {', '.join(DTYPES)}, got {precision!r}")
        self._device, self.precision = device, precision

    @classmethod
    def unavailable(cls) -> str | None:
        return cls.unavailable_on("cuda")

    @classmethod
    def unavailable_on(cls, device: str) -> str | None:
        """None when the runner can run on `device` here, else why not."""
        return cuda_problem() if device.startswith("cuda") else None

    @property
    def device(self) -> str:
        return self._device

    def activate_impl(self) -> None:
        import torch

        from vib_deploy.modelfile import load_model

        self.torch = torch
        self.dtype = getattr(torch, DTYPES[self.precision])
        model = load_model(self.path).eval()
        self.channels_last = self._device.startswith("cuda") and any(
            isinstance(m, torch.nn.Conv2d) for m in model.modules()
        )
        model = model.to(self._device, self.dtype)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = model

    def prepare(self, x: np.ndarray) -> Any:
        """`x` as a tensor on the device, in the model's dtype and memory layout."""
        t = self.torch.from_numpy(np.ascontiguousarray(x)).to(self._device, self.dtype)
        return t.contiguous(memory_format=self.torch.channels_last) if self.channels_last and t.dim() == 4 else t

    def infer_tensor(self, x: Any) -> Any:
        with self.torch.inference_mode():
            return self.model(x)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self.infer_tensor(self.prepare(x)).float().cpu().numpy()

    def weight_bytes(self) -> int:
        """Bytes of the parameters and buffers as held on the device."""
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def deactivate_impl(self) -> None:
        del self.model


class TorchCudaGraphsRunner(TorchCudaRunner):
    """The eager model captured once per input shape into a CUDA graph and replayed: no per-kernel launch cost.

    A call copies its input into the graph's static input buffer and replays; the returned tensor is the graph's
    static output, overwritten by the next call of the same shape (`infer` copies it to the host first).
    """

    name = "torch-cuda-graphs"

    @classmethod
    def unavailable_on(cls, device: str) -> str | None:
        if not device.startswith("cuda"):
            return "CUDA graphs need a CUDA device (torch.cuda.CUDAGraph captures GPU kernels only)"
        return cuda_problem()

    def activate_impl(self) -> None:
        problem = self.unavailable_on(self._device)
        if problem:
            raise RuntimeError(problem)
        super().activate_impl()
        self.graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}

    def _capture(self, x: Any) -> tuple[Any, Any, Any]:
        torch = self.torch
        static_in = x.clone()
        side = torch.cuda.Stream(device=static_in.device)
        side.wait_stream(torch.cuda.current_stream(static_in.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):  # warm-up on a side stream: cuDNN/cuBLAS pick and allocate their workspaces
                self.model(static_in)
        torch.cuda.current_stream(static_in.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_out = self.model(static_in)
        return static_in, static_out, graph

    def infer_tensor(self, x: Any) -> Any:
        key = tuple(x.shape)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x)
        static_in, static_out, graph = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    def deactivate_impl(self) -> None:
        self.graphs.clear()
        super().deactivate_impl()
