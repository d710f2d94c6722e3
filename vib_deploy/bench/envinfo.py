"""`vib-deploy env`: what this machine offers -- torch, CUDA, ONNX Runtime providers, TensorRT, the GPU engines."""

from __future__ import annotations

import importlib.util
import platform


def environment() -> list[str]:
    """One line per fact; a library that is missing is said so, never an error."""
    import torch

    lines = [
        f"python {platform.python_version()}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"
    ]
    if torch.cuda.is_available():
        lines.append(
            f"GPU: {torch.cuda.get_device_name(0)} (CC {'.'.join(map(str, torch.cuda.get_device_capability(0)))})"
        )
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime

        lines.append(f"onnxruntime {onnxruntime.__version__}: {', '.join(onnxruntime.get_available_providers())}")
    else:
        lines.append("onnxruntime: not installed")
    from vib_deploy.backends.openvino import OpenVinoRunner, openvino_version
    from vib_deploy.measure.machine import cpu_facts

    cpu, missing = cpu_facts(), OpenVinoRunner.unavailable()
    lines.append(
        f"openvino: {openvino_version() if not missing else 'not available: ' + missing}; CPU {cpu.model} "
        f"({cpu.vector_isa}; flags {' '.join(cpu.isa) or 'none read'})"
    )
    from vib_deploy.backends.tensorrt import tensorrt_version, unavailable

    problem = unavailable()
    lines.append(
        f"tensorrt: {tensorrt_version() or 'not installed'}; engines "
        f"{'can be built' if not problem else 'not available: ' + problem}"
    )
    from vib_deploy.backends import device_backends
    from vib_deploy.bench.gpu_memory import gpu_facts

    lines.append(f"NVIDIA driver: {gpu_facts('cpu')['driver']}")
    for name, cls in device_backends().items():
        lines.append(f"{name} on cuda: {cls.unavailable_on('cuda') or 'available'}")
    return lines
