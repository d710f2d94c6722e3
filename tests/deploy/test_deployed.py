"""deployed.deployables: which file each variant is made from, its input, error and widths, decided in one place."""

from __future__ import annotations

import numpy as np
import pytest

from vib_deploy.config import parse_config
from vib_deploy.deploy.deployed import deployables, reduce_input
from vib_deploy.records import Cost, FinetuneRecord, PruneRecord, TrainDenseRecord
from vib_deploy.runs.directory import RunDir


def _run(tmp_path, kept_pixels, tuned: bool) -> RunDir:
    run = RunDir(tmp_path)
    files = [PruneRecord.FILE, TrainDenseRecord.FILE]
    PruneRecord([3, 20, 10], [784, 300, 100], kept_pixels, 0.05, 300, Cost(9, 9), Cost(1, 1)).write(run.file(files[0]))
    TrainDenseRecord([], 1, 1.0, 0.02, 0.02, 300).write(run.file(files[1]))
    if tuned:
        FinetuneRecord(2, 1e-3, 0.0, [], 1, 1.0, None, 0.05, 0.03, 0.03).write(run.file(FinetuneRecord.FILE))
        files.append(FinetuneRecord.FILE)
    run.add_artifacts("test", files)
    return run


@pytest.mark.parametrize("tuned", [False, True], ids=["pruned", "finetuned"])
def test_the_deployed_net_and_its_error_follow_the_finetune_stage(tmp_path, tuned):
    config = parse_config(
        {"name": "t", "model": {"name": "lenet300"}, "train": {"finetune": {"epochs": int(tuned)}}}, "t"
    )
    got = {d.name: d for d in deployables(_run(tmp_path, [1, 5, 9], tuned), config)}
    net = "finetuned" if tuned else "pruned"
    assert [d.model_file for d in got.values()] == ["dense.pt", f"{net}.pt", f"{net}_reduced.pt"]
    assert [d.onnx for d in got.values()] == ["dense.onnx", "pruned.onnx", "pruned_reduced.onnx"]
    assert got["dense"].error == 0.02 and got["pruned"].error == got["pruned_reduced"].error == (
        0.03 if tuned else 0.05
    )
    assert got["dense"].widths == [784, 300, 100] and got["pruned_reduced"].widths == [3, 20, 10]
    assert got["pruned"].input_shape == (1, 28, 28) and got["pruned_reduced"].input_shape == (3,)


def test_only_an_input_gated_net_has_a_reduced_variant(tmp_path):
    config = parse_config({"name": "t", "model": {"name": "lenet5"}}, "t")
    assert [d.name for d in deployables(_run(tmp_path, None, False), config)] == ["dense", "pruned"]


def test_the_reduced_input_is_the_kept_pixels_of_each_image():
    x = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    assert reduce_input(x, [0, 5, 15]).tolist() == [[0, 5, 15], [16, 21, 31]]
    assert reduce_input(x, None) is x


def _quantized(nncf: bool):
    from vib_deploy.records import NncfModel, QuantizedModel

    made = NncfModel("pruned_int8.xml", 9, 0.021, 0.022, 0.02, 0.025, 0.005, ["a", "b"], ["b"], {}) if nncf else None
    errors, val = {"onnxruntime": 0.03, "openvino": 0.031}, {"onnxruntime": 0.025, "openvino": 0.026}
    return QuantizedModel("pruned_int8.onnx", 1, 4, errors, 0.02, 300, val, made)


def test_openvino_int8_is_the_nncf_ir_where_made_and_the_qdq_file_elsewhere():
    from vib_deploy.deploy.deployed import Int8Deployment, int8_deployment

    qdq = Int8Deployment("pruned_int8.onnx", 0.031, 0.026, None)
    assert int8_deployment(_quantized(False), "openvino") == qdq
    assert int8_deployment(_quantized(True), "openvino") == Int8Deployment(
        "pruned_int8.xml", 0.021, 0.022, "NNCF, 1 op kept fp32"
    )
    for nncf in (False, True):  # ONNX Runtime keeps the QDQ file and its own figures
        assert int8_deployment(_quantized(nncf), "onnxruntime") == Int8Deployment("pruned_int8.onnx", 0.03, 0.025, None)


@pytest.mark.parametrize("nncf", [False, True], ids=["qdq", "nncf"])
def test_the_bench_times_the_nncf_ir_on_openvino(tmp_path, nncf):
    from pathlib import Path

    from vib_deploy.stages.deploy import int8_variant

    run = type("Run", (), {"verified": staticmethod(lambda name: Path("/run") / name)})()
    v = int8_variant(run, "pruned", _quantized(nncf), [4, 9])
    own = {"openvino": Path("/run/pruned_int8.xml")} if nncf else {}
    assert v.artifacts == {".onnx": Path("/run/pruned_int8.onnx"), **own} and v.precision == "int8"
    assert v.error == {"onnxruntime": 0.03, "openvino": 0.021 if nncf else 0.031} and v.widths == [4, 9]
