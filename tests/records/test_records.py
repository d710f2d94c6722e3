"""Stage records (vib_deploy/records/): every record round-trips; files written before records existed read back
whole; newer ones are refused; no module outside records/ reads a stage file or the raw manifest."""

from __future__ import annotations

import ast
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.record_examples import EXAMPLES
from vib_deploy.errors import UserError
from vib_deploy.records import (
    RECORD_VERSION,
    RECORDS,
    STAGE_FILES,
    BenchFile,
    NncfModel,
    PruneRecord,
    QuantizeRecord,
)
from vib_deploy.runs.directory import RunDir

PACKAGE = Path(__file__).resolve().parents[2] / "vib_deploy"

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


def _int8(variant: str, error: float, val_error: float) -> dict:
    return {
        "bytes": 198672,
        "error": {"onnxruntime": error, "openvino": error},
        "file": f"{variant}_int8.onnx",
        "fp32_bytes": 476322,
        "fp32_error": 0.1112,
        "test_samples": 10000,
        "val_error": {"onnxruntime": val_error, "openvino": val_error},
    }


# quantize.json of a run made by main before NNCF (runs/r20cpu, its figures rounded)
OLD_QUANTIZE = {
    "activations": "uint8",
    "calibration": {"images": 300, "method": "minmax", "split": "train"},
    "dense": _int8("dense", 0.1111, 0.0925),
    "engines": ["onnxruntime", "openvino"],
    "format": "QDQ",
    "pruned": _int8("pruned", 0.1118, 0.099),
    "record_version": 1,
    "weights": "int8 per channel",
}


def test_an_old_quantize_json_reads_back_whole_without_an_nncf_model():
    record = QuantizeRecord.from_json(json.loads(json.dumps(OLD_QUANTIZE)))
    assert [q.openvino for q in record.variants.values()] == [None, None]
    assert json.loads(json.dumps(record.to_json())) == OLD_QUANTIZE  # no key added, none lost


def test_an_nncf_model_round_trips_in_quantize_json(tmp_path):
    ops = ["node_Conv_1/WithoutBiases", "node_add_3", "node_linear/WithoutBiases"]
    made = NncfModel("pruned_int8.xml", 9, 0.112, 0.097, 0.094, 0.099, 0.005, ops, ops[1:], {"quantizer": "nncf 3.4.0"})
    record = QuantizeRecord.from_json(
        {**OLD_QUANTIZE, "pruned": {**_int8("pruned", 0.1, 0.1), "openvino": made.to_json()}}
    )
    assert record.variants["pruned"].openvino == made and record.variants["dense"].openvino is None
    assert made.method == "NNCF, 2 ops kept fp32" and NncfModel(**{**made.__dict__, "kept_fp32": ops[:1]}).method == (
        "NNCF, 1 op kept fp32"
    )
    record.write(tmp_path / QuantizeRecord.FILE)
    assert QuantizeRecord.from_json(json.loads((tmp_path / QuantizeRecord.FILE).read_text())) == record


def test_every_record_has_an_example():
    assert set(EXAMPLES) == set(RECORDS)


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.FILE)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_record_round_trips_through_its_file(cls, data):
    record = EXAMPLES[cls](data.draw)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp))
        record.write(run.file(cls.FILE))
        run.add_artifacts("test", [cls.FILE])
        assert json.loads(run.file(cls.FILE).read_text())["record_version"] == RECORD_VERSION
        assert cls.read(run) == record


# -- no module outside records/ reads a stage file or the raw manifest -------------------------------------------
RAW_READERS = {"read_json", "manifest"}  # RunDir.read_json: a stage file's dict; RunDir.manifest: the raw manifest
ALLOWED = {"records", "runs"}  # records/ reads the stage files; runs/ owns the manifest


def violations(source: str, where: str) -> list[str]:
    """Where `source` spells a stage file's name or calls a raw reader (`x.read_json(...)`, `x.manifest()`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and node.value in STAGE_FILES:
            found.append(f"{where}:{node.lineno} names {node.value} (use its record's FILE, read and write)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in RAW_READERS:
            found.append(f"{where}:{node.lineno} calls .{node.func.attr}() (use a record, or RunDir.view())")
        elif isinstance(node, ast.JoinedStr) and isinstance(node.values[-1], ast.Constant):
            if str(node.values[-1].value).endswith(".json") and any(
                f.endswith(node.values[-1].value) for f in STAGE_FILES
            ):
                found.append(f"{where}:{node.lineno} builds a stage file's name")
    return found


def test_only_records_read_stage_files():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] not in ALLOWED:
            found += violations(path.read_text(), str(rel))
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "planted",
    [
        'from vib_deploy.runs.directory import RunDir\nerror = RunDir(d).read_json("train-dense.json")["test_error"]',
        'import json\nerror = json.loads((run_dir / "prune.json").read_text())["test_error"]',
        'stages = run.manifest()["stages"]',
        'history = run.read_json(f"{stage}.json")["history"]',
        'from vib_deploy.runs.directory import read_json_file\nm = read_json_file(path / "metrics.json")',
    ],
)
def test_a_planted_read_is_caught(planted, tmp_path):
    module = tmp_path / "planted.py"
    module.write_text(planted + "\n")
    assert violations(module.read_text(), "planted.py")


# -- the records of run directories made before this version (the code of main when records/ was written) ----------
MAIN_RUNS = sorted(
    (Path(__file__).resolve().parents[1] / "fixtures").glob("main-run-*")
)  # a LeNet-5 run, finetune off and on


def _unversioned(x):
    if isinstance(x, dict):
        return {k: _unversioned(v) for k, v in x.items() if k != "record_version"}
    return [_unversioned(v) for v in x] if isinstance(x, list) else x


@pytest.mark.parametrize("run_dir", MAIN_RUNS, ids=lambda p: p.name)
def test_every_record_of_a_run_made_by_main_reads_back_whole(run_dir):
    files = {p.name for p in run_dir.glob("*.json")}
    assert files <= STAGE_FILES and {"train-dense.json", "prune.json", "metrics.json"} <= files
    for cls in RECORDS:
        if (run_dir / cls.FILE).exists():
            old = json.loads((run_dir / cls.FILE).read_text())
            assert _unversioned(cls.from_json(old).to_json()) == _unversioned(old), cls.FILE


@pytest.mark.parametrize("run_dir", MAIN_RUNS, ids=lambda p: p.name)
def test_the_summary_of_a_run_made_by_main_is_its_metrics_json(run_dir, tmp_path):
    from vib_deploy.config import load_config
    from vib_deploy.report.summary import build_summary

    run = RunDir(tmp_path)
    for path in run_dir.glob("*.json"):
        if path.name != "metrics.json":
            (tmp_path / path.name).write_bytes(path.read_bytes())
            run.commit(path.name.removesuffix(".json"), "key", [path.name])
    summary = build_summary(run, load_config(run_dir / "config.yaml"))
    old = json.loads((run_dir / "metrics.json").read_text())
    new = summary.to_json()
    assert (
        new.pop("choice")["target"] == "auto"
    )  # the one key added since: the deployment chosen (tests/deploy/test_choose.py)
    assert _unversioned(new) == {**_unversioned(old), "version": summary.version}
