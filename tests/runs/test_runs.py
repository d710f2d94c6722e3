"""Atomic writes, the sha256 manifest, stage keys and the run lock."""

import json
import os
import subprocess
import sys

import pytest

from vib_deploy.errors import UserError
from vib_deploy.runs.directory import RunDir, atomic_write, atomic_write_text, stage_key


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def boom(tmp):
        tmp.write_text("partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temp file left behind


def test_manifest_detects_altered_and_truncated(tmp_path):
    run = RunDir(tmp_path)
    atomic_write_text(run.file("x.json"), '{"a": 1}')
    run.finish("s", "k", ["x.json"])
    assert run.verified("x.json") == tmp_path / "x.json"
    assert run.stage_is_current("s", "k") and not run.stage_is_current("s", "other")
    (tmp_path / "x.json").write_text('{"a": 2}')
    with pytest.raises(UserError, match="x.json is corrupt or was altered"):
        run.verified("x.json")
    assert not run.stage_is_current("s", "k")
    (tmp_path / "x.json").write_text("")
    with pytest.raises(UserError, match="0 bytes, expected 8"):
        run.verify_all()


def test_unlisted_and_missing(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "y.bin").write_bytes(b"1")
    with pytest.raises(UserError, match="not listed"):
        run.verified("y.bin")
    with pytest.raises(UserError, match="missing"):
        run.verified("z.bin")


def test_stage_key_changes_with_each_part():
    base = stage_key({"a": 1}, {"f": "h"}, "1")
    assert base == stage_key({"a": 1}, {"f": "h"}, "1")
    assert (
        len(
            {
                base,
                stage_key({"a": 2}, {"f": "h"}, "1"),
                stage_key({"a": 1}, {"f": "g"}, "1"),
                stage_key({"a": 1}, {"f": "h"}, "2"),
            }
        )
        == 4
    )


def test_lock_names_the_other_process(tmp_path):
    """The one live-lock check: a live holder's lock and its half-written temp files are left alone."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".lock").write_text(str(holder.pid))
        writing = tmp_path / ".vib.pt.q9w8e7.tmp"
        writing.write_bytes(b"half a model")
        with pytest.raises(UserError, match=f"in use by another vib-deploy process \\(pid {holder.pid}\\)"):
            with RunDir(tmp_path).locked():
                pass
        assert (tmp_path / ".lock").read_text() == str(holder.pid) and writing.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and is taken over
    with RunDir(tmp_path).locked():
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def _hostile_manifest(run_dir, name):
    """A manifest that lists `name` (with a plausible entry) beside a real artifact."""
    import json

    run = RunDir(run_dir)
    atomic_write_text(run.file("x.json"), "{}")
    run.finish("s", "k", ["x.json"])
    manifest = json.loads(run.file("manifest.json").read_text())
    manifest["artifacts"][name] = dict(manifest["artifacts"]["x.json"])
    run.file("manifest.json").write_text(json.dumps(manifest))
    return run


@pytest.mark.parametrize(
    "name", ["../../../../../../etc/hostname", "/etc/hostname", "sub/../../x", "..", "a\\b", "a//b"]
)
def test_a_manifest_name_that_climbs_out_is_refused_before_anything_is_opened(tmp_path, monkeypatch, name):
    import builtins
    import io

    run = _hostile_manifest(tmp_path / "run", name)
    opened = []
    real_open = builtins.open

    def spy(file, *a, **k):
        opened.append(os.path.abspath(file) if isinstance(file, (str, os.PathLike)) else file)
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    for call in (lambda: run.verified("x.json"), lambda: run.verified(name), run.verify_all):
        with pytest.raises(UserError, match="is not a plain file name inside"):
            call()
    outside = [p for p in opened if not str(p).startswith(str(tmp_path))]
    assert opened and not outside, outside  # the manifest itself was read; nothing else


def test_a_symlink_that_leaves_the_run_directory_is_refused_unread(tmp_path, monkeypatch):
    import builtins

    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    run = _hostile_manifest(tmp_path / "run", "model.onnx")
    os.symlink(secret, run.file("model.onnx"))
    os.symlink(run.file("x.json"), run.file("inside.json"))  # a link that stays inside is a plain name
    real_open = builtins.open
    opened = []
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    with pytest.raises(UserError, match="'model.onnx', which is not a plain file name inside"):
        run.verified("model.onnx")
    assert not any("secret" in p or p.endswith("model.onnx") for p in opened)


DEEP = "[" * 200_000 + "]" * 200_000  # parses to a list 200,000 deep: past Python's recursion limit


def test_json_nested_too_deep_is_corrupt_not_a_crash(tmp_path):
    from vib_deploy.runs.sidecar import read_sidecar

    (tmp_path / "manifest.json").write_text(DEEP)
    with pytest.raises(UserError, match="manifest.json is corrupt or altered: JSON nested too deep"):
        RunDir(tmp_path).manifest()
    (tmp_path / "model.xml.json").write_text(DEEP)  # an artifact's sidecar
    with pytest.raises(UserError, match="model.xml.json is corrupt or altered: JSON nested too deep; remake it"):
        read_sidecar(tmp_path / "model.xml", "remake it")


def test_a_deep_manifest_through_the_cli_is_one_line(tmp_path):
    from tests.conftest import assert_user_error, run_cli

    (tmp_path / "manifest.json").write_text(DEEP)
    assert_user_error(run_cli("verify", str(tmp_path)), "manifest.json is corrupt or altered", "nested too deep")
