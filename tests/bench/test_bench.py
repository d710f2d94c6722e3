"""The benchmark: alternating order, percentiles, speedups, real runners."""

import numpy as np
import pytest
import torch

from vib_deploy.bench.inprocess import Variant, make_input, run_bench, speedups
from vib_deploy.nets import save_model
from vib_deploy.zoo import gated_model, strip_gates


def test_speedups_are_dense_fp32_p50_over_each_variant_p50():
    recs = [
        {"backend": "ort", "batch": 1, "variant": "dense", "p50_ms": 4.0},
        {"backend": "ort", "batch": 1, "variant": "pruned", "p50_ms": 1.0},
        {"backend": "ort", "batch": 1, "variant": "pruned", "precision": "int8", "p50_ms": 0.5},
    ]
    assert speedups(recs) == [
        {"backend": "ort", "batch": 1, "variant": "pruned", "precision": "fp32", "speedup": 4.0},
        {"backend": "ort", "batch": 1, "variant": "pruned", "precision": "int8", "speedup": 8.0},
    ]


def test_reduced_input_layout():
    images = np.arange(2 * 784, dtype=np.float32).reshape(2, 1, 28, 28)
    x = make_input(Variant("r", {}, [0, 5, 783]), images, batch=3)
    assert x.shape == (3, 3) and x[2, 1] == 5.0 and x[1, 2] == 784 + 783


def test_real_run_on_both_backends(tmp_path):
    from vib_deploy.deploy.export import export_onnx

    torch.manual_seed(0)
    dense = strip_gates(gated_model("lenet300")).eval()
    save_model(dense, tmp_path / "d.pt")
    export_onnx(dense, tmp_path / "d.onnx", (1, 28, 28), 18)
    v = Variant("dense", {".pt": tmp_path / "d.pt", ".onnx": tmp_path / "d.onnx"})
    images = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    recs = run_bench(
        [v], images, ["onnxruntime", "torch", "openvino"], [1, 4], threads=1, rounds=2, iters=3, warmup=1, memory=True
    )
    assert {(r["backend"], r["batch"]) for r in recs} == {
        (b, n) for b in ("onnxruntime", "torch", "openvino") for n in (1, 4)
    }
    for r in recs:
        assert (
            r["precision"] == "fp32"
            and r["bytes"] == v.artifacts[".pt" if r["backend"] == "torch" else ".onnx"].stat().st_size
        )
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["calls"] == 6
        assert r["throughput"] == pytest.approx(r["batch"] / (r["p50_ms"] / 1e3))  # the timing core's definition
        assert r["peak_memory_bytes"] > 0  # the model's own load + inference peak, not 0


def test_an_engines_own_file_is_timed_before_the_shared_onnx(tmp_path):
    """OpenVINO's INT8 from NNCF: the variant names OpenVINO's own IR, which it times (bytes: .xml + .bin), while
    ONNX Runtime times the ONNX file."""
    from vib_deploy.backends.openvino import save_ir, sidecar_path
    from vib_deploy.deploy.export import export_onnx
    from vib_deploy.runs.directory import atomic_write, atomic_write_json

    torch.manual_seed(0)
    net = strip_gates(gated_model("lenet300")).eval()
    onnx, xml = tmp_path / "d.onnx", tmp_path / "d.xml"
    export_onnx(net, onnx, (1, 28, 28), 18)
    atomic_write_json(sidecar_path(xml), save_ir(onnx, xml, lambda name, fn: atomic_write(tmp_path / name, fn)))
    v = Variant("dense", {".onnx": onnx, "openvino": xml}, precision="int8")
    images = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    recs = run_bench([v], images, ["onnxruntime", "openvino"], [1], 1, rounds=1, iters=2, warmup=0, memory=False)
    ir_bytes = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    assert {r["backend"]: r["bytes"] for r in recs} == {"onnxruntime": onnx.stat().st_size, "openvino": ir_bytes}
