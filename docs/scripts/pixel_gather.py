"""How the kept-pixel Gather of an input-gated MLP is written, and what each engine makes of it.

A pruned LeNet-300 takes the full image and keeps its pixels with a Gather. Written as `x.index_select(1, kept)`
(ONNX Gather on axis 1, the form exported before 2026-12-06), ONNX Runtime copies one float at a time; written as
`torch.gather(x, 1, kept.expand(B, -1))` (ONNX GatherElements, vib_deploy.model.layers.PixelSelect now) it does not. This
script exports both forms of a run's pruned net, checks each against the torch model on 512 real test images
(max |Δlogit| <= 1e-5, same argmax), and times them alternating in one process (the project's timing core, 1 thread):
ONNX Runtime and OpenVINO on the ONNX files, eager torch on the module, beside the kept-pixel-only net
(`pruned_reduced`, the floor: no Gather at all).

Usage: python docs/scripts/pixel_gather.py RUN   (RUN: a run directory of an input-gated net; nothing else running)
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from vib_deploy.backends import BACKENDS
from vib_deploy.config import read_run_config
from vib_deploy.data.datasets import splits_of
from vib_deploy.deploy.export import export_onnx
from vib_deploy.measure.timing import alternate, percentiles
from vib_deploy.model.layers import PixelSelect
from vib_deploy.nets import load_model


class Axis1(torch.nn.Module):
    """The kept pixels as a Gather on axis 1 (the form exported before 2026-12-06)."""

    def __init__(self, indices: torch.Tensor):
        super().__init__()
        self.register_buffer("indices", indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.indices)


def with_gather(model: torch.nn.Sequential, form: str) -> torch.nn.Sequential:
    out = torch.nn.Sequential(*model)
    for i, layer in enumerate(out):
        if isinstance(layer, PixelSelect) and form == "axis1":
            out[i] = Axis1(layer.indices)
    return out.eval()


def main(run: Path) -> None:
    torch.set_num_threads(1)
    config = read_run_config(run)
    x_test = splits_of(config.data).x_test[:512].astype(np.float32)
    pruned = load_model(run / "pruned.pt").float().eval()
    kept = next(layer.indices for layer in pruned if isinstance(layer, PixelSelect))
    reduced = load_model(run / "pruned_reduced.pt").float().eval()
    forms = {"axis1": with_gather(pruned, "axis1"), "elements": with_gather(pruned, "elements")}
    tmp = Path(tempfile.mkdtemp())
    runners = {}
    for form, model in {**forms, "reduced": reduced}.items():
        shape = (len(kept),) if form == "reduced" else tuple(x_test.shape[1:])
        path = tmp / f"{form}.onnx"
        export_onnx(model, path, shape, 18, {})
        for engine in ("onnxruntime", "openvino"):
            runners[engine, form] = BACKENDS[engine](path, threads=1)
            runners[engine, form].activate()
        x = x_test.reshape(len(x_test), -1)[:, kept.numpy()] if form == "reduced" else x_test
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).numpy()
        for engine in ("onnxruntime", "openvino"):
            out = runners[engine, form].infer(x)
            err = float(np.abs(out - ref).max())
            assert err <= 1e-5 and (out.argmax(1) == ref.argmax(1)).all(), (engine, form, err)
            print(f"{engine:11s} {form:7s}: max |Δlogit| {err:.1e} vs torch on 512 test images, same argmax")
    print(f"{run}: {len(kept)} kept pixels; p50 ms per call, 1 thread, 20 alternating rounds of 50 calls")
    print("| batch | engine | Gather on axis 1 (before) | GatherElements (now) | kept pixels only (floor) |")
    print("|---|---|---|---|---|")
    for batch in (1, 64, 256):
        x = np.concatenate([x_test] * (batch // len(x_test) + 1))[:batch]
        xr = np.ascontiguousarray(x.reshape(batch, -1)[:, kept.numpy()])
        calls = {}
        for (engine, form), r in runners.items():
            calls[engine, form] = lambda r=r, a=(xr if form == "reduced" else x): r.infer(a)
        for form, model in {**forms, "reduced": reduced}.items():
            t = torch.from_numpy(xr if form == "reduced" else x)
            calls["torch", form] = lambda m=model, t=t: torch.inference_mode()(m)(t)
        samples = alternate(calls, rounds=20, iters=50, warmup=200)
        for engine in ("onnxruntime", "openvino", "torch"):
            p50 = {form: percentiles(samples[engine, form])["p50_ms"] for form in ("axis1", "elements", "reduced")}
            print(f"| {batch} | {engine} | {p50['axis1']:.4f} | {p50['elements']:.4f} | {p50['reduced']:.4f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
