"""A full disk while writing: one clear line naming the file and the bytes needed, nothing partial left."""

import errno
import subprocess

import pytest

from tests.conftest import run_cli
from vib_deploy.errors import UserError
from vib_deploy.runs.directory import atomic_write


def test_enospc_names_file_and_size(tmp_path, monkeypatch):
    def full(tmp):
        tmp.write_bytes(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=r"disk full while writing .*a\.bin: more than the 10 bytes written needed"):
        atomic_write(tmp_path / "a.bin", full)
    with pytest.raises(UserError, match=r"b\.bin: 1,234 bytes needed"):
        atomic_write(tmp_path / "b.bin", full, size=1234)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_fs(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up here (needs root): {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_real_full_disk_during_a_run(tiny_fs, mnist_root):
    run_dir = tiny_fs / "run"
    proc = run_cli(
        "run",
        "pipelines/mnist-lenet300.yaml",
        "--run-dir",
        str(run_dir),
        "--set",
        "data.train_limit=500",
        "--set",
        "data.val_size=100",
        "--set",
        "train.dense.epochs=1",
        "--set",
        "train.vib.epochs=1",
        "--set",
        "train.finetune.epochs=0",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in proc.stderr
    assert "disk full while writing" in error[0] and "bytes needed" in error[0] and "bytes free" in error[0]
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written left
