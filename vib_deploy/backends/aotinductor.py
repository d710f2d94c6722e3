"""AOTInductor: a model compiled ahead of time by torch._inductor into a `.pt2` package, run without its Python code.

`compile_package` exports a saved model with a dynamic batch dimension (torch.export), compiles it with
`torch._inductor.aoti_compile_and_package` for one device and precision, and writes a JSON sidecar beside the
package (torch version, device, GPU name and compute capability, precision, batch range, input shape, compile
time, sha256 of the source model). `AOTInductorRunner` checks that sidecar against the running torch and device,
then loads the package with `torch._inductor.aoti_load_package`. On a GPU machine where TensorRT cannot be
installed, this is the compiled engine; it also runs on CPU (the C++ kernels are compiled with the system compiler).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vib_deploy.backends.base import DTYPES
from vib_deploy.backends.torch_cuda import TorchCudaRunner
from vib_deploy.errors import UserError
from vib_deploy.runs.sidecar import check_sidecar, read_sidecar, sidecar_path, write_sidecar

RECOMPILE = "recompile it with vib_deploy.backends.aotinductor.compile_package"


def _device_facts(device: str) -> dict[str, Any]:
    import torch

    if not device.startswith("cuda"):
        return {"device": "cpu", "gpu_name": None, "compute_capability": None}
    dev = torch.device(device)
    cc = torch.cuda.get_device_capability(dev)
    return {"device": "cuda", "gpu_name": torch.cuda.get_device_name(dev), "compute_capability": f"{cc[0]}.{cc[1]}"}


def compile_package(
    model_path: Path,
    package: Path,
    input_shape: tuple[int, ...],
    device: str = "cuda",
    precision: str = "fp32",
    max_batch: int = 1024,
) -> dict[str, Any]:
    """Compile the model saved at `model_path` into `package` (.pt2) for batches 1..max_batch; returns the sidecar."""
    import torch

    from vib_deploy.nets import load_model
    from vib_deploy.runs.directory import sha256_file

    dtype = getattr(torch, DTYPES[precision])
    model = load_model(model_path).eval().to(device, dtype)
    example = torch.zeros((2, *input_shape), device=device, dtype=dtype)  # batch 2: export must not specialise it to 1
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    t0 = time.perf_counter()
    with torch.no_grad():
        exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    package.parent.mkdir(parents=True, exist_ok=True)
    tmp = package.with_name(package.name + ".tmp.pt2")
    torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp))
    tmp.replace(package)
    sidecar = {
        "torch_version": torch.__version__,
        **_device_facts(device),
        "precision": precision,
        "batch_min": 1,
        "batch_max": max_batch,
        "input_shape": list(input_shape),
        "weight_bytes": sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]),
        "compile_seconds": time.perf_counter() - t0,
        "source": Path(model_path).name,
        "source_sha256": sha256_file(Path(model_path)),
    }
    write_sidecar(package, sidecar)
    return sidecar


def check_package(package: Path, device: str) -> dict[str, Any]:
    """The package's sidecar, checked against this torch and device; a mismatch is a UserError saying what to do."""
    import torch

    here = _device_facts(device)
    expected = [
        ("torch_version", "torch", torch.__version__),
        ("device", "device", here["device"]),
        ("compute_capability", "compute capability", here["compute_capability"]),
    ]
    return check_sidecar(package, expected, "compiled", RECOMPILE)


def package_is_current(package: Path, source: Path, max_batch: int) -> bool:
    """Whether `package` exists with a sidecar naming `source`'s sha256 and a batch range up to `max_batch`."""
    from vib_deploy.runs.directory import sha256_file

    if not (package.is_file() and sidecar_path(package).is_file()):
        return False
    meta = read_sidecar(package, RECOMPILE)
    return meta.get("source_sha256") == sha256_file(source) and meta.get("batch_max", 0) >= max_batch


class AOTInductorRunner(TorchCudaRunner):
    """Runs a `.pt2` package made by `compile_package` (batch within the sidecar's range)."""

    name = "aotinductor"
    artifact_suffix = ".pt2"

    @classmethod
    def unavailable(cls) -> str | None:
        return cls.unavailable_on("cpu")  # compiles and runs on CPU too; a CUDA package needs cuda (unavailable_on)

    @classmethod
    def unavailable_on(cls, device: str) -> str | None:
        import torch

        if not hasattr(torch._inductor, "aoti_load_package"):
            return f"torch {torch.__version__} has no torch._inductor.aoti_load_package (needs torch >= 2.6)"
        return super().unavailable_on(device)

    def activate_impl(self) -> None:
        import torch

        self.torch = torch
        self.meta = check_package(self.path, self._device)
        if self.meta["precision"] != self.precision:
            raise UserError(
                f"{self.path} is a {self.meta['precision']} package, the runner was asked for {self.precision}"
            )
        self.dtype = getattr(torch, DTYPES[self.precision])
        self.channels_last = False  # the package's kernels take the layout it was exported with (contiguous)
        index = torch.device(self._device).index
        if index is None:  # cpu, or plain cuda: the current device
            self.model = torch._inductor.aoti_load_package(str(self.path))
        else:
            self.model = torch._inductor.aoti_load_package(str(self.path), device_index=index)

    def infer_tensor(self, x: Any) -> Any:
        lo, hi = self.meta["batch_min"], self.meta["batch_max"]
        if not lo <= x.shape[0] <= hi:
            raise UserError(f"{self.path}: batch {x.shape[0]} is outside the compiled range {lo}..{hi}")
        with self.torch.inference_mode():
            return self.model(x)

    def weight_bytes(self) -> int:
        return int(self.meta.get("weight_bytes", 0))
