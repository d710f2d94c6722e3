"""Inference backends behind one runner protocol (`base.Runner`); the registry below is the only list of them.

Each runner class says where it runs and how it is used (`devices`, `bench_stage`, `needs_server`, `host_clock`:
see `base.py`), so callers filter the registry instead of naming backends: the bench stage takes the
`bench_stage` ones, gpu-bench the `DeviceRunner`s, `vib-deploy bench --backend triton` the `needs_server` one.
Adding an engine: a module here with a `Runner` (or `DeviceRunner`) subclass, its class facts set, and its class in
`BACKENDS`; tests/backends/test_backends.py checks it keeps the protocol, and config accepts it once `bench_stage` is set.
"""

from __future__ import annotations

from vib_deploy.backends.aotinductor import AOTInductorRunner
from vib_deploy.backends.base import DeviceRunner, Runner
from vib_deploy.backends.onnxruntime import OnnxRuntimeRunner
from vib_deploy.backends.onnxruntime_gpu import OnnxRuntimeCudaRunner, OnnxRuntimeTensorRTRunner
from vib_deploy.backends.openvino import OpenVinoRunner
from vib_deploy.backends.tensorrt import TensorRTRunner
from vib_deploy.backends.torch import TorchRunner
from vib_deploy.backends.torch_cuda import TorchCudaGraphsRunner, TorchCudaRunner
from vib_deploy.backends.triton import TritonRunner
from vib_deploy.errors import UserError

BACKENDS: dict[str, type[Runner]] = {
    cls.name: cls
    for cls in (
        OnnxRuntimeRunner,
        TorchRunner,
        TensorRTRunner,
        OpenVinoRunner,
        TorchCudaRunner,
        TorchCudaGraphsRunner,
        AOTInductorRunner,
        OnnxRuntimeCudaRunner,
        OnnxRuntimeTensorRTRunner,
        TritonRunner,
    )
}


def bench_stage_backends() -> list[str]:
    """The backends the pipeline's bench stage can time (`bench.backends`), in registry order."""
    return [name for name, cls in BACKENDS.items() if cls.bench_stage]


def device_backends() -> dict[str, type[DeviceRunner]]:
    """The GPU runners (`DeviceRunner`s) gpu-bench times on device tensors, in registry order."""
    return {name: cls for name, cls in BACKENDS.items() if issubclass(cls, DeviceRunner)}


def needs_server(name: str) -> bool:
    """Whether `name` is a registered backend that runs a served model (timed through a local server)."""
    return name in BACKENDS and BACKENDS[name].needs_server


def get_backend(name: str) -> type[Runner]:
    """The runner class of a backend; an unknown or unavailable one is a UserError with the install hint."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    cls = BACKENDS[name]
    problem = cls.unavailable()
    if problem:
        raise UserError(f"backend {name} is not available: {problem}")
    return cls
