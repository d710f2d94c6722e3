"""Latency tables timed on the target: each layer alone as a tiny ONNX model (measure/latency.py says which layers,
at which widths, and keeps the cache), converted for the target's precision and timed by the target's runner; and
`target_tables`, the `tables_for` of `kl_weighting: latency` on a pipeline's deploy.target."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vib_deploy.errors import UserError
from vib_deploy.measure.latency import ITERS, ROUNDS, WARMUP, LayerShape, Measure, Pair, build_tables, table_key


def layer_onnx(shape: LayerShape, n_in: int, n_out: int, path: Path, opset: int = 17) -> None:
    """`shape` at these widths alone, as ONNX: Conv + bias + ReLU, or Gemm (MatMul + Add on leading dims) + ReLU;
    random weights; input `input` of shape (batch, n_in, *spatial) (a Linear: (batch, *spatial, n_in))."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from vib_deploy.deploy.export import INPUT_NAME, OUTPUT_NAME

    rng = np.random.default_rng(0)
    tensor = lambda name, *dims: numpy_helper.from_array(  # noqa: E731
        (rng.standard_normal(dims) * 0.1).astype(np.float32), name
    )
    if shape.kind == "linear":
        dims = ["batch", *shape.spatial, n_in]
        if shape.spatial:
            nodes = [helper.make_node("MatMul", [INPUT_NAME, "W"], ["y"]), helper.make_node("Add", ["y", "B"], ["z"])]
            weights = [tensor("W", n_in, n_out), tensor("B", n_out)]
        else:
            nodes = [helper.make_node("Gemm", [INPUT_NAME, "W", "B"], ["z"], transB=1)]
            weights = [tensor("W", n_out, n_in), tensor("B", n_out)]
        out_dims = [*dims[:-1], n_out]
    else:
        groups = n_out if shape.kind == "dwconv" else shape.groups
        n_in = n_out if shape.kind == "dwconv" else n_in
        dims = ["batch", n_in, *shape.spatial]
        out_dims = ["batch", n_out, *(f"d{k}" for k in range(len(shape.spatial)))]  # (spatial size left to the engine)
        pads: dict[str, Any] = (
            {"auto_pad": "SAME_UPPER" if shape.padding == "same" else "VALID"}
            if isinstance(shape.padding, str)
            else {"pads": [*shape.padding, *shape.padding]}
        )
        conv = helper.make_node(
            "Conv", [INPUT_NAME, "W", "B"], ["z"], kernel_shape=list(shape.kernel), strides=list(shape.stride),
            dilations=list(shape.dilation), group=groups, **pads,
        )  # fmt: skip
        nodes, weights = [conv], [tensor("W", n_out, n_in // groups, *shape.kernel), tensor("B", n_out)]
    graph = helper.make_graph(
        [*nodes, helper.make_node("Relu", ["z"], [OUTPUT_NAME])],
        shape.key(),
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, out_dims)],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # what every supported engine reads
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))


def input_dims(shape: LayerShape, n_in: int, n_out: int) -> tuple[int, ...]:
    """One sample's input to the layer at these widths."""
    if shape.kind == "linear":
        return (*shape.spatial, n_in)
    return (n_out if shape.kind == "dwconv" else n_in, *shape.spatial)


def onnx_measure(engine: str, precision: str, batch: int, threads: int, per_channel: bool) -> Measure:
    """A `Measure` that times each pair's single-layer model on `engine` at `batch` (int8: QDQ as the quantize stage
    makes it), all pairs of a shape alternating in the same rounds of the timing core; p50 ms each."""
    from vib_deploy.backends import get_backend
    from vib_deploy.errors import UserError

    cls = get_backend(engine)
    if cls.artifact_suffix != ".onnx":
        raise UserError(f"kl_weighting: latency times ONNX layers; deploy.target engine {engine} runs no ONNX model")

    def measure(shape: LayerShape, pairs: list[Pair]) -> list[float]:
        import tempfile
        from functools import partial

        import numpy as np

        from vib_deploy.deploy.cpu_deploy import quantize_onnx
        from vib_deploy.measure.timing import alternate, percentiles

        rng = np.random.default_rng(0)
        runners, calls, inputs = [], {}, {}  # one input batch per input shape, shared by its pairs
        with tempfile.TemporaryDirectory() as tmp:
            for n_in, n_out in pairs:
                path = Path(tmp) / f"{n_in}x{n_out}.onnx"
                layer_onnx(shape, n_in, n_out, path)
                dims = input_dims(shape, n_in, n_out)
                if dims not in inputs:
                    inputs[dims] = rng.random((batch, *dims), dtype=np.float32)
                x = inputs[dims]
                if precision == "int8":
                    quantize_onnx(path, path, x[:8], per_channel)
                runner = cls(path, threads).activate()
                runners.append(runner)
                calls[(n_in, n_out)] = partial(runner.infer, x)
            samples = alternate(calls, ROUNDS, ITERS, WARMUP)
            for runner in runners:
                runner.deactivate()
        return [percentiles(samples[p])["p50_ms"] for p in pairs]

    return measure


def target_tables(config: Any, progress: Any = None) -> Callable[[list[Any]], Any]:
    """`tables_for` on the pipeline's deploy.target (threads: bench.threads; int8: quantize.per_channel), built on
    rank 0 only under torchrun (every rank gets rank 0's tables, so all weigh the KL alike)."""
    from vib_deploy.training import distributed

    target = config.target()
    if target is None:
        raise UserError("train.vib.kl_weighting: latency needs a named deploy.target (<engine>-<precision>@<batch>)")
    threads, per_channel = config.bench.threads, config.quantize.per_channel
    key = table_key(target.engine, target.precision, target.batch, threads, per_channel)

    def tables_for(requests: list[Any]) -> Any:
        measure = onnx_measure(target.engine, target.precision, target.batch, threads, per_channel)
        return distributed.on_main(lambda: build_tables(requests, key, measure, progress))

    return tables_for
