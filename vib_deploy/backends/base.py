"""The runner protocol every backend implements (after Polygraphy's BaseRunner), written down in one place.

A runner runs one model artifact. Its life: `activate()` loads it (idempotent), `infer(x)` runs one float32 numpy
batch and returns float32 numpy logits, `deactivate()` frees it; the public methods check the state and call the
`*_impl` hooks a backend writes. What a caller may ask of every runner, with the defaults of a host (CPU) runner:

- class facts: `name`, `artifact_suffix` (which artifact it loads), `devices` (where it can run), `bench_stage`
  (the pipeline's bench stage may time it: `bench.backends`), `needs_server` (it talks to a served model, made
  with a URL and a model name, not loaded in-process), `host_clock` (the timing core reads the host clock around a
  call; False: CUDA events on the current stream);
- `unavailable()` (None, or why the backend cannot run here and how to install it) and `unavailable_on(device)`
  (the same for one device: "cpu", "cuda", "cuda:N");
- `prepare(x)` (a numpy batch as the runner's own input: a device tensor for a device runner, `x` itself here),
  `infer_tensor(prepared)` (one call on a prepared input, output left where it is: what the GPU benchmark times,
  without host<->device copies) and `weight_bytes()` (the weights as held: the artifact file's size here).

`DeviceRunner` holds what the GPU runners (torch-cuda, onnxruntime-gpu, aotinductor) share: a device and a
precision, device-tensor I/O, CUDA-event timing. Heavy libraries are imported inside methods, never at import.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def device_kind(device: str) -> str:
    """ "cuda" for cuda / cuda:N, else the device as given ("cpu")."""
    return "cuda" if device.startswith("cuda") else device


def cuda_problem() -> str | None:
    """None when torch sees a CUDA device, else why not."""
    import torch

    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    return f"no CUDA device (torch {torch.__version__}, {build})"


class Runner(ABC):
    """Runs one model artifact on the host; see the module docstring for the whole protocol."""

    name: ClassVar[str] = "base"
    artifact_suffix: ClassVar[str] = ""  # ".onnx", ".pt", ".plan", ".pt2"
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    bench_stage: ClassVar[bool] = False
    needs_server: ClassVar[bool] = False
    host_clock: ClassVar[bool] = True

    def __init__(self, path: Path, threads: int = 1):
        self.path = Path(path)
        self.threads = threads
        self.active = False

    @classmethod
    def unavailable(cls) -> str | None:
        """None when the backend can run here, else why not and how to install it."""
        return None

    @classmethod
    def unavailable_on(cls, device: str) -> str | None:
        """None when the backend can run on `device` here, else why not."""
        if device_kind(device) not in cls.devices:
            return f"{cls.name} runs on {' or '.join(cls.devices)} only, not {device}"
        return cls.unavailable()

    @property
    def device(self) -> str:
        return "cpu"

    def activate(self) -> Runner:
        """Load the model (idempotent); returns self."""
        if not self.active:
            self.activate_impl()
            self.active = True
        return self

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one batch (float32 numpy in, float32 numpy out)."""
        if not self.active:
            raise RuntimeError(f"{self.name} runner used before activate()")
        return self.infer_impl(x)

    def prepare(self, x: np.ndarray) -> Any:
        """`x` as this runner's input for `infer_tensor` (a host runner takes the numpy batch itself)."""
        return x

    def infer_tensor(self, x: Any) -> Any:
        """One call on a `prepare`d input; the output stays where the runner leaves it."""
        return self.infer(x)

    def weight_bytes(self) -> int:
        """Bytes of the weights as the runner holds them (a host runner: the artifact file's size)."""
        return self.path.stat().st_size

    def deactivate(self) -> None:
        if self.active:
            self.deactivate_impl()
            self.active = False

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, x: np.ndarray) -> np.ndarray: ...

    def deactivate_impl(self) -> None:  # noqa: B027 (optional hook: most runners free nothing)
        pass


class DeviceRunner(Runner):
    """A runner on a device ("cuda", "cuda:N"; "cpu" only as the dry run's stand-in) in a precision.

    Its `prepare` puts a batch on the device in the model's dtype and layout (channels_last for conv nets where
    `channels_last` is set), `infer_tensor` keeps input and output there, and calls are timed by CUDA events
    unless `host_clock` says the runner works on its own stream. Subclasses set `self.torch`, `self.dtype` and
    `self.channels_last` in `activate_impl` and write `infer_tensor`.
    """

    devices: ClassVar[tuple[str, ...]] = ("cuda", "cpu")
    host_clock: ClassVar[bool] = False
    precisions: ClassVar[tuple[str, ...]] = tuple(DTYPES)

    def __init__(self, path: Path, threads: int = 1, device: str = "cuda", precision: str = "fp32"):
        super().__init__(path, threads)
        if precision not in self.precisions:
            raise ValueError(f"{self.name} runs precision {' or '.join(self.precisions)}, got {precision!r}")
        self._device, self.precision = device, precision
        self.torch: Any = None
        self.dtype: Any = None
        self.channels_last = False

    @classmethod
    def unavailable(cls) -> str | None:
        return cls.unavailable_on("cuda")

    @classmethod
    def unavailable_on(cls, device: str) -> str | None:
        if device_kind(device) not in cls.devices:
            return f"{cls.name} needs a CUDA device"
        return cuda_problem() if device_kind(device) == "cuda" else None

    @property
    def device(self) -> str:
        return self._device

    def prepare(self, x: np.ndarray) -> Any:
        """`x` as a tensor on the device, in the model's dtype and memory layout."""
        t = self.torch.from_numpy(np.ascontiguousarray(x)).to(self._device, self.dtype)
        return t.contiguous(memory_format=self.torch.channels_last) if self.channels_last and t.dim() == 4 else t

    @abstractmethod
    def infer_tensor(self, x: Any) -> Any: ...

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self.infer_tensor(self.prepare(x)).float().cpu().numpy()
