"""Latency lookup tables (vib_deploy/measure/latency.py): the grid, the smoothing, the cache and the real single-layer timing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vib_deploy.bench.layer_timing import input_dims, layer_onnx, onnx_measure
from vib_deploy.errors import UserError
from vib_deploy.measure import timing
from vib_deploy.measure.latency import (
    LayerShape,
    LayerTable,
    TableRequest,
    axis_grid,
    build_tables,
    monotone,
    table_key,
)

CONV = LayerShape("conv", (8, 8), (3, 3), (1, 1), (1, 1), (1, 1), 1)
LINEAR = LayerShape("linear", ())


def test_grid_steps_by_whole_blocks_with_the_dense_width_last():
    assert axis_grid(64, block=16) == (16, 32, 48, 64)
    assert axis_grid(64, block=8) == (8, 16, 24, 32, 40, 48, 56, 64)
    assert axis_grid(784, block=16) == (112, 224, 336, 448, 560, 672, 784)  # at most 8 widths: 7 blocks a step
    assert axis_grid(800, unit=16, block=8) == (112, 224, 336, 448, 560, 672, 784, 800)  # multiples of the unit
    assert axis_grid(16, block=16) == (8, 16)  # narrower than a step: half of it and all of it
    assert axis_grid(1, block=8) == (1,)


def test_monotone_fit_pools_adjacent_violators():
    assert monotone([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]
    assert monotone([3.0, 1.0, 2.0]) == [2.0, 2.0, 2.0]
    assert monotone([1.0, 2.0, 5.0]) == [1.0, 2.0, 5.0]


def test_slope_of_a_blocked_staircase_is_its_mean_over_a_block():
    # latency jumps by 1 ms at every 8th output channel: per-width differences are 0 or 1, the slope over a block 1/8
    out_grid = (8, 16, 24, 32)
    rows = tuple(tuple(float(math.ceil(o / 8)) * (1 + i) for o in out_grid) for i in range(2))
    table = LayerTable((4, 8), out_grid, rows)
    for width in (8, 9, 15, 16, 31, 32):
        assert table.slopes(4, width)[1] == pytest.approx(1 / 8)
    assert table.slopes(6, 20)[1] == pytest.approx(1.5 / 8)  # halfway between the rows of 4 and 8 input channels
    assert table.slopes(6, 20)[0] == pytest.approx((5.0 - 2.5) / 4)  # along the inputs, at 20 outputs: 2.5 ms -> 5 ms
    noisy = LayerTable((4,), (8, 16, 24), ((1.0, 2.0, 1.6),))  # faster with more channels: noise, pooled away
    assert noisy.slopes(4, 20)[1] == 0.0 and noisy.slopes(4, 10)[1] == pytest.approx((1.8 - 1.0) / 8)


class CountingMeasure:
    """A fake timer: latency = in * out / 100 ms; remembers every pair it was asked to time."""

    def __init__(self):
        self.calls: list[tuple[str, list[tuple[int, int]]]] = []

    def __call__(self, shape, pairs):
        self.calls.append((shape.key(), list(pairs)))
        return [i * o / 100 for i, o in pairs]


def _key(batch=64):
    return table_key("onnxruntime", "fp32", batch, 1, True)


def test_table_is_cached_per_key_and_shape_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    requests = [
        TableRequest("a", CONV, (4, 8), (8, 16)),
        TableRequest("b", CONV, (8,), (8, 16)),  # same shape: its pairs are a's
        TableRequest("fc", LINEAR, (16,), (5, 10)),
    ]
    measure = CountingMeasure()
    first = build_tables(requests, _key(), measure)
    assert sorted(len(p) for _, p in measure.calls) == [2, 4] and first.timed == 6 and first.entries == 6
    assert first.layers["a"].ms == ((0.32, 0.64), (0.64, 1.28)) and first.layers["b"].ms == ((0.64, 1.28),)
    files = list((tmp_path / "vib-deploy" / "latency").iterdir())
    assert [f.name for f in files] == [first.file.rsplit("/", 1)[1]] and files[0].name.startswith(
        "onnxruntime-fp32-b64"
    )
    stored = json.loads(files[0].read_text())
    assert stored["key"] == _key() and stored["entries"][CONV.key()]["4x16"] == 0.64
    assert stored["entries"][LINEAR.key()] == {"16x5": 0.8, "16x10": 1.6}

    measure.calls.clear()
    again = build_tables(requests, _key(), measure)  # a second build times nothing
    assert measure.calls == [] and again.timed == 0 and again.sha256 == first.sha256 and again.layers == first.layers

    wider = build_tables([TableRequest("a", CONV, (4, 8), (8, 16, 24))], _key(), measure)  # only the new widths
    assert measure.calls == [(CONV.key(), [(4, 24), (8, 24)])] and wider.timed == 2 and wider.sha256 != first.sha256

    measure.calls.clear()
    build_tables(requests, _key(batch=1), measure)  # another batch size: another table
    assert sum(len(p) for _, p in measure.calls) == 6
    assert len(list((tmp_path / "vib-deploy" / "latency").iterdir())) == 2


def test_table_key_names_target_engine_version_and_machine():
    key = table_key("openvino", "int8", 64, 2, False)
    assert {k: key[k] for k in ("engine", "precision", "batch", "threads", "per_channel")} == {
        "engine": "openvino",
        "precision": "int8",
        "batch": 64,
        "threads": 2,
        "per_channel": False,
    }
    assert {"engine_version", "cpu", "isa", "quantizer", "format"} <= key.keys() and key["engine_version"] != "unknown"
    assert "quantizer" not in table_key("openvino", "fp32", 64, 2, False)


def test_layer_models_compute_at_their_widths(tmp_path):
    import onnxruntime as ort

    for shape, (n_in, n_out), out_shape in (
        (CONV, (3, 5), (2, 5, 8, 8)),
        (LayerShape("dwconv", (6, 6), (3, 3), (2, 2), (1, 1), (1, 1)), (9, 4), (2, 4, 3, 3)),
        (LINEAR, (7, 3), (2, 3)),
        (LayerShape("linear", (4,)), (7, 3), (2, 4, 3)),
    ):
        path = tmp_path / f"{shape.kind}-{len(shape.spatial)}.onnx"
        layer_onnx(shape, n_in, n_out, path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).random((2, *input_dims(shape, n_in, n_out)), dtype=np.float32)
        y = np.asarray(session.run(None, {"input": x})[0])
        assert y.shape == out_shape and (y >= 0).all() and (y > 0).any()  # a ReLU closes every layer


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_real_tiny_grid_is_timed_by_the_timing_core(precision, monkeypatch):
    rounds = []
    inner = timing.alternate
    monkeypatch.setattr(
        timing, "alternate", lambda calls, *a, **k: rounds.append(sorted(calls)) or inner(calls, *a, **k)
    )
    times = onnx_measure("onnxruntime", precision, 2, 1, True)(CONV, [(4, 8), (8, 8)])
    assert rounds == [[(4, 8), (8, 8)]]  # one alternating run over every width of the shape
    assert len(times) == 2 and all(t > 0 for t in times)


def test_an_engine_without_onnx_models_is_refused():
    with pytest.raises(UserError, match="runs no ONNX model"):
        onnx_measure("torch", "fp32", 1, 1, True)
