"""Training under torchrun (DDP, gloo on CPU): the steps of one process, one writer, exact resume per rank.

Two processes are spawned once for the module (torch.multiprocessing, env as torchrun sets it, the group joined
through a file store) and run the scenarios below; the tests compare what they wrote with single-process runs. A
last test runs the whole pipeline under `python -m torch.distributed.run --nproc-per-node 2`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, TINY, InterruptAfter, run_cli
from vib_deploy.errors import UserError
from vib_deploy.model.vib import gates
from vib_deploy.runs.directory import RunDir
from vib_deploy.training import distributed
from vib_deploy.training.loop import TrainSpec, train
from vib_deploy.zoo import gated_model

WORLD = 2
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _data(n_train=245):
    # 245 images in batches of 50: the last batch (45) splits 23/22, so the uneven-slice weighting is used too
    rng = np.random.default_rng(0)
    x = rng.random((n_train + 50, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, n_train + 50).astype(np.int64)
    return SimpleNamespace(x_train=x[:n_train], y_train=y[:n_train], x_val=x[n_train:], y_val=y[n_train:])


def _spec(**kw):
    base = dict(
        stage="train-vib",
        key="k",
        epochs=1,
        lr=1e-3,
        batch_size=50,
        seed=0,
        device=torch.device("cpu"),
        gate_lr=1e-2,
        kl_factor=1e-3,
    )
    return TrainSpec(**{**base, **kw})


def _noiseless_model():
    """lenet300 whose gate noise is negligible: sigma = exp(logD / 2) = exp(-30) ~ 1e-13."""
    torch.manual_seed(0)
    model = gated_model("lenet300")
    for g in gates(model):
        g.logD.data.fill_(-60.0)
    return model


def _steps_without_noise(out: Path) -> None:
    """One step; then a 5-step VIB epoch (uneven last batch) and a fine-tuning epoch; params to `out`.

    lr 1e-4: Adam's first step is lr * g / (|g| + 1e-8), which turns the float rounding of a gradient
    entry near 0 (~1e-9 here) into lr * 1e-1 of parameter change; at lr 1e-3 that is ~2e-6.
    """
    for name, spec, n_train in [
        ("one-step", _spec(lr=1e-4), 50),
        ("two-epochs", _spec(lr=1e-4, epochs=2, finetune_epochs=1), 245),
    ]:
        model = _noiseless_model()
        result = train(model, spec, _data(n_train), RunDir(out / f"{name}-run"))
        if distributed.is_main():
            grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}  # the last step's
            torch.save({"state": model.state_dict(), "grads": grads, "history": result.history}, out / f"{name}.pt")


def _resume_with_noise(out: Path) -> None:
    """4 epochs (the last fine-tuning) straight vs interrupted in epoch 3 and resumed, gate noise on;
    every rank saves its params."""
    rank = distributed.rank()
    spec = _spec(epochs=4, finetune_epochs=1)
    torch.manual_seed(0)
    full = gated_model("lenet300")
    train(full, spec, _data(), RunDir(out / "full"))
    torch.manual_seed(0)
    with pytest.raises(UserError, match="interrupted at epoch 3, batch 2"):
        train(gated_model("lenet300"), spec, _data(), RunDir(out / "part"), InterruptAfter(5 + 5 + 2))
    torch.manual_seed(123)  # the checkpoint's per-rank RNG state must win
    resumed = gated_model("lenet300")
    result = train(resumed, spec, _data(), RunDir(out / "part"))
    torch.save(
        {"full": full.state_dict(), "resumed": resumed.state_dict(), "resumed_from": result.resumed_from},
        out / f"resume-rank{rank}.pt",
    )


def _worker(rank: int, out: Path) -> None:
    import torch.distributed as dist

    os.environ.update(ONE_THREAD, WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # joined through a file store, not a TCP port picked here and bound later (another xdist worker's servers can
    # take a free port in between); the real env:// join is test_pipeline_under_torchrun_two_ranks's
    store = dist.FileStore(str(out / "store"), WORLD)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD, timeout=distributed.WAIT_TIMEOUT)
    try:
        with distributed.process_group():  # already joined: the code under test sees torchrun's group
            assert distributed.world_size() == WORLD and distributed.rank() == rank
            _steps_without_noise(out)
            _resume_with_noise(out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp2")
    torch.multiprocessing.spawn(_worker, args=(out,), nprocs=WORLD, join=True)
    return out


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _steps_without_noise(out)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("name", ["one-step", "two-epochs"])
def test_two_ranks_take_the_single_process_steps(two_ranks, one_rank, name):
    ddp, single = torch.load(two_ranks / f"{name}.pt"), torch.load(one_rank / f"{name}.pt")
    assert ddp["grads"].keys() == single["grads"].keys() and single["grads"]
    for key, g in single["grads"].items():  # what DDP promises: the average of the halves' gradients is the whole's
        diff = (ddp["grads"][key] - g).abs().max().item()
        assert diff <= 1e-6, f"{key}: last step's gradient differs by {diff:.3g}"
    for key, p in single["state"].items():
        diff = (ddp["state"][key] - p).abs().max().item()
        assert diff <= 1e-6, f"{key}: 2 ranks x half batches differ from 1 rank x full batches by {diff:.3g}"
    start = _noiseless_model().state_dict()
    assert any(not torch.equal(start[k], p) for k, p in single["state"].items())  # the step did move the weights
    for a, b in zip(ddp["history"], single["history"]):
        assert a["val_acc"] == b["val_acc"] and a["units_alive"] == b["units_alive"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["kl"] == pytest.approx(b["kl"], rel=1e-5)


def test_resume_is_bitwise_on_every_rank_and_replicas_agree(two_ranks):
    ranks = [torch.load(two_ranks / f"resume-rank{r}.pt") for r in range(WORLD)]
    for saved in ranks:
        assert saved["resumed_from"] == 2
        for key, p in saved["full"].items():
            assert torch.equal(p, saved["resumed"][key]), f"{key} differs after resume"
    for key, p in ranks[0]["full"].items():
        assert torch.equal(p, ranks[1]["full"][key]), f"{key} differs between ranks"
    ckpt = torch.load(two_ranks / "part" / "train-vib.ckpt", weights_only=True)
    assert ckpt["world_size"] == WORLD and len(ckpt["rng_ranks"]) == WORLD
    assert not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])  # each rank its own noise


def test_resume_with_another_process_count_is_refused(two_ranks):
    with pytest.raises(UserError, match="written by a 2-process run and has 1 epoch"):
        train(gated_model("lenet300"), _spec(epochs=5, finetune_epochs=1), _data(), RunDir(two_ranks / "part"))


# VGG-16 (the pipeline) at 1/8 width on MNIST: gates on dependency groups, applied by hooks, under DDP
VGG_TINY = [
    "--set",
    "model.kwargs.width=0.125",
    "--set",
    "data.dataset=mnist",
    "--set",
    "train.device=cpu",
    "--set",
    "train.vib.finetune_epochs=0",
    "--set",
    "train.batch_size=100",
    "--set",
    "train.vib.kl_factor=1e-3",
    "--set",
    "quantize.enabled=false",
]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "pipeline, extra",
    [("pipelines/mnist-lenet300.yaml", []), ("pipelines/vgg16-fashion.yaml", VGG_TINY)],
    ids=["lenet300", "vgg16"],
)
def test_pipeline_under_torchrun_two_ranks(tmp_path, mnist_root, pipeline, extra):
    run_dir = tmp_path / "ddp"
    settings = [*TINY, "--set", "bench.memory=false", "--set", "bench.backends=[onnxruntime]", *extra]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(WORLD),
            "-m",
            "vib_deploy",
            "run",
            pipeline,
            "--run-dir",
            str(run_dir),
            *settings,
        ],
        cwd=ROOT,
        env={**os.environ, **ONE_THREAD},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    vib = json.loads((run_dir / "train-vib.json").read_text())
    masks = vib["mask_sha256_per_rank"]
    assert vib["world_size"] == WORLD and len(masks) == WORLD and len(set(masks)) == 1
    assert json.loads((run_dir / "train-dense.json").read_text())["world_size"] == WORLD
    assert (run_dir / "metrics.json").is_file()
    ckpt = torch.load(run_dir / "train-vib.ckpt", weights_only=True)
    assert ckpt["world_size"] == WORLD and len(ckpt["rng_ranks"]) == WORLD
    # one writer: every file is in the manifest and verifies; no temp file, lock or second copy
    assert run_cli("verify", str(run_dir)).returncode == 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    files = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert files - {"manifest.json", "config.yaml"} == set(manifest["artifacts"]), sorted(files)
    # rank 0 alone reports: each stage announced once, the final table printed once
    assert [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("[run]")] == [
        "train-dense",
        "train-vib",
        "prune",
        "export",
        "bench",
        "report",
    ]
    assert proc.stdout.count("architecture kept") == 1
