"""Studies on an executor (studies/executor.py, ray_executor.py): serial and Ray make the same run directories and
records, units run in dependency order with benches alone, a killed worker is retried, a UserError is not; the run lock
across hosts (runs/lock.py). The Ray tests share one module-scoped local instance of 2 CPUs (its temp dir under a
short /tmp/vr-*: Unix socket paths are limited to 107 bytes) and skip when Ray is not installed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import LENET300, ROOT, STUDY_TINY, run_cli
from vib_deploy.errors import UserError
from vib_deploy.runs import lock
from vib_deploy.runs.directory import RunDir
from vib_deploy.studies.common import override_tag
from vib_deploy.studies.executor import ExecutorOptions, Unit, UnitResult, ray_missing, run_units

PIPELINE = str(ROOT / LENET300)
OVERRIDES = STUDY_TINY[1::2]
HINT = "pip install 'vib-deploy[ray]'"
needs_ray = pytest.mark.skipif(ray_missing() is not None, reason=f"Ray is not installed ({HINT})")


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray instance for the module (2 CPUs); the GCS address a CLI run joins with --address."""
    if ray_missing() is not None:
        pytest.skip(f"Ray is not installed ({HINT})")
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    temp = tempfile.mkdtemp(prefix="vr-", dir="/tmp")
    context = ray.init(
        address="local",
        num_cpus=2,
        _temp_dir=temp,
        include_dashboard=False,
        object_store_memory=100 * 1024**2,
        logging_level=logging.WARNING,
    )
    try:
        yield context.address_info["gcs_address"]  # pyright: ignore[reportAttributeAccessIssue]
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def _sleep(seconds: float, echo, progress) -> int:
    echo(f"slept in {os.getpid()}")
    time.sleep(seconds)
    return os.getpid()


def _threads(echo, progress) -> int:
    import torch

    return torch.get_num_threads()


def _die_once(run_dir: str, echo, progress) -> int:
    """Take the run lock; the first time, kill this worker while holding it (as a lost worker does)."""
    marker = Path(run_dir) / "attempts"
    with RunDir(Path(run_dir)).locked():
        attempts = len(marker.read_text().splitlines()) + 1 if marker.exists() else 1
        marker.write_text("x\n" * attempts)
        if attempts == 1:
            os.kill(os.getpid(), signal.SIGKILL)
    return attempts


def _bad_input(counter: str, echo, progress) -> None:
    with open(counter, "a") as f:
        f.write("x\n")
    raise UserError("data.root /nowhere holds no MNIST files")


def _toy_units(seconds: float) -> list[Unit]:
    """A dense unit, two candidates after it, and their two benches."""
    work = partial(_sleep, seconds)
    return [
        Unit("dense", work),
        Unit("a", work, after=("dense",)),
        Unit("b", work, after=("dense",)),
        Unit("a bench", work, after=("a",), bench=True),
        Unit("b bench", work, after=("b",), bench=True),
    ]


def _overlap(x: UnitResult, y: UnitResult) -> bool:
    return x.started < y.ended and y.started < x.ended


@needs_ray
def test_units_run_in_dependency_order_with_benches_alone(ray_address):
    """Candidates after their dense unit and side by side, each in a fresh worker; no unit overlaps a bench."""
    lines: list[str] = []
    results = run_units(_toy_units(1.5), ExecutorOptions("ray", cpus_per_run=1), lines.append)
    assert lines[0].startswith("executor: ray (this process's Ray instance")
    r = results
    assert r["a"].started >= r["dense"].ended and r["b"].started >= r["dense"].ended
    assert _overlap(r["a"], r["b"])  # 2 CPUs, 1 per unit: the two candidates at once
    for bench in ("a bench", "b bench"):
        assert not any(_overlap(r[bench], r[other]) for other in r if other != bench)
    assert r["a bench"].node == r["b bench"].node != ""
    assert len({res.pid for res in r.values()}) == 5  # max_calls=1: a fresh worker per unit
    assert any(line.startswith("== a bench (") for line in lines) and "slept in" in "\n".join(lines)

    serial: list[str] = []
    again = run_units(_toy_units(0.0), ExecutorOptions("serial"), serial.append)
    assert serial[0].startswith("executor: serial") and list(again) == ["dense", "a", "b", "a bench", "b bench"]
    assert {res.pid for res in again.values()} == {os.getpid()}


@needs_ray
@pytest.mark.parametrize("cpus", [1, 2])
def test_torch_threads_inside_a_unit_equal_its_cpus(ray_address, cpus):
    results = run_units([Unit("t", _threads)], ExecutorOptions("ray", cpus_per_run=cpus), lambda s: None)
    assert results["t"].value == cpus and results["t"].threads == cpus


def test_serial_threads_follow_cpus_per_run_and_are_restored():
    import torch

    before = torch.get_num_threads()
    results = run_units([Unit("t", _threads)], ExecutorOptions("serial", cpus_per_run=1), lambda s: None)
    assert results["t"].value == 1 and torch.get_num_threads() == before


@needs_ray
def test_a_worker_killed_mid_unit_is_retried_and_its_lock_taken_over(ray_address, tmp_path):
    results = run_units([Unit("k", partial(_die_once, str(tmp_path)))], ExecutorOptions("ray"), lambda s: None)
    assert results["k"].value == 2  # the second attempt, in a new worker, took the dead worker's lock over
    assert not (tmp_path / ".lock").exists()


@needs_ray
def test_a_user_error_in_a_unit_is_not_retried(ray_address, tmp_path):
    counter = tmp_path / "calls"
    units = [Unit("bad", partial(_bad_input, str(counter))), Unit("after", partial(_sleep, 0), after=("bad",))]
    with pytest.raises(UserError, match="data.root /nowhere holds no MNIST files"):
        run_units(units, ExecutorOptions("ray"), lambda s: None)
    assert counter.read_text() == "x\n"


@needs_ray
def test_a_unit_user_error_exits_2_through_the_cli(ray_address, tmp_path, mnist_root):
    """The CLI joins the module's instance by --address; the dense unit's bad data.root is one error line, exit 2."""
    # a process: this one holds the module's Ray connection, which an in-process CLI would use instead of --address
    proc = run_cli(
        "sweep", PIPELINE, "--kl-factor", "1e-3", "--executor", "ray", "--address", ray_address,
        "--set", f"data.root={tmp_path / 'nowhere'}", *STUDY_TINY, cwd=tmp_path, process=True,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(tmp_path / "nowhere") in errors[0]
    assert proc.stderr.splitlines()[0].startswith(f"executor: ray (the cluster at {ray_address}")


@needs_ray
def test_serial_and_ray_make_the_same_records_and_points_share_one_dense_stage(ray_address, tmp_path, mnist_root):
    """The same sweep (two points of one seed, one thread a run) serially and on Ray (the CLI joins the module's
    instance): the same records; one dense stage for both points, read by them, never locked; all cached again."""

    def sweep(where: str, *executor: str, process: bool = False) -> tuple[list[dict], list[str]]:
        (tmp_path / where).mkdir(exist_ok=True)
        args = ["sweep", PIPELINE, "--kl-factor", "1e-3,2e-3", "--out", "sw", "--cpus-per-run", "1", *executor]
        proc = run_cli(*args, *STUDY_TINY, cwd=tmp_path / where, process=process)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((tmp_path / where / "sw" / "sweep.json").read_text()), proc.stderr.splitlines()

    serial, serial_lines = sweep("serial", "--executor", "serial")
    # a process that joins the module's instance by --address (in this one the CLI uses this process's connection)
    ray_records, lines = sweep("ray", "--executor", "ray", "--address", ray_address, process=True)
    assert serial_lines[0].startswith("executor: serial") and lines[0].startswith("executor: ray (the cluster at")
    timing = ("p50_ms", "benched")
    assert [{k: v for k, v in r.items() if k not in timing} for r in ray_records] == [
        {k: v for k, v in r.items() if k not in timing} for r in serial
    ]
    assert lines.count("[run] train-dense") == 1 and lines.count("[run] train-vib") == 2
    assert not any("in use" in line for line in lines)  # the points read the dense run, never lock it
    runs = tmp_path / "ray" / "runs"
    dense = next(runs.glob("*-dense-s0")) / "dense.pt"
    for point in runs.glob("*-kl*-s0"):
        assert (point / "dense.pt").read_bytes() == dense.read_bytes()
        assert run_cli("verify", str(point)).returncode == 0
    again_records, again = sweep("ray", "--executor", "ray")  # in this process: its connection to the same instance
    assert again[0].startswith("executor: ray (this process's Ray instance")
    assert not any(line.startswith("[run]") for line in again) and "[cached] bench" in again
    assert [r["p50_ms"] for r in again_records] == [r["p50_ms"] for r in ray_records]


def test_ray_missing_is_one_line_with_the_install_hint(tmp_path):
    fake = tmp_path / "fake" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    path = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    args = ["sweep", PIPELINE, "--kl-factor", "1e-3", "--executor", "ray"]
    proc = run_cli(*args, cwd=tmp_path, env={"PYTHONPATH": path}, process=True)  # a new interpreter finds the fake
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: --executor ray needs Ray, which is not installed here: {HINT}"
    assert not (tmp_path / "runs").exists()


def test_the_default_executor_is_ray_when_installed(monkeypatch):
    from vib_deploy.studies import unit

    monkeypatch.setattr(unit, "ray_missing", lambda: HINT)
    assert ExecutorOptions().resolved() == "serial"
    with pytest.raises(UserError, match="--address is an option of the ray executor"):
        ExecutorOptions(address="auto").resolved()
    with pytest.raises(UserError, match="--executor 'dask'"):
        ExecutorOptions("dask").resolved()
    monkeypatch.setattr(unit, "ray_missing", lambda: None)
    assert ExecutorOptions().resolved() == "ray" and ExecutorOptions("serial").resolved() == "serial"


def _foreign_lock(run_dir: Path, age: float, host: str = "elsewhere", boot: str = "b00t") -> None:
    holder = {"host": host, "boot_id": boot, "pid": 1, "heartbeat": time.time() - age, "token": "t"}
    (run_dir / ".lock").write_text(json.dumps(holder))


def test_a_lock_from_another_host_is_refused_while_fresh_and_taken_over_once_stale(tmp_path, capfd):
    _foreign_lock(tmp_path, age=5)
    with pytest.raises(lock.LockHeld, match="in use by vib-deploy on host elsewhere \\(pid 1, heartbeat 5 s ago\\)"):
        with RunDir(tmp_path).locked():
            pass
    assert json.loads((tmp_path / ".lock").read_text())["host"] == "elsewhere"  # left alone
    _foreign_lock(tmp_path, age=lock.STALE_S + 1)
    with RunDir(tmp_path).locked():
        mine = json.loads((tmp_path / ".lock").read_text())
        assert (mine["host"], mine["pid"], mine["boot_id"]) == (lock.me().host, os.getpid(), lock.boot_id())
    assert not (tmp_path / ".lock").exists()
    assert "taking over the stale lock of host elsewhere (pid 1, no heartbeat for 6" in capfd.readouterr().err


def test_a_lock_from_before_a_reboot_is_taken_over(tmp_path, capfd):
    _foreign_lock(tmp_path, age=1, host=lock.me().host, boot="another-boot")
    with RunDir(tmp_path).locked():
        pass
    assert "from before this host's reboot" in capfd.readouterr().err


def test_the_holder_keeps_its_heartbeat_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    with RunDir(tmp_path).locked():
        first = json.loads((tmp_path / ".lock").read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads((tmp_path / ".lock").read_text())["heartbeat"] > first


def _wait_for(predicate, seconds: float = 120.0) -> None:
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def _holder_gone(lock_file: Path) -> bool:
    """No lock, or one whose process has ended."""
    holder = lock.read_holder(lock_file)
    return holder is None or not Path(f"/proc/{holder.pid}").exists()


@needs_ray
def test_ctrl_c_and_kill_9_of_the_driver_lose_nothing(ray_address, tmp_path, mnist_root):
    """Ctrl-C: exit 130, the running unit cancelled; kill -9 of the driver: Ray ends its units; the rerun resumes,
    every run verifies and no lock is left. (The driver joins the module's instance: --address.)"""
    args = [sys.executable, "-m", "vib_deploy", "sweep", PIPELINE, "--kl-factor", "1e-3", "--executor", "ray",
            "--address", ray_address, *STUDY_TINY, "--set", "train.dense.epochs=30"]  # fmt: skip
    tag = override_tag([*OVERRIDES, "train.dense.epochs=30"])
    dense_lock = tmp_path / "runs" / f"mnist-lenet300{tag}-dense-s0" / ".lock"
    for how in (signal.SIGINT, signal.SIGKILL):
        driver = subprocess.Popen(
            args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a terminal's Ctrl-C, also under `&`
        )  # fmt: skip
        _wait_for(lambda d=driver: not _holder_gone(dense_lock) or d.poll() is not None)  # the dense unit runs
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        driver.send_signal(how)
        _, err = driver.communicate(timeout=120)
        if how == signal.SIGINT:
            assert driver.returncode == 130 and "Traceback" not in err, err[-3000:]
        _wait_for(lambda: _holder_gone(dense_lock), 60)  # the unit's worker is gone with its driver
    proc = run_cli(*args[3:], cwd=tmp_path, process=True)  # the driver joins the module's instance by --address
    assert proc.returncode == 0, proc.stderr[-3000:]
    for run in (tmp_path / "runs").iterdir():
        if run.is_dir() and (run / "manifest.json").exists():
            assert run_cli("verify", str(run)).returncode == 0
    assert not list((tmp_path / "runs").glob("*/.lock"))


CLUSTER_SCRIPT = """
import json, os, sys, threading, time
from functools import partial
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from vib_deploy.runs.directory import RunDir
from vib_deploy.studies.executor import ExecutorOptions, Unit, run_units

work_dir = Path(sys.argv[1])

def unit(name, echo, progress):
    (work_dir / name).mkdir(exist_ok=True)
    with RunDir(work_dir / name).locked():
        with open(work_dir / f"{name}.nodes", "a") as f:
            f.write(ray.get_runtime_context().get_node_id() + "\\n")
        time.sleep(8)
    return ray.get_runtime_context().get_node_id()

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
nodes = {n.node_id: n for n in (cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1))}
ray.init(address=cluster.address)
def remove_first_node():
    path = work_dir / "a.nodes"
    while not path.exists():
        time.sleep(0.1)
    cluster.remove_node(nodes[path.read_text().split()[0]])

threading.Thread(target=remove_first_node, daemon=True).start()
try:
    results = run_units([Unit("a", partial(unit, "a")), Unit("b", partial(unit, "b"), after=("a",))], ExecutorOptions("ray"), lambda s: None)
    print(json.dumps({k: r.value for k, r in results.items()}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@needs_ray
@pytest.mark.skipif(not os.environ.get("VIB_DEPLOY_RAY_CLUSTER"), reason="a 3-raylet cluster: VIB_DEPLOY_RAY_CLUSTER=1")
def test_a_node_removed_mid_unit_on_a_two_node_cluster(tmp_path):
    """ray.cluster_utils.Cluster (a head without CPUs, two 1-CPU nodes): the node running unit a is removed mid-unit;
    a runs again on the other node (taking the lock its lost worker left) and b follows."""
    script = tmp_path / "cluster.py"
    script.write_text(CLUSTER_SCRIPT)
    temp = tempfile.mkdtemp(prefix="vr-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": temp}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=280
    )
    shutil.rmtree(temp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = json.loads(proc.stdout.strip().splitlines()[-1])
    first, second = (tmp_path / "a.nodes").read_text().split()
    assert first != second == values["a"]  # retried on the surviving node
    assert not (tmp_path / "a" / ".lock").exists() and not (tmp_path / "b" / ".lock").exists()
