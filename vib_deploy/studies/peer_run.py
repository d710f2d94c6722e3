"""A peer run: one peer method against a finished VIB run, in its own run directory (see studies/compare.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from vib_deploy.config import FinetuneConfig, PipelineConfig, read_run_config
from vib_deploy.deploy.deployed import deployable
from vib_deploy.nets import load_model
from vib_deploy.pipeline import run_stage, write_config
from vib_deploy.records import PruneRecord
from vib_deploy.runs.directory import RunDir
from vib_deploy.stages.base import Context
from vib_deploy.stages.registry import STAGE_NAMES, get_stage, peer_stages
from vib_deploy.studies.common import Echo, copy_stage
from vib_deploy.studies.peer_stage import PeerSpec, peer_prune
from vib_deploy.studies.peers import dense_widths


def run_peer(
    config: PipelineConfig,
    vib_run: RunDir,
    method: str,
    progress: Any = None,
    echo: Echo = print,
    until: str | None = None,
) -> RunDir:
    """One peer of a finished VIB run: its own run directory, the same dense stage, export and bench (stopping
    after stage `until`, e.g. before bench; None: every stage)."""
    # a peer fine-tunes in its own prune stage; the pipeline's finetune stage is VIB's (off here, so not an input)
    vib_finetune = config.train.finetune.epochs
    config = config.model_copy(
        update={"train": config.train.model_copy(update={"finetune": FinetuneConfig.model_validate({})})}
    )
    vib_prune = PruneRecord.read(vib_run)
    hidden = len(dense_widths(load_model(vib_run.verified("dense.pt"))))
    arch = vib_prune.dense_architecture
    spec = PeerSpec(
        method,
        vib_prune.pruned.flops,
        str(vib_run.path),
        arch[0] if len(arch) == hidden + 1 else None,
        tuple(vib_prune.architecture),
        vib_run.view().sha256("pruned.pt"),
        vib_finetune,
    )
    run = RunDir(Path(f"{vib_run.path}-{method}"))
    copy_stage(vib_run, run, "train-dense")
    # its own prune (on the dense stage alone, keyed on the spec), then the pipeline's peer stages unchanged
    peer = replace(get_stage("prune"), needs=("train-dense",), section=spec.section, run=lambda c: peer_prune(c, spec))
    last = STAGE_NAMES.index(until) if until else len(STAGE_NAMES)
    stages = [peer, *(s for s in peer_stages() if s.enabled(config) and STAGE_NAMES.index(s.name) <= last)]
    with run.locked():
        write_config(run, config)
        ctx = Context(run, config, progress)
        for stage in stages:
            run_stage(ctx, stage, echo=echo)
    return run


def per_image_correct(run: RunDir) -> Any:
    """Whether the run's deployed model (fine-tuned when its finetune stage is on, else pruned) gets each test image right."""
    import torch

    from vib_deploy.data.datasets import splits_of
    from vib_deploy.training.evaluate import predict

    config = read_run_config(run.path)
    data = splits_of(config.data)
    model = load_model(run.verified(deployable(run, config, "pruned").model_file))
    return predict(model, data.x_test, torch.device("cpu")).argmax(1).numpy() == data.y_test
