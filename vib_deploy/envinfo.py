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
    from vib_deploy.backends.openvino import OpenVinoRunner, cpu_info, openvino_version

    cpu, missing = cpu_info(), OpenVinoRunner.unavailable()
    lines.append(
        f"openvino: {openvino_version() if not missing else 'not available: ' + missing}; CPU {cpu['cpu']} "
        f"({' '.join(cpu['isa']) or 'no ISA flags read'})"
    )
    from vib_deploy.backends.tensorrt import tensorrt_version, unavailable

    problem = unavailable()
    lines.append(
        f"tensorrt: {tensorrt_version() or 'not installed'}; engines "
        f"{'can be built' if not problem else 'not available: ' + problem}"
    )
    from vib_deploy.backends import BACKENDS
    from vib_deploy.gpu_bench import gpu_facts

    lines.append(f"NVIDIA driver: {gpu_facts('cpu')['driver']}")
    for name in ("torch-cuda", "torch-cuda-graphs", "aotinductor", "onnxruntime-cuda", "onnxruntime-tensorrt"):
        lines.append(f"{name} on cuda: {getattr(BACKENDS[name], 'unavailable_on')('cuda') or 'available'}")  # noqa: B009
    return lines
