"""Ship a run to a Triton Inference Server model repository, and verify such a repository.

Layout (Triton's own, so it can be copied straight into a server's `--model-repository`):

    models/<run>/...                     the deployment chosen for the user (metrics.json `choice`: the fastest
                                         pruned one within the error budget, or deploy.target's), in its engine's
                                         layout (triton/chosen.py); absent when none is within the budget
    models/<run>-dense/config.pbtxt      platform onnxruntime_onnx, generated from the ONNX graph
    models/<run>-dense/labels.txt        class names, one per output index (label_filename)
    models/<run>-dense/<version>/model.onnx
    models/<run>-dense/<version>/manifest.json   sha256 of every file, the run it came from, its metrics
    models/<run>-pruned/...              the same for the pruned model
    models/<run>-dense_trt/<version>/model.plan (+ model.plan.json: TensorRT version, GPU), platform
                                         tensorrt_plan, KIND_GPU: only where `vib-deploy build-engine` made one
    models/<run>-pruned-int8/<version>/model.onnx   the quantize stage's INT8 (QDQ) pruned model, onnxruntime_onnx
    models/<run>-pruned-openvino/<version>/model.xml + model.bin (+ model.xml.json: OpenVINO version, CPU)
                                         backend openvino (Triton's OpenVINO backend): where the openvino stage ran

Dense and pruned ship as two models (besides the chosen one) so a server can serve both and a client can compare them; the
pruned model with a reduced input (`pruned_reduced.onnx`) is not shipped: it takes kept pixels, not images.

Every config is parsed with Triton's schema (`tritonclient.grpc.model_config_pb2`) before it is written.
A version is built in a hidden folder beside its final place and renamed into it, so a server polling
the repository never sees a half-written version.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vib_deploy import __version__
from vib_deploy.config import read_run_config
from vib_deploy.data.datasets import CLASS_NAMES
from vib_deploy.deploy.choose import choice_of
from vib_deploy.deploy.deployed import Deployable, deployables
from vib_deploy.errors import UserError
from vib_deploy.records import QuantizeRecord, RunSummary
from vib_deploy.records.search import SearchRecord, chosen_run, is_search
from vib_deploy.runs.directory import (
    RunDir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
    sha256_file,
)
from vib_deploy.runs.sidecar import read_sidecar
from vib_deploy.triton.chosen import ShipTarget, chosen_target
from vib_deploy.triton.modelconfig import (
    IR_FILE,
    LABELS,
    MODEL_FILE,
    OPENVINO,
    ShipOptions,
    TensorSpec,
    check_config_matches,
    graph_io,
    parse_config,
    render_config,
)

VARIANTS = ("dense", "pruned")
PLAN_FILE = "model.plan"  # TensorRT engine; its sidecar (TensorRT version, GPU) is model.plan.json beside it
VERSION_MANIFEST = "manifest.json"
CONFIG = "config.pbtxt"


@dataclass(frozen=True)
class ShippedModel:
    """What `package` wrote for one model."""

    name: str
    version: int
    path: Path  # the version folder
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256


def versions(model_dir: Path) -> list[int]:
    """The numeric version folders of a model, ascending (hidden temp folders are not versions)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and re.fullmatch(r"[1-9][0-9]*", p.name))


def _run_name(run_dir: Path) -> str:
    from vib_deploy.config.yamlfile import load_yaml

    config = run_dir / "config.yaml"
    try:
        tree = load_yaml(config.read_text(), str(config)) if config.exists() else None
    except (UserError, UnicodeDecodeError):
        tree = None
    name = tree.get("name") if isinstance(tree, dict) else None
    return str(name or run_dir.resolve().name)


def _latency(summary: RunSummary, variant: str) -> list[dict[str, Any]]:
    keys = ("backend", "device", "batch", "threads", "p50_ms", "p99_ms", "throughput")
    return [{k: getattr(r, k) for k in keys} for r in summary.bench if r.variant == variant]


def _figures(summary: RunSummary, deployed: Deployable) -> dict[str, Any]:
    """What a shipped model's manifest says about it: its test error (the deployed net's), cost and latency."""
    m = summary.dense if deployed.name == "dense" else summary.pruned
    return {
        "dataset": summary.dataset,
        "test_samples": summary.test_samples,
        "error": deployed.error,
        "flops": m.flops,
        "params": m.params,
        "architecture": m.architecture,
        "latency": _latency(summary, deployed.name),
    }


def package(
    run_dir: Path, repo: Path, version: int | None = None, name: str | None = None, options: ShipOptions = ShipOptions()
) -> list[ShippedModel]:
    """Add the run's dense and pruned ONNX models to the Triton repository `repo` as `<name>-dense`, `<name>-pruned`
    (and their other deployments as `<name>-<variant>...`), and the chosen deployment as `<name>`.

    The version is one above the newest existing one (1 in an empty repository) unless `version` is given;
    an existing version of that number is replaced. Returns what was written, one entry per model.
    """
    run_dir, repo = Path(run_dir), Path(repo)
    if is_search(run_dir):  # a `vib-deploy search` folder: its chosen candidate, named after the pipeline
        name, run_dir = name or SearchRecord.read_folder(run_dir).name, chosen_run(run_dir)
    _check_request(run_dir, repo, version, options)
    run = RunDir(run_dir)
    summary = RunSummary.read(run)
    config = read_run_config(run_dir)
    deployed = {d.name: d for d in deployables(run, config)}
    base = name or _run_name(run_dir)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", base):
        raise UserError(f"model name {base!r} may only use letters, digits, '_', '.', '-'")
    classes = summary.preprocessing.get("classes") or CLASS_NAMES.get(summary.dataset)
    shipped = []
    for variant in VARIANTS:
        onnx_path = run.verified(deployed[variant].onnx)
        inputs, outputs = graph_io(onnx_path)
        n_out = outputs[0].dims[0] if len(outputs[0].dims) == 1 else -1
        labels = classes if classes is not None and len(classes) == n_out else [str(i) for i in range(max(n_out, 0))]
        record = {
            "variant": variant,
            "vib_deploy_version": __version__,
            "source": {
                "run": str(run_dir.resolve()),
                "run_name": _run_name(run_dir),
                "metrics_sha256": sha256_file(run.file(RunSummary.FILE)),
            },
            "metrics": _figures(summary, deployed[variant]),
        }
        targets: list[ShipTarget] = [(f"{base}-{variant}", {MODEL_FILE: onnx_path}, "onnxruntime_onnx", options, {})]
        if run.file(f"{variant}.plan").exists():  # an engine from `vib-deploy build-engine`: ship it as <model>_trt
            targets.append(_trt_target(run, f"{base}-{variant}_trt", variant, inputs[0].name, options))
        if variant == "pruned":
            targets += _cpu_targets(run, base, options) + chosen_target(run, base, choice_of(summary, config), options)
        for model_name, sources, platform, opts, extra in targets:
            model_file = IR_FILE if IR_FILE in sources else MODEL_FILE  # what an OpenVINO backend loads
            shipped.append(
                _ship_model(
                    repo / model_name,
                    sources,
                    render_config(model_name, inputs, outputs, opts, platform, model_file),
                    inputs,
                    outputs,
                    labels,
                    version,
                    {**record, **extra, "options": dataclasses.asdict(opts)},
                )
            )
    return shipped


def _check_request(run_dir: Path, repo: Path, version: int | None, options: ShipOptions) -> None:
    """Refuse a missing run, a bad version, a repository that is a file or a run directory, bad options: one line."""
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} not found")
    if version is not None and version < 1:
        raise UserError(f"--version must be a positive integer, got {version}")
    if repo.exists() and not repo.is_dir():
        raise UserError(f"--repo {repo} exists and is not a folder")
    if (repo / "manifest.json").exists():
        raise UserError(f"--repo {repo} is a run directory, not a model repository")
    options.check()


def _trt_target(run: RunDir, model_name: str, variant: str, input_name: str, options: ShipOptions) -> ShipTarget:
    """A TensorRT engine's model: KIND_GPU, batch sizes capped by its optimization profile's largest batch."""
    plan = run.verified(f"{variant}.plan")
    sidecar_path = run.verified(f"{variant}.plan.json")  # listed and unaltered
    sidecar = read_sidecar(plan, f"rebuild it with `vib-deploy build-engine {run.path}`")
    max_batch = int(sidecar["profile"][input_name][2][0])
    trt_options = dataclasses.replace(
        options,
        kind="KIND_GPU",
        max_batch_size=min(options.max_batch_size, max_batch),
        preferred_batch_sizes=tuple(b for b in options.preferred_batch_sizes if b <= max_batch) or (max_batch,),
    )
    engine = {k: sidecar.get(k) for k in ("tensorrt_version", "gpu_name", "compute_capability", "precision")}
    sources = {PLAN_FILE: plan, PLAN_FILE + ".json": sidecar_path}
    return model_name, sources, "tensorrt_plan", trt_options, {"engine": engine}


def _cpu_targets(run: RunDir, base: str, options: ShipOptions) -> list[ShipTarget]:
    """The pruned model's CPU deployments, where their stages ran: INT8 ONNX and OpenVINO IR."""
    view = run.view()
    targets: list[ShipTarget] = []
    if view.ran("quantize"):
        quant = QuantizeRecord.read(run)
        targets.append(
            (
                f"{base}-pruned-int8",
                {MODEL_FILE: run.verified("pruned_int8.onnx")},
                "onnxruntime_onnx",
                options,
                {
                    "precision": "int8",
                    "int8": {k: getattr(quant, k) for k in ("format", "weights", "activations", "calibration")},
                    "int8_error": quant.variants["pruned"].error,
                },
            )
        )
    if view.ran("openvino"):
        ir = run.verified("pruned.xml")
        sources = {
            IR_FILE: ir,
            "model.bin": run.verified("pruned.bin"),
            IR_FILE + ".json": run.verified("pruned.xml.json"),
        }
        made = read_sidecar(ir, f"rerun `vib-deploy openvino {run.path}`")
        targets.append((f"{base}-pruned-{OPENVINO}", sources, OPENVINO, options, {"openvino": made}))
    return targets


def _ship_model(
    model_dir: Path,
    sources: dict[str, Path],
    text: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    labels: list[str],
    version: int | None,
    record: dict[str, Any],
) -> ShippedModel:
    """Validate the config, then write config, labels and a new (or replaced) version of one model."""
    where = f"generated {model_dir.name}/{CONFIG}"
    check_config_matches(parse_config(text, where), inputs, outputs, where)
    labels_text = "".join(f"{c}\n" for c in labels)
    if version is None and _unchanged(model_dir, sources, text, labels_text):
        number = versions(model_dir)[-1]  # same model, same config: nothing to add (so `make run` twice adds nothing)
        return ShippedModel(model_dir.name, number, model_dir / str(number), {})
    number = version if version is not None else (max(versions(model_dir), default=0) + 1)
    record = {"model": model_dir.name, "version": number, "created_utc": _now(), "written_ns": time.time_ns(), **record}
    record["source"] = {
        **record["source"],
        "artifacts": {name: {"file": src.name, "sha256": sha256_file(src)} for name, src in sources.items()},
    }
    atomic_write_text(model_dir / CONFIG, text)
    atomic_write_text(model_dir / LABELS, labels_text)
    files = _write_version(model_dir, number, sources, record)
    return ShippedModel(model_dir.name, number, model_dir / str(number), files)


def _unchanged(model_dir: Path, sources: dict[str, Path], config_text: str, labels_text: str) -> bool:
    """True when the newest version already holds these files and the config and labels are the same."""
    numbers = versions(model_dir)
    if not numbers or not (model_dir / CONFIG).is_file() or not (model_dir / LABELS).is_file():
        return False
    vdir = model_dir / str(numbers[-1])
    try:
        files = json.loads((vdir / VERSION_MANIFEST).read_text()).get("files", {})
    except (
        OSError,
        ValueError,
        RecursionError,
        AttributeError,
    ):  # unreadable, not JSON, nested too deep, not an object
        return False
    return (
        set(files) == set(sources)
        and all(files[n] == sha256_file(src) for n, src in sources.items())
        and all((vdir / n).is_file() and sha256_file(vdir / n) == files[n] for n in files)
        and (model_dir / CONFIG).read_text() == config_text
        and (model_dir / LABELS).read_text() == labels_text
    )


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_version(model_dir: Path, number: int, sources: dict[str, Path], record: dict[str, Any]) -> dict[str, str]:
    """Build `<model_dir>/.<number>.*.tmp/` completely, then rename it to `<model_dir>/<number>/`."""
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{number}.", suffix=".tmp", dir=model_dir))
    final, old = model_dir / str(number), None
    try:
        for name, src in sources.items():
            atomic_write_bytes(tmp / name, src.read_bytes())
        files = {name: sha256_file(tmp / name) for name in sources}
        # the model-level files as they were when this version was written; `verify` checks them for the newest
        shared = {f"../{n}": sha256_file(model_dir / n) for n in (CONFIG, LABELS)}
        atomic_write_json(tmp / VERSION_MANIFEST, {**record, "files": files, "model_files": shared})
        os.chmod(tmp, 0o755)
        if final.exists():  # replacing a version: move the old one aside, then the new one in
            old = Path(tempfile.mkdtemp(prefix=f".{number}.old.", suffix=".tmp", dir=model_dir))
            os.replace(final, old / "v")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not final.exists():
            os.replace(old / "v", final)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    fsync_dir(model_dir)
    return {**files, **shared}


# -- verify -------------------------------------------------------------------------------------
def is_model_repository(path: Path) -> bool:
    """True when `path` looks like a Triton model repository (a folder of model folders with config.pbtxt)."""
    path = Path(path)
    return (
        path.is_dir()
        and not (path / "manifest.json").exists()
        and any((p / CONFIG).is_file() for p in path.iterdir() if p.is_dir())
    )
