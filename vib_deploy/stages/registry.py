"""The stage registry: the one list of stages. Order, names, CLI commands and help, `until`, `--force` and the
peer runs of studies/compare all come from `STAGES`.

train-dense -> train-vib -> prune -> [finetune] -> export -> [openvino] -> [quantize] -> bench -> report

finetune, openvino and quantize run only when the config turns them on (`enabled`). A stage that is off is no input
of the stages that need it, and a stage reads the outputs of an `after` stage (and keys on them) only where it has
run, so runs made before these stages existed keep their cache keys. Adding a stage: its module under stages/, one
line here, its record in records/ (and its config section).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from vib_deploy.config import PipelineConfig
from vib_deploy.errors import UserError
from vib_deploy.stages.base import Context, Stage

# Keys added to a section after runs were made: keyed only when set, so existing runs stay cached.
KEYED_WHEN_SET = {
    "model": {"factory": None, "kwargs": {}, "input_shape": None, "ignore": [], "depth_gates": False},
    "data": {"pad": 0, "channels": None, "size": None, "normalize": False},
    "train": {"amp": "off"},
    "bench": {"precisions": None},
    "prune": {"round_to": 1},
    "vib": {
        "kl_weighting": "paper",
        "weight_decay": 0.0,
        "schedule": "cosine",
        "paper_protocol": False,
        "ema": None,
        "target": None,
        "gate_weight_decay": None,
    },
    "dense": {"patience": None},
    "deploy": {"target": "auto", "max_error_increase": 0.005},
    "quantize": {"openvino": "qdq"},
}


def keyed_section(name: str, section: Any) -> dict[str, Any]:
    """A config section as its cache key sees it."""
    later = KEYED_WHEN_SET.get(name, {})
    return {k: v for k, v in section.model_dump().items() if not (k in later and v == later[k])}


def _train_common(c: PipelineConfig) -> dict[str, Any]:
    from vib_deploy.model.factory import factory_digest

    t = c.train
    factory = {"factory_sha256": factory_digest(c.model.factory)} if c.model.factory else {}  # a changed file retrains
    return {
        "model": keyed_section("model", c.model),
        **factory,
        "data": keyed_section("data", c.data),
        "seed": t.seed,
        "batch_size": t.batch_size,
        "device": t.device,
        **({"amp": t.amp} if t.amp != KEYED_WHEN_SET["train"]["amp"] else {}),
    }


def _train_vib_section(c: PipelineConfig) -> dict[str, Any]:
    """kl_weighting latency or a speedup target: keyed also on the latency table's key (target, threads, engine
    version, CPU), so weights or costs timed elsewhere or for another target retrain."""
    section = {**_train_common(c), "vib": keyed_section("vib", c.train.vib)}
    target, vib = c.target(), c.train.vib
    if (vib.kl_weighting == "latency" or (vib.target and vib.target.speedup)) and target is not None:
        from vib_deploy.measure.latency import table_key

        section["latency_table"] = table_key(
            target.engine, target.precision, target.batch, c.bench.threads, c.quantize.per_channel
        )
    return section


def _prune_section(c: PipelineConfig) -> dict[str, Any]:
    target = c.target()  # a named deploy.target is what auto times on (keyed only when named)
    where = {"target": str(target)} if target else {"backend": c.bench.backends[0]}
    auto = {"auto": {**where, "threads": c.bench.threads}} if c.prune.round_to in ("auto", "block") else {}
    return {"prune": keyed_section("prune", c.prune), "data": keyed_section("data", c.data), **auto}


def _report_section(c: PipelineConfig) -> dict[str, Any]:
    """The deployment choice's settings, keyed only where they differ from the defaults."""
    deploy = keyed_section("deploy", c.deploy)
    return {"deploy": deploy} if deploy else {}


def _nncf(c: PipelineConfig) -> bool:
    return c.quantize.openvino == "nncf"


def _quantize_section(c: PipelineConfig) -> dict[str, Any]:
    """quantize.openvino: nncf also keys on the error budget NNCF holds (deploy.max_error_increase)."""
    nncf = {"max_error_increase": c.deploy.max_error_increase} if _nncf(c) else {}
    return {"quantize": keyed_section("quantize", c.quantize), "data": keyed_section("data", c.data), **nncf}


def _export_section(c: PipelineConfig) -> dict[str, Any]:
    return {"export": c.export.model_dump(), "data": keyed_section("data", c.data)}


def _lazy(module: str, function: str) -> Callable[[Context], list[str]]:
    """`module.function`, imported when the stage runs (the CLI lists stages without importing torch)."""

    def run(ctx: Context) -> list[str]:
        return getattr(importlib.import_module(module), function)(ctx)

    run.__qualname__ = f"{module}.{function}"
    return run


def _finetuned(c: PipelineConfig) -> bool:
    return c.train.finetune.epochs > 0


_TRAIN = "vib_deploy.stages.training"
_DEPLOY = "vib_deploy.stages.deploy"
STAGES: tuple[Stage, ...] = (
    Stage(
        "train-dense",
        (),
        lambda c: {**_train_common(c), "dense": keyed_section("dense", c.train.dense)},
        _lazy(_TRAIN, "train_dense"),
        help="Train the dense net (best validation epoch kept).",
        uses_data=True,
        all_ranks=True,
    ),
    Stage(
        "train-vib",
        ("train-dense",),
        _train_vib_section,
        _lazy(_TRAIN, "train_vib"),
        help="Add VIB gates to the dense net and train with the VIB loss.",
        uses_data=True,
        all_ranks=True,
    ),
    Stage(
        "prune",
        ("train-vib",),
        _prune_section,
        _lazy("vib_deploy.stages.pruning", "prune"),
        help="Prune the VIB net structurally and check it exact against the VIB net on the test set.",
        uses_data=True,
        command=False,
    ),
    Stage(
        "finetune",
        ("prune",),
        lambda c: {**_train_common(c), "finetune": c.train.finetune.model_dump()},
        _lazy(_TRAIN, "finetune"),
        help="Train the pruned net again (train.finetune; best validation epoch kept, kept pixels unchanged).",
        uses_data=True,
        all_ranks=True,
        enabled=_finetuned,
        refused_when_off="train.finetune.epochs: 0",
    ),
    Stage(
        "export",
        ("train-dense", "prune", "finetune"),
        _export_section,
        _lazy(_DEPLOY, "export"),
        help="Export dense and pruned (fine-tuned when train.finetune is on) models to ONNX; "
        "checker + parity with torch.",
        uses_data=True,
        peer=True,
    ),
    Stage(
        "openvino",
        ("prune", "finetune", "export"),
        _export_section,
        _lazy("vib_deploy.stages.cpu_deploy", "openvino_ir"),
        help="OpenVINO IR (.xml + .bin + sidecar) of every ONNX model; parity with torch on the test set.",
        uses_data=True,
        enabled=lambda c: "openvino" in c.bench.backends,
        peer=True,
    ),
    Stage(
        "quantize",
        ("train-dense", "prune", "finetune", "export"),
        _quantize_section,
        _lazy("vib_deploy.stages.cpu_deploy", "quantize"),
        help="INT8 (QDQ ONNX) of the dense and pruned models, calibrated on training images; test and validation "
        "error per engine (quantize.openvino: nncf, OpenVINO's INT8 by NNCF within the error budget).",
        uses_data=True,
        enabled=lambda c: c.quantize.enabled,
        needs_when=lambda c: ("openvino",) if _nncf(c) else (),  # NNCF quantizes the fp32 IR
        peer=True,
    ),
    Stage(
        "bench",
        ("train-dense", "prune", "finetune", "export"),
        lambda c: {"bench": keyed_section("bench", c.bench)},
        _lazy(_DEPLOY, "bench"),
        help="Time dense against pruned on each backend and batch size, in alternating rounds.",
        after=("quantize",),
        command=False,
        peer=True,
    ),
    Stage(
        "report",
        ("train-dense", "train-vib", "prune", "finetune", "export", "bench"),
        _report_section,
        _lazy("vib_deploy.stages.reporting", "report"),
        help="Write metrics.json (with the deployment chosen by deploy.target), report.md and plots, and print the "
        "final table.",
        after=("openvino", "quantize"),
    ),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
_BY_NAME = {s.name: s for s in STAGES}


def get_stage(name: str) -> Stage:
    """The stage called `name`; anything else is one line listing the stages."""
    if name not in _BY_NAME:
        raise UserError(f"{name!r}: not a stage; stages are {', '.join(STAGE_NAMES)}")
    return _BY_NAME[name]


def stages_until(until: str | None) -> list[Stage]:
    """The stages in order, up to and including `until` (None: all)."""
    return list(STAGES if until is None else STAGES[: STAGE_NAMES.index(get_stage(until).name) + 1])


def enabled(name: str, config: PipelineConfig) -> bool:
    """Whether stage `name` is on for `config`; one that is off is no input of the others."""
    return get_stage(name).enabled(config)


def check_enabled(name: str, config: PipelineConfig) -> None:
    """Refuse to run alone a stage that is off and would have nothing to do (finetune with 0 epochs)."""
    stage = get_stage(name)
    if stage.refused_when_off and not stage.enabled(config):
        raise UserError(f"stage {name} is off in this config ({stage.refused_when_off})")


def commands() -> list[Stage]:
    """The stages with a plain `vib-deploy <stage> RUN_DIR` command (prune and bench have commands with options)."""
    return [s for s in STAGES if s.command]


def peer_stages() -> list[Stage]:
    """The pipeline's stages a peer run (studies/compare) runs unchanged after its own prune, where the config has them on."""
    return [s for s in STAGES if s.peer]
