"""The JSON records stages hand each other, as frozen dataclasses: one writer, one reader per file.

Each record's `to_json` is the only place its file's keys are spelled when writing, `from_json` the only
place they are read; no other module opens a stage's JSON file. Files carry `record_version`; files written
before it existed (version 0) read with the missing fields defaulted, so run directories made by earlier
versions load, verify and stay cached (their bytes are never rewritten). A file from a newer vib-deploy is
refused with one line.

    train-dense.json, train-vib.json, finetune.json   train.py
    prune.json, widths-sweep.json                     prune.py
    export.json, openvino.json, quantize.json         deploy.py
    bench.json                                        bench.py
    metrics.json (`RunSummary`)                       summary.py
"""

from __future__ import annotations

from vib_deploy.records.base import RECORD_VERSION, JsonRecord
from vib_deploy.records.bench import BenchFile, BenchRecord, Speedup
from vib_deploy.records.deploy import (
    ExportedModel,
    ExportRecord,
    NncfModel,
    OpenvinoModel,
    OpenvinoRecord,
    Parity,
    QuantizedModel,
    QuantizeRecord,
)
from vib_deploy.records.prune import MNIST_INPUT, Cost, ExactCheck, PeerInfo, PruneRecord, WidthsSweep
from vib_deploy.records.summary import RunSummary
from vib_deploy.records.train import FinetuneRecord, TrainDenseRecord, TrainVibRecord

# Every stage file's record; tests/records/test_records.py round-trips each and forbids reading their files elsewhere
RECORDS = (
    TrainDenseRecord,
    TrainVibRecord,
    PruneRecord,
    WidthsSweep,
    FinetuneRecord,
    ExportRecord,
    OpenvinoRecord,
    QuantizeRecord,
    BenchFile,
    RunSummary,
)
STAGE_FILES = frozenset(r.FILE for r in RECORDS)

__all__ = [
    "MNIST_INPUT",
    "RECORDS",
    "RECORD_VERSION",
    "STAGE_FILES",
    "BenchFile",
    "BenchRecord",
    "Cost",
    "ExactCheck",
    "ExportRecord",
    "ExportedModel",
    "FinetuneRecord",
    "JsonRecord",
    "NncfModel",
    "OpenvinoModel",
    "OpenvinoRecord",
    "Parity",
    "PeerInfo",
    "PruneRecord",
    "QuantizeRecord",
    "QuantizedModel",
    "RunSummary",
    "Speedup",
    "TrainDenseRecord",
    "TrainVibRecord",
    "WidthsSweep",
]
