"""`vib-deploy latency-table PIPELINE`: the pipeline's latency lookup tables on its deploy.target (timed once,
then read from the user cache) and the per-unit KL weights they give its dense net."""

from __future__ import annotations

from typing import Any


def latency_report(config: Any, progress: Any = None) -> dict[str, Any]:
    """The pipeline's latency tables (built, or read from the cache) and what they make of its dense net: per
    layer its grids, dense latency and slopes; per gate its ms per unit and KL weight against the paper's."""
    import torch

    from vib_deploy.bench.layer_timing import target_tables
    from vib_deploy.stages.sources import model_source
    from vib_deploy.training.klweight import LatencyWeighting

    tables_for = target_tables(config, progress)  # first: a pipeline without a named target fails at once
    source = model_source(config)
    torch.manual_seed(config.train.seed)
    w = LatencyWeighting(source.gated(source.dense(), 0.0), source.input_shape, tables_for)
    dense, layers = w.net.dense, []
    for layer in w.net.layers:
        table = w.tables.layers[layer.name]
        per_in, per_out = table.slopes(*layer.widths(dense, dense))
        layers.append(
            {
                "layer": layer.name,
                "shape": layer.shape.key(),
                "widths in": table.in_grid,
                "widths out": table.out_grid,
                "ms dense": table.ms[-1][-1],
                "ms/in": per_in if layer.ins else None,
                "ms/out": per_out if layer.outs else None,
            }
        )
    gates = [
        {"gate": k, "units": g.units, "ms/unit": c, "KL weight": w.scale * c, "paper's": 0.5 * g.kl_mult * g.map_size}
        for k, (g, c) in enumerate(zip(w.gates, w.unit_costs(dense)))
    ]
    return {
        "target": str(config.target()),
        "file": w.tables.file,
        **w.tables.identity(),
        "layers": layers,
        "gates": gates,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if len(value) <= 4 else f"{value[0]},{value[1]},…,{value[-1]} ({len(value)})"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_latency_report(report: dict[str, Any], console: Any = None) -> None:
    """The report as two rich tables (layers, gates) and where the table is cached."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for title, rows in (
        (f"latency table on {report['target']} ({report['entries']} entries, {report['timed']} timed now)", "layers"),
        ("per-unit KL weights on the dense net (latency) against the paper's", "gates"),
    ):
        table = Table(box=box.SIMPLE_HEAD, title=title)
        for key in report[rows][0]:
            table.add_column(key, justify="left" if key in ("layer", "shape") else "right")
        for row in report[rows]:
            table.add_row(*(_cell(v) for v in row.values()))
        console.print(table)
    console.print(f"cache: {report['file']} (sha256 of the entries used {report['sha256'][:12]})")
