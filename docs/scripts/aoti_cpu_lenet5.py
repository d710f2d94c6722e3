"""Is AOTInductor on this CPU an engine for thin nets? LeNet-5 dense (20-50-500) and pruned (3-8-53), random weights
(timing does not depend on them), batch 64, 1 thread: ONNX Runtime fp32 vs an AOTInductor package vs eager torch,
alternating rounds in one process (15 rounds of 20 calls each, p50 of the rounds' per-call means).

Usage: OMP_NUM_THREADS=1 python docs/scripts/aoti_cpu_lenet5.py   (nothing else running; ~40 s, two compiles)
"""

import io
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn


def lenet5(c1: int, c2: int, fc: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, c1, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 16, fc), nn.ReLU(), nn.Linear(fc, 10),
    ).eval()  # fmt: skip


def engines(model: nn.Module, x: torch.Tensor, tmp: Path) -> dict:
    """The model as three callables on `x`: ONNX Runtime, AOTInductor (compiled here), eager torch."""
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, input_names=["input"], dynamic_axes={"input": {0: "b"}}, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    batch = torch.export.Dim("b", min=1, max=1024)
    exported = torch.export.export(model, (torch.zeros(2, *x.shape[1:]),), dynamic_shapes=({0: batch},))
    t0 = time.perf_counter()
    aoti = torch._inductor.aoti_load_package(torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp)))
    print(f"  AOTInductor compile {time.perf_counter() - t0:.1f} s")
    xn = x.numpy()
    return {"ort": lambda: session.run(None, {"input": xn}), "aoti": lambda: aoti(x), "eager": lambda: model(x)}


def _array(out) -> np.ndarray:
    """An engine's output (a tensor, or a list holding one) as an array."""
    out = out[0] if isinstance(out, (list, tuple)) else out
    return out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name, widths in (("dense 20-50-500", (20, 50, 500)), ("pruned 3-8-53", (3, 8, 53))):
            model, x = lenet5(*widths), torch.randn(64, 1, 28, 28)
            print(name)
            fns = engines(model, x, Path(tmp) / f"{widths[0]}.pt2")
            ref = model(x).numpy()
            parity = {k: float(np.abs(_array(f()) - ref).max()) for k, f in fns.items()}
            print("  parity max |d| vs eager:", parity)
            times: dict[str, list[float]] = {k: [] for k in fns}
            for f in fns.values():
                for _ in range(20):
                    f()
            for _ in range(15):
                for k, f in fns.items():
                    t = time.perf_counter_ns()
                    for _ in range(20):
                        f()
                    times[k].append((time.perf_counter_ns() - t) / 20 / 1e6)
            print("  p50 ms at batch 64:", {k: round(float(np.median(v)), 4) for k, v in times.items()})


if __name__ == "__main__":
    main()
