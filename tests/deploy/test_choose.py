"""The deployment chosen for the user: the fastest pruned deployment within the validation error budget (or the
named target's) against the fastest dense one; the report's rows, the report stage's key and the headline JSON."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.conftest import LENET300, ROOT, assert_user_error, run_cli
from tests.record_examples import summary_of
from vib_deploy.config import Target, config_to_yaml, load_config
from vib_deploy.deploy.choose import choice_markdown, choice_rows, choose
from vib_deploy.records import QuantizedModel, QuantizeRecord, RunSummary
from vib_deploy.runs.directory import RunDir
from vib_deploy.stages.registry import get_stage

DENSE_VAL = 0.010  # the dense fp32 net's validation error: the budget is 1.00% + 0.50 pt


def _rec(backend, variant, p50, precision="fp32", batch=64, error=None):
    r = {"backend": backend, "batch": batch, "variant": variant, "precision": precision, "p50_ms": p50}
    r |= {"p90_ms": p50, "p99_ms": p50, "mean_ms": p50, "throughput": batch / p50 * 1e3, "peak_memory_bytes": None}
    return r | ({"error": error} if error is not None else {})


def _int8(val_errors: dict[str, dict[str, float]] | None) -> QuantizeRecord:
    def model(variant: str) -> QuantizedModel:
        val = None if val_errors is None else val_errors[variant]
        test = {e: 0.5 for e in ("onnxruntime", "openvino")}
        return QuantizedModel(f"{variant}_int8.onnx", 1, 4, test, 0.01, 300, val)

    cal = {"split": "train", "images": 300, "method": "minmax"}
    return QuantizeRecord(
        cal, "QDQ", "int8 per channel", "uint8", ["onnxruntime", "openvino"], {v: model(v) for v in ("dense", "pruned")}
    )


def _summary(records, pruned_val: float | None = 0.012, int8_val=None) -> RunSummary:
    """Dense: validation error 1.00%; pruned fp32: `pruned_val`; INT8 per variant and engine: `int8_val`."""
    s = summary_of(records, ([20, 50, 500], DENSE_VAL), ([4, 9, 60], 0.011), 10.0)
    s = dataclasses.replace(s, pruned=dataclasses.replace(s.pruned, val_error=pruned_val))
    return dataclasses.replace(s, quantize=_int8(int8_val)) if int8_val is not None else s


MATRIX = [
    _rec("onnxruntime", "dense", 4.0),
    _rec("onnxruntime", "pruned", 1.0),
    _rec("openvino", "dense", 3.0),
    _rec("openvino", "pruned", 1.2),
    _rec("onnxruntime", "dense", 2.0, "int8", error=0.03),
    _rec("onnxruntime", "pruned", 0.5, "int8", error=0.04),
    _rec("openvino", "dense", 2.5, "int8", error=0.011),
    _rec("openvino", "pruned", 0.8, "int8", error=0.013),
    _rec("onnxruntime", "pruned_reduced", 0.1),  # takes kept pixels: never a candidate
    _rec("onnxruntime", "pruned", 0.05, batch=1),  # another batch
    _rec("onnxruntime", "dense", 0.5, batch=1),
]
INT8_VAL = {
    "dense": {"onnxruntime": 0.030, "openvino": 0.012},  # ORT's dense int8 is over the budget
    "pruned": {"onnxruntime": 0.040, "openvino": 0.014},  # ORT's pruned int8 (the fastest) is over it
}
ALL_OVER = {**INT8_VAL, "pruned": {"onnxruntime": 0.040, "openvino": 0.030}}  # with pruned fp32 at 3%: no pruned one


def test_a_faster_deployment_over_the_budget_is_not_chosen():
    c = choose(_summary(MATRIX, int8_val=INT8_VAL), None, 0.005)
    assert c.batch == 64 and c.budget == pytest.approx(0.015)
    assert c.chosen is not None and (c.chosen.engine, c.chosen.precision, c.chosen.variant) == (
        "openvino",
        "int8",
        "pruned",
    )
    assert c.chosen.val_error == 0.014 and c.chosen.error == 0.013  # validation chose; test is reported
    # the dense side: ORT int8 (2.0 ms) is over the budget too; OV int8 (2.5 ms) is the fastest within it
    assert c.best_dense is not None and (c.best_dense.engine, c.best_dense.precision) == ("openvino", "int8")
    assert c.speedup == pytest.approx(2.5 / 0.8) and c.measured_over_ideal == pytest.approx(2.5 / 0.8 / 10.0)
    assert c.why_none is None and c.notes == []
    # a looser budget lets the faster one in
    loose = choose(_summary(MATRIX, int8_val=INT8_VAL), None, 0.05)
    assert loose.chosen is not None and (loose.chosen.engine, loose.chosen.precision) == ("onnxruntime", "int8")
    assert loose.best_dense is not None and loose.best_dense.p50_ms == 2.0


def test_openvino_int8_by_nncf_is_judged_by_its_own_validation_error_and_named_so():
    """quantize.openvino: nncf: OpenVINO's INT8 is NNCF's IR, with its own errors; ONNX Runtime keeps the QDQ file's."""
    from vib_deploy.deploy.deploy_matrix import full_records, label, render_matrix
    from vib_deploy.records import NncfModel

    over = {**INT8_VAL, "pruned": {"onnxruntime": 0.040, "openvino": 0.030}}  # the QDQ file on OV: over the budget
    s = _summary(MATRIX, int8_val=over)
    assert choose(s, Target("openvino", "int8", 64), 0.005).chosen is None
    made = NncfModel("pruned_int8.xml", 9, 0.012, 0.013, 0.012, 0.015, 0.003, ["a", "b", "c"], ["c"], {})
    quant = s.quantize
    assert quant is not None
    pruned = dataclasses.replace(quant.variants["pruned"], openvino=made)
    s = dataclasses.replace(s, quantize=dataclasses.replace(quant, variants={**quant.variants, "pruned": pruned}))
    c = choose(s, None, 0.005)
    assert c.chosen is not None and (c.chosen.engine, c.chosen.precision, c.chosen.val_error) == (
        "openvino",
        "int8",
        0.013,
    )
    assert c.chosen.method == "NNCF, 1 op kept fp32" and c.best_dense is not None and c.best_dense.method is None
    assert dict(choice_rows(c))["chosen (deploy.target auto, b64)"].startswith(
        "OV int8 (NNCF, 1 op kept fp32) pruned 0.800 ms"
    )
    assert {
        (r["backend"], r["method"]) for r in full_records(s) if r["precision"] == "int8" and r["variant"] == "pruned"
    } == {
        ("onnxruntime", None),
        ("openvino", "NNCF, 1 op kept fp32"),
    }
    b1 = choose(s, Target("openvino", "int8", 64), 0.005)
    assert b1.chosen is not None and b1.chosen.p50_ms == 0.8  # the named target is now within the budget
    ov = next(
        r for r in full_records(s) if (r["backend"], r["precision"], r["variant"]) == ("openvino", "int8", "pruned")
    )
    assert label(ov) == "openvino int8 (NNCF, 1 op kept fp32) pruned"  # the report's headlines and matrix
    matrix = render_matrix(s)
    assert (
        "OpenVINO INT8: NNCF with accuracy control" in matrix
        and "| pruned | 1.20% | 1.50% | 0.30 pt | 1.30% |" in matrix
    )


def test_the_budget_is_on_validation_not_test():
    # OV int8 pruned has a test error (1.3%) within 0.5 pt of dense, but its validation error (2.0%) is not
    c = choose(_summary(MATRIX, int8_val={**INT8_VAL, "pruned": {"onnxruntime": 0.04, "openvino": 0.020}}), None, 0.005)
    assert c.chosen is not None and (c.chosen.engine, c.chosen.precision) == ("onnxruntime", "fp32")


def test_a_named_target_is_obeyed():
    s = _summary(MATRIX, int8_val=INT8_VAL)
    c = choose(s, Target("openvino", "fp32", 64), 0.005)
    assert c.target == "openvino-fp32@64"
    assert c.chosen is not None and (c.chosen.engine, c.chosen.precision, c.chosen.p50_ms) == ("openvino", "fp32", 1.2)
    assert c.best_dense is not None and c.best_dense.p50_ms == 2.5  # still the fastest dense within the budget
    at_1 = choose(s, Target("onnxruntime", "fp32", 1), 0.005)
    assert at_1.batch == 1 and at_1.chosen is not None and at_1.chosen.p50_ms == 0.05
    assert at_1.speedup == pytest.approx(10.0)
    # a named target over the budget is not taken: no choice, said so
    over = choose(s, Target("onnxruntime", "int8", 64), 0.005)
    assert over.chosen is None and over.speedup is None and over.why_none is not None
    assert "no pruned deployment within the error budget" in over.why_none and "ORT int8 pruned" in over.why_none


def test_nothing_within_the_budget_is_said_plainly():
    c = choose(_summary(MATRIX, pruned_val=0.03, int8_val=ALL_OVER), None, 0.005)
    assert c.chosen is None and c.best_dense is not None
    rows = dict(choice_rows(c))
    assert rows["chosen (deploy.target auto, b64)"].startswith("none: no pruned deployment within the error budget")
    assert "chosen speedup" not in rows
    assert rows["error budget (validation)"] == "1.00% (dense fp32) + 0.50 pt = 1.50%"
    assert "no pruned deployment within the error budget" in choice_markdown(c)


def test_runs_without_validation_errors_leave_those_deployments_out():
    # a quantize.json made before val_error: no INT8 deployment is considered, and the choice says so
    c = choose(dataclasses.replace(_summary(MATRIX), quantize=_int8(None)), None, 0.005)
    assert c.chosen is not None and (c.chosen.engine, c.chosen.precision) == ("onnxruntime", "fp32")
    assert len(c.notes) == 1 and "quantize stage" in c.notes[0] and "openvino int8 pruned" in c.notes[0]
    # a prune.json made before val_error, no finetune: the VIB net's (exact pruning), unless widths were rounded
    s = _summary(MATRIX, pruned_val=None)
    assert choose(s, None, 0.5).chosen.val_error == s.vib.val_error  # type: ignore[union-attr]
    rounded = choose(dataclasses.replace(s, pruned=dataclasses.replace(s.pruned, round_to=8)), None, 0.5)
    assert rounded.chosen is None and "prune stage" in rounded.notes[0]


def test_the_choice_reads_back_from_metrics_json(tmp_path):
    s = _summary(MATRIX, int8_val=INT8_VAL)
    s = dataclasses.replace(s, choice=choose(s, None, 0.005))
    s.write(tmp_path / "metrics.json")
    back = RunSummary.from_json(json.loads((tmp_path / "metrics.json").read_text()))
    assert back == s and back.choice is not None and back.choice.chosen == s.choice.chosen  # type: ignore[union-attr]
    old = {k: v for k, v in s.to_json().items() if k != "choice"}  # a metrics.json made before the choice
    assert RunSummary.from_json(old).choice is None


def test_deploy_settings_key_the_report_only_when_set():
    report = get_stage("report")
    assert report.section(load_config(ROOT / LENET300)) == {}  # runs made before deploy.* stay cached
    assert report.section(load_config(ROOT / LENET300, ["deploy.max_error_increase=0.01"])) == {
        "deploy": {"max_error_increase": 0.01}
    }
    assert report.section(load_config(ROOT / LENET300, ["deploy.target=onnxruntime-fp32@1"])) == {
        "deploy": {"target": "onnxruntime-fp32@1"}
    }


def _run_dir(tmp_path, name, summary):
    run_dir = tmp_path / name
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(config_to_yaml(load_config(ROOT / LENET300, [f"name={name}"])))
    summary.write(run_dir / "metrics.json")
    RunDir(run_dir).commit("report", "key", ["metrics.json"])
    return run_dir


def test_headline_json(tmp_path):
    within = _summary(MATRIX, int8_val=INT8_VAL)
    over = _summary(MATRIX, pruned_val=0.03, int8_val=ALL_OVER)  # no pruned deployment within 0.5 pt
    runs = [_run_dir(tmp_path, "a", within), _run_dir(tmp_path, "b", over)]
    out = tmp_path / "docs" / "real-width.json"  # its folder is made
    proc = run_cli("headline", *map(str, runs), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert [(h["run"], h["batch"]) for h in data] == [("a", 1), ("a", 64), ("b", 1), ("b", 64)]
    first = data[1]
    assert set(first) == {
        "run",
        "run_dir",
        "seed",
        "model",
        "batch",
        "ideal_speedup",
        "dense_fp32_error",
        "best_dense",
        "best_pruned",
    }
    assert [h["run_dir"] for h in data] == [str(runs[0])] * 2 + [str(runs[1])] * 2 and first["seed"] == 0
    assert first["model"] == "lenet5" and first["ideal_speedup"] == 10.0 and first["dense_fp32_error"] == DENSE_VAL
    assert first["best_dense"] == {"engine": "openvino", "precision": "int8", "p50_ms": 2.5, "error": 0.011}
    assert first["best_pruned"] == {
        "engine": "openvino",
        "precision": "int8",
        "p50_ms": 0.8,
        "error": 0.013,  # the TEST error (its validation error, 1.4%, chose it)
        "widths": [4, 9, 60],
    }
    assert data[0]["best_pruned"]["p50_ms"] == 0.05 and data[0]["best_dense"]["p50_ms"] == 0.5  # batch 1
    assert data[3]["best_pruned"] is None and data[3]["best_dense"] is not None


def test_headline_of_a_folder_that_is_no_run_is_one_line(tmp_path):
    assert_user_error(run_cli("headline", str(tmp_path), "--out", str(tmp_path / "h.json")), "is not a vib-deploy run")
    assert not (tmp_path / "h.json").exists()
    run = _run_dir(tmp_path, "a", _summary(MATRIX))
    assert_user_error(run_cli("headline", str(run), "--out", str(tmp_path)), f"--out {tmp_path} is a folder")
