"""The kl_factor sweep through the CLI on a few hundred real MNIST images: one dense stage for all
points (same dense.pt), every point a normal run directory, sweep.json + frontier.png + frontier.md; bad input → exit 2."""

import hashlib
import json
import shutil

import pytest

from tests.conftest import LENET300, ROOT, STUDY_TINY, run_cli
from vib_deploy.studies.common import override_tag

TINY = STUDY_TINY
PIPELINE = str(ROOT / LENET300)
TAG = override_tag(TINY[1::2])  # run directories made with --set overrides carry their digest (compare's too)

pytestmark = pytest.mark.e2e


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sweep_reuses_one_dense_stage_and_plots_the_frontier(tmp_path, studies_workspace):
    """On a copy of the session's studies workspace (conftest: compare's runs, same settings): the sweep reuses its
    seed-0 dense stage for every point and its kl 1e-3 point whole; only the new point trains."""
    shutil.copytree(studies_workspace[0] / "runs", tmp_path / "runs")
    proc = run_cli("sweep", PIPELINE, "--kl-factor", "2e-4,1e-3", "--out", str(tmp_path / "sw"), *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = tmp_path / "runs"
    dense = runs / f"mnist-lenet300{TAG}-dense-s0"
    points = [runs / f"mnist-lenet300{TAG}-kl0.0002-s0", runs / f"mnist-lenet300{TAG}-kl0.001-s0"]
    assert {dense, *points} <= set(runs.iterdir())
    assert "[run] train-dense" not in proc.stderr  # the workspace's dense stage, trained once by compare
    assert proc.stderr.count("[run] train-vib") == 1  # the new point; the kl 1e-3 point is compare's, cached
    for point in points:
        assert sha(point / "dense.pt") == sha(dense / "dense.pt")
        assert (point / "metrics.json").is_file() and (point / "report.md").is_file()
        assert run_cli("verify", str(point), cwd=tmp_path).returncode == 0
    records = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [(r["kl_factor"], r["seed"]) for r in records] == [(2e-4, 0), (1e-3, 0)]
    assert records[1]["flops"] < records[0]["flops"] < records[0]["dense_flops"]  # more KL, fewer FLOPs
    assert all(r["p50_ms"]["onnxruntime/b64/pruned"] > 0 for r in records)
    for r, point in zip(records, points):  # validation error (what chooses a point) is the VIB stage's, as recorded
        assert r["val_error"] == json.loads((point / "train-vib.json").read_text())["val_error"]
    assert (tmp_path / "sw" / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    frontier = (tmp_path / "sw" / "frontier.md").read_text()
    assert "| 0.001 | 0 |" in frontier and "| val error % | test error % |" in frontier
    assert "kl_factor 0.001: error" in proc.stdout

    again = run_cli("sweep", PIPELINE, "--kl-factor", "1e-3", "--out", str(tmp_path / "sw2"), *TINY, cwd=tmp_path)
    assert again.returncode == 0 and "[run]" not in again.stderr  # every stage cached


def test_override_tag():
    assert override_tag([]) == ""
    assert override_tag(["a=1"]) != override_tag(["a=2"]) and len(override_tag(["a=1"])) == 9


@pytest.mark.parametrize(
    "args,message",
    [
        (["--kl-factor", "1e-4,abc"], "--kl-factor takes comma-separated numbers"),
        (["--kl-factor", "1e-4", "--seeds", "0,0"], "--seeds needs distinct integers"),
        (["--kl-factor", "-1"], "needs at least one number >= 0"),
    ],
)
def test_bad_sweep_input_is_one_line_and_exit_2(tmp_path, args, message):
    proc = run_cli("sweep", PIPELINE, *args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
