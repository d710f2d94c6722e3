"""Ctrl-C during training: the completed epochs are on disk, one clear message says how to resume."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, run_cli

# ~1 s per dense epoch: the signal lands mid-training even on a loaded machine
ARGS = [
    "run",
    "pipelines/mnist-lenet300.yaml",
    "--set",
    "data.train_limit=30000",
    "--set",
    "data.val_size=500",
    "--set",
    "data.test_limit=500",
    "--set",
    "train.dense.epochs=50",
    "--set",
    "train.vib.epochs=1",
    "--set",
    "bench.backends=[onnxruntime]",
    "--set",
    "bench.batch_sizes=[1]",
    "--set",
    "bench.rounds=1",
    "--set",
    "bench.iters_per_round=2",
    "--set",
    "bench.memory=false",
    "--set",
    "train.finetune.epochs=0",
]


@pytest.mark.e2e
def test_ctrl_c_saves_and_says_how_to_resume(tmp_path, mnist_root):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "vib_deploy", *ARGS, "--run-dir", str(run_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a terminal's default SIGINT, also when the suite itself runs in the background (where it is ignored)
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    ckpt = run_dir / "train-dense.ckpt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), "no checkpoint after 120 s"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "train-dense interrupted at epoch" in stderr and "rerun the same command to resume" in stderr
    assert not (run_dir / ".lock").exists()
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    verify = run_cli("verify", str(run_dir))
    assert verify.returncode == 0, verify.stderr
