"""What a GPU measurement was made on and how much memory it took: device facts, NVML sampling, allocator peaks.

Memory per variant and batch: `torch.cuda.max_memory_allocated` over a few calls beyond what was allocated before
them, NVML's device memory used (sampled every millisecond in a thread; "not available" without nvidia-ml-py or a
driver) and the weights' bytes (`Runner.weight_bytes`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from vib_deploy.backends.base import Runner
from vib_deploy.measure.machine import cpu_facts


class NvmlSampler:
    """Peak device memory used (NVML) while active, sampled in a thread; `problem` says why there is none."""

    def __init__(self, device_index: int = 0, interval: float = 0.001):
        self.peak: int | None = None
        self.problem: str | None = None
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml  # pyright: ignore[reportMissingImports]  (nvidia-ml-py, on GPU machines)

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception as e:  # ImportError, or NVMLError without a driver
            self.problem = f"not available ({type(e).__name__}: {str(e)[:80] or 'no NVML'})"

    def used(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak or 0, self.used())
            time.sleep(self.interval)

    def __enter__(self) -> NvmlSampler:
        if self.problem is None:
            self.peak = self.used()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak or 0, self.used())


def gpu_facts(device: str) -> dict[str, Any]:
    """What the numbers were measured on: GPU name, driver, CUDA, torch (the CPU on a CPU run)."""
    import torch

    facts: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "not available",
        "device": device,
    }
    if device.startswith("cuda"):
        dev = torch.device(device)
        cc = torch.cuda.get_device_capability(dev)
        facts.update(
            gpu=torch.cuda.get_device_name(dev),
            compute_capability=f"{cc[0]}.{cc[1]}",
            memory_bytes=torch.cuda.get_device_properties(dev).total_memory,
        )
    else:
        facts["gpu"] = f"none (CPU: {cpu_facts().model}, {cpu_facts().vector_isa})"
    try:
        import pynvml  # pyright: ignore[reportMissingImports]

        pynvml.nvmlInit()
        facts["driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception as e:
        facts["driver"] = f"not available ({type(e).__name__})"
    return facts


def device_memory(runner: Runner, x: Any, device: str, sampler_index: int) -> dict[str, Any]:
    """Allocator peak beyond what was allocated before a few calls, NVML peak used, weight bytes."""
    out: dict[str, Any] = {"weight_bytes": runner.weight_bytes()}
    if not device.startswith("cuda"):
        return {**out, "max_memory_allocated_bytes": None, "nvml_used_bytes": "not available (not a CUDA device)"}
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with NvmlSampler(sampler_index) as nvml:
        for _ in range(3):
            runner.infer_tensor(x)
        torch.cuda.synchronize()
    out["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated() - before
    out["nvml_used_bytes"] = nvml.peak if nvml.problem is None else nvml.problem
    return out
