"""Inference backends behind one tiny interface (`base.Runner`); the registry is data."""

from __future__ import annotations

from vib_deploy.backends.base import Runner
from vib_deploy.backends.onnxruntime import OnnxRuntimeRunner
from vib_deploy.backends.openvino import OpenVinoRunner
from vib_deploy.backends.tensorrt import TensorRTRunner
from vib_deploy.backends.torch import TorchRunner
from vib_deploy.errors import UserError

BACKENDS: dict[str, type[Runner]] = {"onnxruntime": OnnxRuntimeRunner, "torch": TorchRunner, "tensorrt": TensorRTRunner,
                                   "openvino": OpenVinoRunner}


def get_backend(name: str) -> type[Runner]:
    """The runner class of a backend; an unknown or unavailable one is a UserError with the install hint."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    cls = BACKENDS[name]
    problem = cls.unavailable()
    if problem:
        raise UserError(f"backend {name} is not available: {problem}")
    return cls
