"""The chosen deployment (`vib_deploy.deploy.choose`) as a Triton model named after the run, in the layout its engine needs.

    onnxruntime fp32 | int8   platform onnxruntime_onnx, model.onnx = pruned.onnx | pruned_int8.onnx (QDQ)
    openvino fp32             backend openvino on the IR (model.xml + model.bin + sidecar), and model.onnx, its
                              ONNX twin: `vib-deploy serve`'s tritonserver has no OpenVINO backend and serves that
    openvino int8             backend openvino reading the QDQ ONNX itself (default_model_filename model.onnx), as
                              the bench ran it; `vib-deploy serve` runs the same file through onnxruntime. Where
                              quantize.openvino is nncf: NNCF's IR (pruned_int8.xml) as for fp32, the QDQ ONNX as twin
    any other engine (torch)  its ONNX twin on onnxruntime_onnx: no Triton layout for it here

The version's manifest carries the choice (`chosen`) and says how a local server runs it (`served_locally`) or
what was shipped instead (`shipped_as`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vib_deploy.deploy.cpu_deploy import int8_name
from vib_deploy.records.summary import DeploymentChoice
from vib_deploy.runs.directory import RunDir
from vib_deploy.runs.sidecar import read_sidecar, sidecar_path
from vib_deploy.triton.modelconfig import IR_FILE, MODEL_FILE, OPENVINO, ShipOptions

ShipTarget = tuple[str, dict[str, Path], str, ShipOptions, dict[str, Any]]  # name, files, platform, options, record
LOCAL = "model.onnx through onnxruntime: the local tritonserver (`vib-deploy serve`) has no OpenVINO backend"


def chosen_target(run: RunDir, name: str, choice: DeploymentChoice, options: ShipOptions) -> list[ShipTarget]:
    """The chosen deployment as the model `name` (none when nothing pruned is within the error budget)."""
    d = choice.chosen
    if d is None:
        return []
    onnx = run.verified(int8_name("pruned") if d.precision == "int8" else "pruned.onnx")
    record: dict[str, Any] = {"chosen": choice.to_json(), "precision": d.precision}
    if d.engine == "onnxruntime":
        return [(name, {MODEL_FILE: onnx}, "onnxruntime_onnx", options, record)]
    if d.engine == OPENVINO:
        sources = {MODEL_FILE: onnx}
        xml = "pruned.xml" if d.precision == "fp32" else _nncf_ir(run)
        if xml is not None:
            ir = run.verified(xml)
            sources |= {
                IR_FILE: ir,
                "model.bin": run.verified(str(Path(xml).with_suffix(".bin"))),
                IR_FILE + ".json": run.verified(str(sidecar_path(Path(xml)))),
            }
            record["openvino"] = read_sidecar(ir, f"rerun `vib-deploy openvino {run.path}`")
        return [(name, sources, OPENVINO, options, {**record, "served_locally": LOCAL})]
    shipped = f"onnxruntime: {d.engine} has no Triton layout here; model.onnx is the same net (export checks parity)"
    return [(name, {MODEL_FILE: onnx}, "onnxruntime_onnx", options, {**record, "shipped_as": shipped})]


def _nncf_ir(run: RunDir) -> str | None:
    """The pruned net's OpenVINO INT8 IR where NNCF made it (quantize.openvino: nncf), else None (the QDQ ONNX)."""
    from vib_deploy.deploy.deployed import int8_deployment
    from vib_deploy.records import QuantizeRecord

    quant = QuantizeRecord.read_if_made(run)
    made = int8_deployment(quant.variants["pruned"], OPENVINO) if quant is not None else None
    return made.file if made is not None and made.method is not None else None
