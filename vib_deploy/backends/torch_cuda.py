"""PyTorch on a GPU: eager (`torch-cuda`) and CUDA graphs (`torch-cuda-graphs`, one captured graph per batch size).

Both load a model saved by vib-deploy (`load_model`), move it to the device in the asked precision (fp32, bf16 or
fp16 weights and activations) and, for conv nets, to channels_last; `prepare` / `infer_tensor` (the
`DeviceRunner` protocol) keep batches on the device so the GPU benchmark times the model, not host<->device copies.
"""

from __future__ import annotations

from typing import Any

from vib_deploy.backends.base import DTYPES, DeviceRunner, cuda_problem


class TorchCudaRunner(DeviceRunner):
    """Eager PyTorch on `device` (cuda, cuda:N; cpu only as the dry run's stand-in)."""

    name = "torch-cuda"
    artifact_suffix = ".pt"

    def activate_impl(self) -> None:
        import torch

        from vib_deploy.nets import load_model

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

    def infer_tensor(self, x: Any) -> Any:
        with self.torch.inference_mode():
            return self.model(x)

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
    devices = ("cuda",)

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
