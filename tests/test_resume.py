"""A run killed (SIGKILL) at any moment resumes to the same bits as a run that was never interrupted.

One uninterrupted reference run, then one run directory that is killed again and again at points drawn
from a fixed-seed random (at start-up, mid-epoch in both training stages, while a checkpoint is being
written, right after a checkpoint lands, during export) and finally rerun to completion (both runs stop after
export, the last kill point). The final dense and VIB weights must equal the reference bit for bit, every
artifact must verify against manifest.json, and no temp file or lock may be left behind. One thread everywhere
so CPU kernels are deterministic.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_cli
from vib_deploy.errors import UserError
from vib_deploy.runs.directory import RunDir, sha256_file

SETTINGS = [
    "data.train_limit=3000",
    "data.val_size=500",
    "data.test_limit=500",
    "train.dense.epochs=5",
    "train.vib.epochs=4",
    "train.vib.finetune_epochs=1",
    "train.finetune.epochs=3",
    "bench.rounds=1",
    "bench.iters_per_round=2",
    "bench.warmup=0",
    "bench.batch_sizes=[1]",
    "bench.memory=false",
    "bench.backends=[onnxruntime]",
]
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
POLL_S = 0.0005


def _command(run_dir: Path, until: str | None = "export") -> list[str]:
    """The run the kills hit; it stops after export (the last kill point): bench and report resume nothing."""
    args = [sys.executable, "-m", "vib_deploy", "run", "pipelines/mnist-lenet300.yaml", "--run-dir", str(run_dir)]
    args += ["--until", until] if until else []
    for s in SETTINGS:
        args += ["--set", s]
    return args


def _start(run_dir: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            _command(run_dir), cwd=ROOT, env={**os.environ, **ENV}, stdout=out, stderr=subprocess.STDOUT
        )


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _temps(run_dir: Path, name: str) -> list[Path]:
    return list(run_dir.glob(f".{name}.*.tmp"))


def _wait(proc: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """Poll until `ready()` is true (True) or the process exits first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if proc.poll() is not None:
            return ready()
        time.sleep(POLL_S)
    raise AssertionError(f"timed out waiting for a kill point (pid {proc.pid})")


def _ckpt_epoch(run_dir: Path, stage: str) -> int | None:
    path = run_dir / f"{stage}.ckpt"
    if not path.exists():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def _stale_manifest(run_dir: Path) -> list[str]:
    """Files whose bytes are not what manifest.json lists (a kill between a write and its manifest entry)."""
    manifest = run_dir / "manifest.json"
    artifacts = json.loads(manifest.read_text())["artifacts"] if manifest.exists() else {}
    return sorted(
        p.name
        for p in run_dir.glob("*.ckpt")
        if p.name not in artifacts or sha256_file(p) != artifacts[p.name]["sha256"]
    )


def _weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / name, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_root) -> Path:
    run_dir = tmp_path_factory.mktemp("resume") / "reference"
    proc = run_cli(*_command(run_dir)[3:], env=ENV, process=True)  # the bits the killed processes must reproduce
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.e2e
def test_sigkill_anywhere_then_rerun_is_bitwise_equal(reference, tmp_path):
    run_dir = tmp_path / "killed"
    log = tmp_path / "log.txt"
    rng = random.Random(20240611)
    epoch_s = json.loads((reference / "train-dense.json").read_text())["seconds"] / 5  # one dense epoch, about

    # each kill point is a factory called just before its process starts, so "changed" means "by this process"
    def changed(name: str):
        before = _stamp(run_dir / name)
        return lambda: _stamp(run_dir / name) not in (None, before)

    def writing(name: str):
        before = set(_temps(run_dir, name))
        return lambda: bool(set(_temps(run_dir, name)) - before)

    def exists(name: str):
        return lambda: (run_dir / name).exists()

    plan = [
        ("start-up", lambda: lambda: True, rng.uniform(0.3, 2.5)),
        ("mid-epoch, dense", lambda: changed("train-dense.ckpt"), rng.uniform(0.2, 0.8) * epoch_s),
        ("during a dense checkpoint write", lambda: writing("train-dense.ckpt"), 0.0),
        ("right after a dense checkpoint", lambda: changed("train-dense.ckpt"), 0.0),
        ("mid-epoch, VIB", lambda: changed("train-vib.ckpt"), rng.uniform(0.2, 0.8) * epoch_s),
        ("during a VIB checkpoint write", lambda: writing("train-vib.ckpt"), 0.0),
        ("right after a VIB checkpoint", lambda: changed("train-vib.ckpt"), 0.0),
        ("mid-epoch, finetune", lambda: changed("finetune.ckpt"), 0.1 * epoch_s),  # short: its 3 epochs are quick
        ("during export", lambda: exists("dense.onnx"), rng.uniform(0.0, 0.5)),
    ]
    killed = []
    for what, kill_point, delay in plan:
        ready = kill_point()
        proc = _start(run_dir, log)
        try:
            hit = _wait(proc, ready)
            if hit and delay:
                time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            rc = proc.wait(timeout=60)
            assert rc in (-signal.SIGKILL, 0), log.read_text()[-3000:]
            if rc == -signal.SIGKILL:
                killed.append(
                    (
                        what,
                        hit,
                        _ckpt_epoch(run_dir, "train-dense"),
                        _ckpt_epoch(run_dir, "train-vib"),
                        sorted(p.name for p in run_dir.glob(".*.tmp")),
                        _stale_manifest(run_dir),
                        _ckpt_epoch(run_dir, "finetune"),
                    )
                )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # the plan really interrupted training: a dense and a VIB kill landed with that stage's epochs unfinished
    assert any(d is not None and d < 5 for _, _, d, *_ in killed), killed
    assert any(v is not None and v < 4 for _, _, _, v, *_ in killed), killed
    assert any(k[-1] is not None and k[-1] < 3 for k in killed), killed  # and the finetune stage mid-way
    assert len(killed) >= 6, killed

    proc = _start(run_dir, log)
    assert proc.wait(timeout=300) == 0, f"kills: {killed}\n" + log.read_text()[-3000:]

    for name in ("dense.pt", "vib.pt", "finetuned.pt"):
        ref, got = _weights(reference, name), _weights(run_dir, name)
        assert ref.keys() == got.keys()
        for key in ref:
            assert torch.equal(ref[key], got[key]), f"{name}:{key} differs after resume (kills: {killed})"
    # the history the checkpoints carried across kills is the uninterrupted one
    for name in ("train-dense.json", "train-vib.json", "finetune.json"):
        assert (
            json.loads((run_dir / name).read_text())["history"] == json.loads((reference / name).read_text())["history"]
        )

    proc = run_cli("verify", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    files = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith(".tmp")], sorted(files)
    assert ".lock" not in files
    assert files - {"manifest.json", "config.yaml"} == set(manifest["artifacts"]), sorted(files)


@pytest.mark.e2e
def test_changed_vib_setting_reruns_from_train_vib(reference, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(reference, run_dir)
    dense, dense_ckpt = (run_dir / "dense.pt").read_bytes(), (run_dir / "train-dense.ckpt").read_bytes()
    proc = run_cli(*_command(run_dir, until=None)[3:], "--set", "train.vib.kl_factor=2e-5", env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("[cached]")] == ["train-dense"]
    assert [line.split()[1] for line in lines if line.startswith("[run]")] == [
        "train-vib",
        "prune",
        "finetune",
        "export",
        "bench",
        "report",
    ]
    assert (run_dir / "dense.pt").read_bytes() == dense and (run_dir / "train-dense.ckpt").read_bytes() == dense_ckpt
    # the old VIB checkpoint belongs to the old key: VIB training starts over instead of resuming from it
    assert json.loads((run_dir / "train-vib.json").read_text())["resumed_from_epoch"] == 0
    assert any(
        not torch.equal(a, b)
        for a, b in zip(_weights(reference, "vib.pt").values(), _weights(run_dir, "vib.pt").values())
    )
    assert run_cli("verify", str(run_dir)).returncode == 0


# -- the two windows of a checkpoint write, hit deterministically -------------------------------------------
class _Killed(BaseException):
    """Stands for SIGKILL: nothing after the raise runs (atomic_write only removes its own temp file)."""


@pytest.mark.parametrize("first", [True, False], ids=["first-write", "overwrite"])
@pytest.mark.parametrize("window", ["before-rename", "after-rename"])
def test_checkpoint_write_killed_in_either_window_leaves_a_file_that_verifies(tmp_path, monkeypatch, window, first):
    run = RunDir(tmp_path)
    if not first:
        run.write_artifact("train-dense", "x.ckpt", lambda tmp: tmp.write_bytes(b"epoch 1"))
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "x.ckpt":
            raise _Killed
        return real_replace(src, dst)

    def add_artifacts(*args):
        raise _Killed

    if window == "before-rename":
        monkeypatch.setattr("vib_deploy.runs.directory.os.replace", replace)  # dies just before the checkpoint's rename
    else:
        monkeypatch.setattr(RunDir, "add_artifacts", add_artifacts)  # dies just after it
    with pytest.raises(_Killed):
        run.write_artifact("train-dense", "x.ckpt", lambda tmp: tmp.write_bytes(b"epoch 2"))
    monkeypatch.undo()

    path = tmp_path / "x.ckpt"
    if window == "before-rename" and first:
        assert not path.exists()  # nothing to resume from: training starts over, which is correct
        return
    assert path.read_bytes() == (b"epoch 1" if window == "before-rename" else b"epoch 2")
    assert run.verified("x.ckpt") == path and run.verify_all() == ["x.ckpt"]
    path.write_bytes(b"epoch 3")  # bytes vib-deploy never wrote still fail
    with pytest.raises(UserError, match="x.ckpt is corrupt or was altered"):
        run.verified("x.ckpt")
    # the next complete write settles the entry
    run.write_artifact("train-dense", "x.ckpt", lambda tmp: tmp.write_bytes(b"epoch 4"))
    entry = json.loads((tmp_path / "manifest.json").read_text())["artifacts"]["x.ckpt"]
    assert entry["sha256"] == sha256_file(path) and run.verified("x.ckpt") == path


def test_lock_holder_removes_temp_files_of_killed_writers(tmp_path):
    (tmp_path / "plots").mkdir()
    leftovers = [tmp_path / ".train-dense.ckpt.k1x2y3.tmp", tmp_path / "plots" / ".units.png.a1b2c3.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / "dense.pt", tmp_path / ".hidden"]
    for p in leftovers + kept:
        p.write_bytes(b"x")
    with RunDir(tmp_path).locked():
        assert not [p for p in leftovers if p.exists()]
    assert all(p.exists() for p in kept)
