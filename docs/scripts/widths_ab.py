"""Dense vs VIB widths vs `--round-to auto` widths, timed in one process with every runner alternating.

Usage: python docs/scripts/widths_ab.py RUN_VIB RUN_AUTO   (RUN_AUTO: a copy of RUN_VIB after
`vib-deploy prune RUN_AUTO --round-to auto && vib-deploy export RUN_AUTO`). Prints p50 per engine and batch.
"""

import sys
from pathlib import Path

from vib_deploy.bench.inprocess import Variant, run_bench
from vib_deploy.config import load_config
from vib_deploy.data.datasets import splits_of

a, b = Path(sys.argv[1]), Path(sys.argv[2])
images = splits_of(load_config(a / "config.yaml").data).x_test[:512]
variants = [
    Variant("dense", {".onnx": a / "dense.onnx"}),
    Variant("pruned_vib", {".onnx": a / "pruned.onnx"}),
    Variant("pruned_auto", {".onnx": b / "pruned.onnx"}),
]
for r in run_bench(
    variants, images, ["onnxruntime", "openvino"], [1, 64, 256], threads=1, rounds=20, iters=50, warmup=20, memory=False
):
    print(r["batch"], r["backend"], r["variant"], f"{r['p50_ms']:.4f}")
