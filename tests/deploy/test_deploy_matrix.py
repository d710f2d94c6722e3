"""The deploy matrix and the honest headline: best dense vs best pruned across engines and precisions."""

import pytest

from tests.record_examples import summary_of
from vib_deploy.deploy.deploy_matrix import full_records, headline_short, headline_text, headlines, render_matrix


def _metrics(records):
    return summary_of(records, ([20, 50, 500], 0.01), ([4, 9, 60], 0.012), 10.0)


def _rec(backend, variant, p50, precision=None, batch=64, **extra):
    r = {
        "backend": backend,
        "batch": batch,
        "variant": variant,
        "p50_ms": p50,
        "p90_ms": p50 * 1.2,
        "p99_ms": p50 * 1.5,
        "mean_ms": p50 * 1.1,
        "throughput": batch / p50 * 1e3,
        "peak_memory_bytes": None,
        **extra,
    }
    if precision is not None:
        r["precision"] = precision
    return r


def test_a_slow_dense_baseline_does_not_flatter_the_pruned_net():
    records = [
        _rec("onnxruntime", "dense", 5.0, "fp32"),
        _rec("onnxruntime", "pruned", 0.5, "fp32"),
        _rec("openvino", "dense", 2.0, "fp32"),
        _rec("openvino", "pruned", 0.8, "fp32"),
        _rec("openvino", "pruned", 0.6, "int8", error=0.013),
    ]
    (h,) = headlines(_metrics(records))
    assert (h["dense"]["backend"], h["pruned"]["backend"], h["pruned"]["precision"]) == (
        "openvino",
        "onnxruntime",
        "fp32",
    )
    assert h["speedup"] == pytest.approx(4.0)  # 2.0 / 0.5, not ORT's 5.0 / 0.5
    assert "4.00× of an ideal 10.0× (measured/ideal 0.40), error 1.00% → 1.20%" in headline_text(h, 10.0)
    assert (
        headline_short(h, 10.0)
        == "OV fp32 dense 2.000 → ORT fp32 pruned 0.500 ms: 4.00× of 10.0× (0.40); 1.00% → 1.20%"
    )
    rows = {(r["backend"], r["precision"], r["variant"]): r for r in full_records(_metrics(records))}
    assert rows[("openvino", "int8", "pruned")]["speedup"] == pytest.approx(2.0 / 0.6)  # vs dense fp32, same engine
    assert rows[("openvino", "int8", "pruned")]["error"] == 0.013
    assert rows[("onnxruntime", "fp32", "pruned")]["measured_over_ideal"] == pytest.approx(1.0)


def test_old_bench_records_read_as_fp32_with_the_runs_figures():
    records = [
        _rec("onnxruntime", "dense", 4.0),
        _rec("onnxruntime", "pruned", 1.0),
        _rec("onnxruntime", "pruned_reduced", 0.8),
    ]
    rows = full_records(_metrics(records))
    assert [r["precision"] for r in rows] == ["fp32"] * 3
    assert rows[2]["widths"] == [4, 9, 60] and rows[2]["error"] == 0.012 and rows[0]["error"] == 0.01
    text = render_matrix(_metrics(records))
    assert "| onnxruntime | fp32 | pruned_reduced | 4-9-60 | — | 64 | 0.8000 |" in text  # convs: not recorded then
    assert "onnxruntime fp32 dense 4.0000 ms → onnxruntime fp32 pruned_reduced 0.8000 ms: 5.00×" in text
    assert "INT8" not in text  # no quantize stage in this run


def test_each_deployment_gives_its_convolution_count():
    from dataclasses import replace

    metrics = _metrics([_rec("openvino", "dense", 4.0, "fp32"), _rec("openvino", "pruned", 1.0, "int8")])
    metrics = replace(metrics, dense=replace(metrics.dense, convs=21), pruned=replace(metrics.pruned, convs=13))
    text = render_matrix(metrics)
    assert "| openvino | fp32 | dense | 20-50-500 | 21 | 64 |" in text
    assert "| openvino | int8 | pruned | 4-9-60 | 13 | 64 |" in text
