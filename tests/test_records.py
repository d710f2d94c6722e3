"""Stage records (vib_deploy/records.py): files written before records existed read back whole; newer ones are refused."""

from __future__ import annotations

import json

import pytest

from vib_deploy.errors import UserError
from vib_deploy.records import RECORD_VERSION, BenchFile, PruneRecord

# prune.json as the stage wrote it before records.py (a LeNet-300-100 run: input gate, Sequential model)
OLD_VIB_PRUNE = {
    "tolerance": 1e-05,
    "logit_scale": 23.5,
    "samples": 300,
    "vib_fp32_rounding": 3.8e-06,
    "max_abs_diff": 3.8e-06,
    "max_abs_diff_float64": 7.1e-15,
    "argmax_agreement": 1.0,
    "reduced_max_abs_diff": 3.8e-06,
    "reduced_max_abs_diff_float64": 7.1e-15,
    "reduced_argmax_agreement": 1.0,
    "architecture": [3, 2, 2],
    "dense_architecture": [784, 300, 100],
    "kept_indices": [[1, 5, 9], [0, 3], [7, 8]],
    "kept_pixels": [1, 5, 9],
    "scales_left": 0,
    "input_shape": [1, 28, 28],
    "pruning": None,
    "test_error": 0.05,
    "dense": {"flops": 532400, "params": 266610},
    "pruned": {"flops": 3000, "params": 1500},
}
# ... and as studies/peers.py wrote it (slimming adds scales_left)
OLD_PEER_PRUNE = {
    "scales_left": 0,
    "method": "slimming",
    "vib_run": "runs/x",
    "target_flops": 3000,
    "flops_mismatch": 0.01,
    "architecture": [784, 20, 10],
    "dense_architecture": [784, 300, 100],
    "kept_pixels": None,
    "test_error": 0.07,
    "test_error_before_finetune": 0.5,
    "samples": 300,
    "input_shape": [1, 28, 28],
    "sparsity_epochs": 1,
    "finetune_epochs": 1,
    "history": {"sparsity": [{"epoch": 1}], "finetune": [{"epoch": 1}]},
    "seconds": 2.5,
    "dense": {"flops": 532400, "params": 266610},
    "pruned": {"flops": 3030, "params": 1600},
}
OLD_BENCH = {
    "records": [
        {
            "backend": "onnxruntime",
            "device": "cpu",
            "batch": 1,
            "variant": "dense",
            "p50_ms": 0.2,
            "p90_ms": 0.3,
            "p99_ms": 0.4,
            "mean_ms": 0.25,
            "throughput": 4000.0,
            "peak_memory_bytes": None,
            "threads": 1,
            "calls": 30,
        },
        {
            "backend": "onnxruntime",
            "device": "cpu",
            "batch": 1,
            "variant": "pruned",
            "p50_ms": 0.1,
            "p90_ms": 0.2,
            "p99_ms": 0.3,
            "mean_ms": 0.15,
            "throughput": 6000.0,
            "peak_memory_bytes": 123,
            "threads": 1,
            "calls": 30,
            "precision": "int8",
            "widths": [4, 9],
        },
    ],  # a key this version does not know (widths) is kept
    "speedup": [{"backend": "onnxruntime", "batch": 1, "variant": "pruned", "speedup": 2.0}],
    "machine": {"cpu": "x"},
}


@pytest.mark.parametrize("old", [OLD_VIB_PRUNE, OLD_PEER_PRUNE], ids=["vib", "peer"])
def test_an_old_prune_json_reads_back_whole(old):
    record = PruneRecord.from_json(json.loads(json.dumps(old)))
    assert record.record_version == 0
    assert record.to_json() == {**old, "record_version": 0}  # every key and value survives the round trip


def test_vib_and_peer_prune_records_are_told_apart():
    vib, peer = PruneRecord.from_json(OLD_VIB_PRUNE), PruneRecord.from_json(OLD_PEER_PRUNE)
    assert vib.exact is not None and vib.peer is None and vib.exact.reduced_max_abs_diff == 3.8e-06
    assert peer.peer is not None and peer.exact is None and peer.peer.method == "slimming"
    assert (vib.pruned.flops, peer.dense.params) == (3000, 266610)


def test_missing_fields_get_their_defaults():
    old = {k: v for k, v in OLD_VIB_PRUNE.items() if k != "input_shape"}  # files older than input_shape: LeNets
    assert PruneRecord.from_json(old).input_shape == (1, 28, 28)


def test_a_new_record_carries_its_version_and_reads_back(tmp_path):
    record = PruneRecord.from_json(OLD_VIB_PRUNE)
    new = PruneRecord(**{**record.__dict__, "record_version": RECORD_VERSION})
    new.write(tmp_path / "prune.json")
    data = json.loads((tmp_path / "prune.json").read_text())
    assert data["record_version"] == RECORD_VERSION and PruneRecord.from_json(data) == new


def test_a_record_from_a_newer_version_is_refused():
    with pytest.raises(UserError, match="record_version 99"):
        PruneRecord.from_json({**OLD_VIB_PRUNE, "record_version": 99})
    with pytest.raises(UserError, match="bench.json has record_version 99"):
        BenchFile.from_json({**OLD_BENCH, "record_version": 99})


def test_bench_file_round_trip_and_keys():
    bench = BenchFile.from_json(json.loads(json.dumps(OLD_BENCH)))
    assert bench.to_json() == {**OLD_BENCH, "record_version": 0}
    assert bench.p50_by_key() == {"onnxruntime/b1/dense": 0.2, "onnxruntime/b1/pruned/int8": 0.1}  # fp32 keys as before
    assert bench.records[0].precision is None and bench.records[1].precision == "int8"
    assert bench.records[1].extra == {"widths": [4, 9]}
