"""What a run deploys: `deployables(run, config)`, the one place that decides which model is exported, timed
and shipped for each variant, and how its input is shaped.

    dense            dense.pt, the full image
    pruned           finetuned.pt when the finetune stage is on (train.finetune.epochs > 0), else pruned.pt;
                     the full image (the net gathers its kept pixels in-graph)
    pruned_reduced   (input-gated nets) the same net without its gather: it takes the kept pixels only

and, for INT8 (`int8_deployment`), the quantize stage's QDQ ONNX on every engine, except on OpenVINO where
quantize.openvino is nncf: there NNCF's IR (`<variant>_int8.xml`) is the deployment.

Export, openvino, quantize, bench, profile, gpu-bench and Triton packaging all start here; the exactness check
stays in prune (pruned vs VIB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vib_deploy.records import FinetuneRecord, PruneRecord, QuantizedModel, TrainDenseRecord
from vib_deploy.runs.directory import RunDir

VARIANTS = ("dense", "pruned", "pruned_reduced")
ROUNDING = 1e-9  # errors are counts / images: dense + increase can miss an equal error by a float rounding


def finetuned(config: Any) -> bool:
    """The finetune stage is on (train.finetune.epochs > 0)."""
    return config.train.finetune.epochs > 0


def deployed_file(config: Any, variant: str) -> str:
    """The model file a variant ("dense", "pruned", "pruned_reduced") is exported and timed from."""
    if variant == "dense":
        return "dense.pt"
    return variant.replace("pruned", "finetuned" if finetuned(config) else "pruned", 1) + ".pt"


def reduce_input(x: np.ndarray, kept_pixels: list[int] | None) -> np.ndarray:
    """A batch of images in the layout a reduced-input net takes: flattened, the kept pixels only (None: as is)."""
    return x if kept_pixels is None else x.reshape(len(x), -1)[:, kept_pixels]


@dataclass(frozen=True)
class Deployable:
    """One deployed variant: the files it is made from and exported to, its input, test error and widths."""

    name: str  # dense | pruned | pruned_reduced
    model_file: str  # the .pt it is exported from
    input_shape: tuple[int, ...]  # per sample
    kept_pixels: list[int] | None  # pruned_reduced: the image pixels it takes (None: the full image)
    error: float  # test error of the deployed net
    widths: list[int]  # units per gated layer

    @property
    def onnx(self) -> str:
        return f"{self.name}.onnx"

    def inputs(self, x: np.ndarray) -> np.ndarray:
        """Images `x` (N, C, H, W) as this variant takes them."""
        return reduce_input(x, self.kept_pixels)


def deployables(run: RunDir, config: Any) -> list[Deployable]:
    """Every variant the run deploys, in order: dense, pruned and (input-gated nets) pruned_reduced."""
    prune = PruneRecord.read(run)
    tuned = FinetuneRecord.read(run) if finetuned(config) else None
    dense_error = TrainDenseRecord.read(run).test_error
    error = tuned.test_error if tuned else prune.test_error
    shape = tuple(prune.input_shape)
    out = [
        Deployable("dense", deployed_file(config, "dense"), shape, None, dense_error, prune.dense_architecture),
        Deployable("pruned", deployed_file(config, "pruned"), shape, None, error, prune.architecture),
    ]
    if prune.kept_pixels is not None:
        kept = list(prune.kept_pixels)
        reduced = deployed_file(config, "pruned_reduced")
        out.append(Deployable("pruned_reduced", reduced, (len(kept),), kept, error, prune.architecture))
    return out


def deployable(run: RunDir, config: Any, name: str) -> Deployable:
    return next(d for d in deployables(run, config) if d.name == name)


@dataclass(frozen=True)
class Int8Deployment:
    """The INT8 model one engine deploys for a variant, and its errors on that engine."""

    file: str
    error: float | None  # test error (None: the engine did not run it)
    val_error: float | None  # validation error (None: a quantize.json made before it was recorded)
    method: str | None  # how tables name it ("NNCF, 2 ops kept fp32"); None: the QDQ file


def int8_deployment(q: QuantizedModel, engine: str) -> Int8Deployment:
    """On OpenVINO, NNCF's IR where the quantize stage made one; else (and on every other engine) the QDQ file."""
    nncf = q.openvino if engine == "openvino" else None
    if nncf is not None:
        return Int8Deployment(nncf.file, nncf.error, nncf.val_error, nncf.method)
    return Int8Deployment(q.file, q.error.get(engine), (q.val_error or {}).get(engine), None)
