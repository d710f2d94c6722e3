"""A run that fails leaves the run directory as it found it: every bad input that gets past config validation,
run against a finished run directory, exits 2 and changes no byte in it (config.yaml, manifest.json and every
artifact), so the next correct run finds every stage cached. A changed config says what it reruns; `verify`
reports stage records that no longer describe their inputs; a commit interrupted by a kill is rolled forward.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LENET300 as PIPELINE
from tests.conftest import ROOT, TINY, enabled_stages, run_cli
from vib_deploy.errors import UserError
from vib_deploy.runs import directory as runs
from vib_deploy.runs.directory import RunDir, atomic_write_bytes

SETTINGS = [a for a in TINY if a != "--set"]  # the shared tiny run's settings (conftest.lenet300_run)


def sets(*assignments: str) -> list[str]:
    return [a for s in assignments for a in ("--set", s)]


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file of a run directory, byte for byte."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def assert_all_cached(d: Path, *extra: str) -> None:
    proc = run_cli("run", PIPELINE, "--run-dir", str(d), *sets(*SETTINGS), *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [f"[cached] {s}" for s in enabled_stages(d)] == [
        line for line in proc.stderr.splitlines() if line.startswith("[c")
    ]


@pytest.fixture
def run_copy(lenet300_run, tmp_path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(lenet300_run[0], d)
    return d


def _factory(tmp: Path, body: str) -> str:
    path = tmp / "net.py"
    path.write_text("import torch\nfrom torch import nn\n\n" + body)
    return f"model.factory={path}:build"


def _truncated_data(tmp: Path, mnist: Path) -> list[str]:
    folder = tmp / "data"
    folder.mkdir()
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        src = next(mnist.glob(name + "*"))
        (folder / src.name).symlink_to(src)
    images = next(mnist.glob("train-images-idx3-ubyte*"))
    raw = gzip.decompress(images.read_bytes()) if images.suffix == ".gz" else images.read_bytes()
    (folder / "train-images-idx3-ubyte").write_bytes(raw[:20_000])
    return [f"data.root={folder}"]


FACTORY = ["model.name=null", "model.input_shape=[1,28,28]"]
BAD_INPUTS = [
    pytest.param(lambda t, m: [*FACTORY, f"model.factory={t}/missing.py:build"], "file", id="factory-missing"),
    pytest.param(
        lambda t, m: [*FACTORY, _factory(t, "def build(:\n    pass\n")], "SyntaxError", id="factory-syntax-error"
    ),
    pytest.param(
        lambda t, m: [
            *FACTORY,
            _factory(t, "def build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(10, 10))\n"),
        ],
        "the model fails on an input of shape",
        id="model-does-not-run",
    ),
    pytest.param(
        lambda t, m: [
            *FACTORY,
            _factory(
                t,
                "def build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 20), "
                "nn.Sigmoid(), nn.Linear(20, 10))\n",
            ),
        ],
        "cannot be pruned exactly",
        id="model-not-prunable",
    ),
    pytest.param(lambda t, m: [f"data.root={(t / 'empty').mkdir() or t / 'empty'}"], "data.root", id="data-root-empty"),
    pytest.param(lambda t, m: [f"data.root={t / 'nowhere'}"], "is not a folder", id="data-root-missing"),
    pytest.param(_truncated_data, "truncated", id="data-truncated"),
    pytest.param(lambda t, m: ["train.dense.lr=1e30"], "loss is nan", id="nan-loss"),
]


@pytest.mark.e2e
@pytest.mark.parametrize("make,fragment", BAD_INPUTS)
def test_bad_input_leaves_the_run_directory_untouched(run_copy, tmp_path, mnist_root, make, fragment):
    before = snapshot(run_copy)
    proc = run_cli("run", PIPELINE, "--run-dir", str(run_copy), *sets(*SETTINGS, *make(tmp_path, mnist_root)))
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert fragment in errors[0]
    assert snapshot(run_copy) == before  # config.yaml, manifest.json and every artifact: not one byte changed


@pytest.mark.e2e
def test_nan_loss_then_the_correct_run_is_all_cached(run_copy):
    proc = run_cli("run", PIPELINE, "--run-dir", str(run_copy), *sets(*SETTINGS, "train.dense.lr=1e30"))
    assert proc.returncode == 2 and "loss is nan" in proc.stderr
    assert "train.dense.lr differs from the finished run; train-dense and 5 later stages will rerun" in proc.stderr
    assert_all_cached(run_copy)


def test_disk_full_at_the_first_write(run_copy, monkeypatch):
    from vib_deploy.config import load_config
    from vib_deploy.pipeline import run_pipeline

    real = runs.atomic_write

    def full(path, write, size=None):
        def fail(tmp):
            raise OSError(errno.ENOSPC, "No space left on device")

        real(path, fail, size)

    before = snapshot(run_copy)
    # every writer in vib_deploy goes through it: patch it where it is defined and in every module that imported the
    # name (imported first, so none binds the failing one for good and breaks later tests in this process)
    import importlib
    import pkgutil

    import vib_deploy

    for info in pkgutil.walk_packages(vib_deploy.__path__, "vib_deploy."):
        if info.name.endswith("__main__"):  # runs the CLI
            continue
        module = importlib.import_module(info.name)
        if getattr(module, "atomic_write", None) is real:
            monkeypatch.setattr(module, "atomic_write", full)
    config = load_config(ROOT / PIPELINE, [*SETTINGS, "train.seed=1"])
    with pytest.raises(UserError, match="disk full while writing"):
        run_pipeline(config, run_copy, echo=lambda _: None)
    assert snapshot(run_copy) == before


@pytest.mark.e2e
def test_kill_during_the_first_stage_of_a_changed_config(run_copy):
    config, stages = (
        (run_copy / "config.yaml").read_bytes(),
        json.loads((run_copy / "manifest.json").read_text())["stages"],
    )
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vib_deploy",
            "run",
            PIPELINE,
            "--run-dir",
            str(run_copy),
            *sets(*SETTINGS, "train.dense.epochs=40", "data.train_limit=5000"),
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stderr is not None
    for line in child.stderr:
        if line.startswith("[run] train-dense"):
            break
    time.sleep(3)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert (run_copy / "config.yaml").read_bytes() == config
    assert json.loads((run_copy / "manifest.json").read_text())["stages"] == stages
    assert_all_cached(run_copy)


@pytest.mark.e2e
def test_changed_config_says_what_reruns(run_copy):
    proc = run_cli("run", PIPELINE, "--run-dir", str(run_copy), *sets(*SETTINGS, "bench.rounds=3"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{run_copy}: bench.rounds differs from the finished run; bench and 1 later stage will rerun" in proc.stderr
    assert "[cached] export" in proc.stderr and "[run] bench" in proc.stderr
    proc = run_cli("run", PIPELINE, "--run-dir", str(run_copy), *sets(*SETTINGS, "bench.rounds=3"))
    assert "differs" not in proc.stderr  # the run directory now holds that config


@pytest.mark.e2e
def test_verify_reports_stale_and_missing_records(run_copy):
    # train-dense commits with a new setting, then train-vib fails: its old record no longer matches dense.pt
    proc = run_cli(
        "run", PIPELINE, "--run-dir", str(run_copy), *sets(*SETTINGS, "train.dense.lr=2e-3", "train.vib.lr=1e30")
    )
    assert proc.returncode == 2 and "[run] train-dense" in proc.stderr and "loss is nan" in proc.stderr
    proc = run_cli("verify", str(run_copy))
    assert (
        proc.returncode == 2
        and "stage train-vib is out of date (dense.pt, train-dense.json changed since it ran)" in proc.stderr
    )
    manifest = json.loads((run_copy / "manifest.json").read_text())
    del manifest["stages"]["prune"]
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli("verify", str(run_copy))
    assert proc.returncode == 2 and "stage prune has outputs but no record" in proc.stderr
    proc = run_cli("run", PIPELINE, "--run-dir", str(run_copy), *sets(*SETTINGS, "train.dense.lr=2e-3"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert run_cli("verify", str(run_copy)).returncode == 0


def test_a_commit_interrupted_by_a_kill_is_rolled_forward(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "r")
    with run.locked():
        for name in ("a.json", "b.json"):
            atomic_write_bytes(run.staged("s", name), b"old " + name.encode())
        run.commit("s", "k1", ["a.json", "b.json"])
        for name in ("a.json", "b.json"):
            atomic_write_bytes(run.staged("s", name), b"new " + name.encode())
        real_replace, calls = os.replace, []

        def killed_after_one_rename(src, dst):
            calls.append(src)
            if (
                str(src).startswith(str(run.path / runs.STAGING))
                and len([c for c in calls if runs.STAGING in str(c)]) == 2
            ):
                raise KeyboardInterrupt  # the process dies between the two renames
            real_replace(src, dst)

        monkeypatch.setattr(runs.os, "replace", killed_after_one_rename)
        with pytest.raises(KeyboardInterrupt):
            run.commit("s", "k2", ["a.json", "b.json"])
        monkeypatch.setattr(runs.os, "replace", real_replace)
        assert run.file("a.json").read_bytes() == b"new a.json" and run.file("b.json").read_bytes() == b"old b.json"
        assert run.verified("a.json") and run.verified("b.json")  # mid-commit, either side verifies
    with run.locked():  # the next lock holder completes the commit
        assert run.manifest()["stages"]["s"]["key"] == "k2" and runs.JOURNAL not in run.manifest()
        assert run.file("b.json").read_bytes() == b"new b.json" and run.verify_all() == ["a.json", "b.json"]
        assert not (run.path / runs.STAGING).exists()


def test_uncommitted_outputs_are_dropped_and_the_old_ones_kept(tmp_path):
    run = RunDir(tmp_path / "r")
    with run.locked():
        atomic_write_bytes(run.staged("s", "a.json"), b"old")
        run.commit("s", "k1", ["a.json"])
        atomic_write_bytes(run.staged("s", "a.json"), b"new, never committed")
    with run.locked():
        assert run.file("a.json").read_bytes() == b"old" and run.stage_is_current("s", "k1")
        assert not (run.path / runs.STAGING).exists()


def test_a_failed_first_run_leaves_no_directory(tmp_path):
    proc = run_cli("run", PIPELINE, "--run-dir", str(tmp_path / "r"), *sets(f"data.root={tmp_path / 'nowhere'}"))
    assert proc.returncode == 2 and "data.root" in proc.stderr
    assert not (tmp_path / "r").exists()
