"""The deployment stages' records: export.json, openvino.json and quantize.json (with NNCF's OpenVINO INT8).

export.json and openvino.json map each exported variant to its check; `record_version` sits beside the
variants (files made before it hold the variants alone and read as version 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from vib_deploy.records.base import RECORD_VERSION, DictOf, JsonRecord, check_version


@dataclass(frozen=True)
class Parity(JsonRecord):
    """`export.parity`: an engine against torch on the test set (max |Δlogit|, argmax agreement)."""

    max_abs_diff: float
    argmax_agreement: float
    samples: int
    tolerance: float


@dataclass(frozen=True)
class ExportedModel(JsonRecord):
    """One ONNX file of export.json: its parity with torch and what `onnx_summary` read from it."""

    max_abs_diff: float
    argmax_agreement: float
    samples: int
    tolerance: float
    opset: int
    inputs: dict[str, list[Any]]
    outputs: dict[str, list[Any]]
    ops: list[str]
    model_file: str | None = None  # the .pt it was exported from; None: made before finetune existed
    OMIT_NONE = frozenset({"model_file"})


@dataclass(frozen=True)
class OpenvinoModel(JsonRecord):
    """One IR of openvino.json: its parity with torch and its sidecar (OpenVINO version, CPU, shapes)."""

    max_abs_diff: float
    argmax_agreement: float
    samples: int
    tolerance: float
    sidecar: dict[str, Any]


@dataclass(frozen=True)
class _Variants(JsonRecord):
    """A variant -> entry file with `record_version` beside the variants."""

    ENTRY: ClassVar[type[JsonRecord]]  # the record of one variant
    variants: dict[str, Any]
    record_version: int = RECORD_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"record_version": self.record_version, **{k: v.to_json() for k, v in self.variants.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Any:
        check_version(data, cls.FILE)
        entries = DictOf(cls.ENTRY).decode({k: v for k, v in data.items() if k != "record_version"})
        return cls(entries, data.get("record_version", 0))


@dataclass(frozen=True)
class ExportRecord(_Variants):
    """export.json: every exported ONNX model by variant (dense, pruned, [pruned_reduced])."""

    FILE = "export.json"
    ENTRY = ExportedModel
    variants: dict[str, ExportedModel]


@dataclass(frozen=True)
class OpenvinoRecord(_Variants):
    """openvino.json: every OpenVINO IR by variant."""

    FILE = "openvino.json"
    ENTRY = OpenvinoModel
    variants: dict[str, OpenvinoModel]


@dataclass(frozen=True)
class NncfModel(JsonRecord):
    """OpenVINO's INT8 model by NNCF with accuracy control (quantize.openvino: nncf): its IR, its errors on OpenVINO,
    the validation drop it was held to (what the error budget leaves over the fp32 IR) and the operations it kept in
    fp32."""

    file: str  # <variant>_int8.xml (+ .bin, + .xml.json sidecar)
    bytes: int  # .xml + .bin
    error: float  # test error on OpenVINO
    val_error: float  # validation error on OpenVINO
    fp32_val_error: float  # the fp32 IR's validation error on OpenVINO, what max_drop is measured from
    budget: float  # the choice's validation error ceiling: the dense fp32 net's + deploy.max_error_increase
    max_drop: float  # NNCF's max_drop (absolute top-1 on validation): budget - fp32_val_error, at least 0
    quantized: list[str]  # operations plain NNCF quantization runs in int8
    kept_fp32: list[str]  # of those, the ones accuracy control kept in fp32
    sidecar: dict[str, Any]

    @property
    def method(self) -> str:
        """How the deployment is named in tables: NNCF and the operations it kept in fp32."""
        n = len(self.kept_fp32)
        return f"NNCF, {n} op{'' if n == 1 else 's'} kept fp32"


@dataclass(frozen=True)
class QuantizedModel(JsonRecord):
    """One INT8 model of quantize.json: its QDQ file, size, and test error per engine next to its fp32 net's; its
    validation error per engine (what `choose` compares with the error budget; None: a file made before it was).
    `openvino`: the IR NNCF made where quantize.openvino is nncf, OpenVINO's INT8 deployment in place of the QDQ file
    (`deployed.int8_deployment`); None: OpenVINO runs the QDQ file (and files made before NNCF was used)."""

    file: str
    bytes: int
    fp32_bytes: int
    error: dict[str, float]  # engine -> test error of the QDQ file
    fp32_error: float
    test_samples: int
    val_error: dict[str, float] | None = None  # engine -> validation error of the QDQ file
    openvino: NncfModel | None = None
    OMIT_NONE = frozenset({"val_error", "openvino"})
    NESTED = {"openvino": NncfModel}


@dataclass(frozen=True)
class QuantizeRecord(JsonRecord):
    """quantize.json: how the INT8 models were made and each one's figures (`variants`: dense, pruned)."""

    FILE = "quantize.json"
    calibration: dict[str, Any]
    format: str
    weights: str
    activations: str
    engines: list[str]
    variants: dict[str, QuantizedModel]
    record_version: int = RECORD_VERSION
    _HEAD = ("calibration", "format", "weights", "activations", "engines")

    def to_json(self) -> dict[str, Any]:
        head = {k: getattr(self, k) for k in self._HEAD}
        return {"record_version": self.record_version, **head, **{k: v.to_json() for k, v in self.variants.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QuantizeRecord:
        check_version(data, cls.FILE)
        rest = {k: v for k, v in data.items() if k not in (*cls._HEAD, "record_version")}
        return cls(
            **{k: data[k] for k in cls._HEAD},
            variants=DictOf(QuantizedModel).decode(rest),
            record_version=data.get("record_version", 0),
        )
