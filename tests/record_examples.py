"""An instance of every stage record, its numbers drawn by hypothesis (tests/records/test_records.py round-trips them all;
tests/deploy/test_deploy_matrix.py builds summaries from them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from vib_deploy import records as r
from vib_deploy.records import summary as s

Draw = Callable[[st.SearchStrategy[Any]], Any]
FLOAT = st.floats(0, 1e6, allow_nan=False)
INT = st.integers(0, 10**9)
MAYBE_FLOAT = st.none() | FLOAT
HISTORY = st.lists(st.fixed_dictionaries({"epoch": st.integers(1, 99), "val_acc": FLOAT, "kl": FLOAT}), max_size=3)
WIDTHS = st.lists(st.integers(1, 800), min_size=1, max_size=4)


def bench_record(draw: Draw) -> r.BenchRecord:
    return r.BenchRecord(
        draw(st.sampled_from(["onnxruntime", "openvino", "torch"])),
        draw(st.sampled_from([1, 64])),
        draw(st.sampled_from(["dense", "pruned", "pruned_reduced"])),
        *(draw(FLOAT) for _ in range(5)),
        threads=draw(st.none() | st.integers(1, 8)),
        precision=draw(st.sampled_from([None, "fp32", "int8"])),
        extra=draw(st.sampled_from([{}, {"widths": [4, 9], "error": 0.01}])),
    )


def exported(draw: Draw) -> r.ExportedModel:
    return r.ExportedModel(
        draw(FLOAT), draw(FLOAT), draw(INT), draw(FLOAT), 17, {"input": ["batch", 784]}, {"logits": ["batch", 10]},
        ["Gemm", "Relu"], draw(st.sampled_from([None, "pruned.pt", "finetuned.pt"])),
    )  # fmt: skip


def nncf_model(draw: Draw, variant: str) -> r.NncfModel:
    ops = ["node_Conv_1", "node_add_2", "node_linear/WithoutBiases"]
    return r.NncfModel(
        f"{variant}_int8.xml", draw(INT), draw(FLOAT), draw(FLOAT), draw(FLOAT), draw(FLOAT), 0.005, ops,
        draw(st.sampled_from([[], ops[1:]])), {"openvino_version": "2026.4", "quantizer": "nncf 3.4.0"},
    )  # fmt: skip


def quantize(draw: Draw) -> r.QuantizeRecord:
    models = {
        n: r.QuantizedModel(
            f"{n}_int8.onnx",
            draw(INT),
            draw(INT),
            {"onnxruntime": draw(FLOAT)},
            draw(FLOAT),
            300,
            draw(st.none() | st.just({"onnxruntime": 0.02})),
            draw(st.none() | st.just(nncf_model(draw, n))),
        )  # fmt: skip
        for n in ("dense", "pruned")
    }
    cal = {"split": "train", "images": 200, "method": "minmax"}
    return r.QuantizeRecord(cal, "QDQ", "int8 per channel", "uint8", ["onnxruntime"], models)


def openvino(draw: Draw) -> r.OpenvinoRecord:
    model = r.OpenvinoModel(draw(FLOAT), draw(FLOAT), draw(INT), draw(FLOAT), {"openvino": "2024.1", "cpu": "x"})
    return r.OpenvinoRecord({"dense": model, "pruned": model})


def prune(draw: Draw) -> r.PruneRecord:
    exact = r.ExactCheck(*(draw(FLOAT) for _ in range(6)), reduced_max_abs_diff=draw(MAYBE_FLOAT))
    return r.PruneRecord(
        draw(WIDTHS), [784, 300, 100], draw(st.none() | WIDTHS), draw(FLOAT), draw(INT),
        r.Cost(draw(INT), draw(INT)), r.Cost(draw(INT), draw(INT)), kept_indices=[[1, 2]], exact=exact,
        val_error=draw(MAYBE_FLOAT),
    )  # fmt: skip


def deployment(draw: Draw, variant: str) -> s.Deployment:
    engine, precision = draw(st.sampled_from([("onnxruntime", "fp32"), ("openvino", "int8")]))
    return s.Deployment(engine, precision, variant, 64, draw(FLOAT), draw(FLOAT), draw(MAYBE_FLOAT), draw(WIDTHS))


def choice(draw: Draw) -> s.DeploymentChoice:
    chosen = draw(st.none() | st.just(deployment(draw, "pruned")))
    return s.DeploymentChoice(
        "auto", 64, 0.005, 0.02, 0.025, chosen, deployment(draw, "dense"), draw(MAYBE_FLOAT), draw(FLOAT),
        draw(MAYBE_FLOAT), None if chosen else "no pruned deployment within the error budget", ["a note"],
    )  # fmt: skip


def summary(draw: Draw, bench: list[r.BenchRecord] | None = None) -> r.RunSummary:
    arch = draw(WIDTHS)
    return r.RunSummary(
        model="lenet300",
        dataset="mnist",
        version="0.1.0",
        test_samples=draw(INT),
        dense=s.DenseSummary(draw(FLOAT), draw(FLOAT), arch, draw(INT), draw(INT), draw(INT), 3, None, draw(FLOAT)),
        vib=s.VibSummary(draw(FLOAT), draw(FLOAT), 2, 1e-5, draw(FLOAT)),
        pruned=s.PrunedSummary(
            draw(FLOAT), arch, draw(INT), draw(INT), draw(INT), draw(st.none() | INT), val_error=draw(MAYBE_FLOAT)
        ),
        finetuned=draw(st.none() | st.just(s.FinetunedSummary(0.01, 0.02, None, 2, 1, 1e-3, 0.0, 3.0))),
        deployed="pruned.pt",
        prune=s.ExactSummary(max_abs_diff=draw(FLOAT), tolerance=1e-5),
        export=s.ExportSummary(draw(FLOAT), draw(FLOAT), 17, {"dense": exported(draw)}),
        bench=bench if bench is not None else [bench_record(draw) for _ in range(draw(st.integers(0, 3)))],
        speedup=[r.Speedup("onnxruntime", 1, "pruned", draw(FLOAT), draw(st.sampled_from([None, "int8"])))],
        ideal_speedup=draw(FLOAT),
        machine={"cpu": "x", "cores": 2},
        history=s.Histories(draw(HISTORY), draw(HISTORY)),
        preprocessing={"scale": "1/255", "pad": 0, "mean": [0.0], "std": [1.0], "classes": ["0", "1"]},
        openvino=draw(st.none() | st.just(openvino(draw))),
        quantize=draw(st.none() | st.just(quantize(draw))),
        choice=draw(st.none() | st.just(choice(draw))),
    )


EXAMPLES: dict[type, Callable[[Draw], Any]] = {
    r.TrainDenseRecord: lambda d: r.TrainDenseRecord(
        d(HISTORY), d(st.none() | INT), d(FLOAT), d(FLOAT), d(FLOAT), d(INT), preprocessing=d(st.none() | st.just({}))
    ),
    r.TrainVibRecord: lambda d: r.TrainVibRecord(
        d(HISTORY),
        d(FLOAT),
        d(FLOAT),
        d(FLOAT),
        [{"units": 300, "kept": 20}],
        d(WIDTHS),
        kl_unit_weights=d(st.none() | st.just([1.0, 2.0])),
        latency_table=d(st.none() | st.just({"key": {"engine": "onnxruntime"}, "sha256": "ab", "entries": 4})),
        target=d(st.none() | st.just({"kind": "flops", "value": 0.25, "reached": 0.24, "kl_multiplier": 1e-4})),
    ),  # fmt: skip
    r.PruneRecord: prune,
    r.WidthsSweep: lambda d: r.WidthsSweep({"backend": "onnxruntime"}, {"0:16": d(FLOAT)}),
    r.FinetuneRecord: lambda d: r.FinetuneRecord(
        2, 1e-3, 0.0, d(HISTORY), d(st.none() | INT), d(FLOAT), d(MAYBE_FLOAT), d(FLOAT), d(FLOAT), d(FLOAT)
    ),
    r.ExportRecord: lambda d: r.ExportRecord({"dense": exported(d), "pruned": exported(d)}),
    r.OpenvinoRecord: openvino,
    r.QuantizeRecord: quantize,
    r.BenchFile: lambda d: r.BenchFile(
        tuple(bench_record(d) for _ in range(d(st.integers(0, 3)))),
        (r.Speedup("onnxruntime", 1, "pruned", d(FLOAT)),),
        {"cpu": "x"},
        d(st.none() | st.just({"dense": "dense.pt"})),
    ),
    r.RunSummary: summary,
}


def summary_of(
    bench: list[dict[str, Any]], dense: tuple[list[int], float], pruned: tuple[list[int], float], ideal: float
):
    """A RunSummary with these bench records (as bench.json holds them), architectures, errors and ideal speedup."""
    return r.RunSummary(
        model="lenet5",
        dataset="mnist",
        version="0",
        test_samples=300,
        dense=s.DenseSummary(dense[1], dense[1], dense[0], 1000, 100, 400, 1, 1, 1.0),
        vib=s.VibSummary(0.02, 0.02, 1, 1e-5, 1.0),
        pruned=s.PrunedSummary(pruned[1], pruned[0], 100, 10, 40, None),
        finetuned=None,
        deployed="pruned.pt",
        prune=s.ExactSummary(),
        export=s.ExportSummary(0.0, 1.0, 17, {}),
        bench=[r.BenchRecord.from_json(b) for b in bench],
        speedup=[],
        ideal_speedup=ideal,
        machine={},
        history=s.Histories([], []),
        preprocessing={},
    )
