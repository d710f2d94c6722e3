"""`vib-deploy search` through the CLI on a tiny LeNet-300: one dense stage for every candidate, benches one at a
time (logged intervals), the choice by validation error, a rerun all cached, and `package` ships the choice."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import pytest

from tests.conftest import LENET300, ROOT, STUDY_TINY, run_cli, sets
from vib_deploy.studies.common import override_tag

pytestmark = pytest.mark.e2e
TINY = [*STUDY_TINY, *sets("deploy.max_error_increase=1")]  # any candidate is within the budget: one is chosen
TAG = override_tag(TINY[1::2])


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def searched(tmp_path_factory, mnist_root):
    work = tmp_path_factory.mktemp("search")
    proc = run_cli("search", str(ROOT / LENET300), "--flops", "0.5,0.25", *TINY, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc


def test_candidates_share_one_dense_stage(searched):
    work, proc = searched
    runs = work / "runs"
    dense = runs / f"mnist-lenet300{TAG}-dense-s0"
    candidates = [runs / f"mnist-lenet300{TAG}-flops{v}-s0" for v in ("0.5", "0.25")]
    assert proc.stderr.count("[run] train-dense") == 1  # trained once, in the dense run
    for c in candidates:
        assert sha(c / "dense.pt") == sha(dense / "dense.pt")
        manifest = json.loads((c / "manifest.json").read_text())
        assert (
            manifest["stages"]["train-dense"]
            == json.loads((dense / "manifest.json").read_text())["stages"]["train-dense"]
        )
        assert json.loads((c / "train-vib.json").read_text())["target"]["kind"] == "flops"


def test_benches_never_overlap_and_the_choice_is_by_validation(searched):
    work, _ = searched
    record = json.loads((work / "runs" / f"mnist-lenet300{TAG}-search-flops" / "search.json").read_text())
    intervals = sorted(tuple(datetime.fromisoformat(t) for t in r["bench_utc"]) for r in record["candidates"])
    assert len(intervals) == 2
    for (_, end), (start, _) in zip(intervals, intervals[1:]):
        assert end <= start
    within = [r for r in record["candidates"] if r["val_error"] is not None and r["val_error"] <= record["budget"]]
    assert record["chosen"] == min(within, key=lambda r: r["p50_ms"])["run_dir"]
    folder = work / "runs" / f"mnist-lenet300{TAG}-search-flops"
    assert (folder / "search.png").is_file() and "**chosen**" in (folder / "search.md").read_text()


def test_a_rerun_is_all_cached(searched):
    work, _ = searched
    proc = run_cli("search", str(ROOT / LENET300), "--flops", "0.5,0.25", *TINY, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[run]" not in proc.stderr and "[cached] bench" in proc.stderr


def test_package_ships_the_chosen_candidate(searched):
    work, _ = searched
    folder = work / "runs" / f"mnist-lenet300{TAG}-search-flops"
    proc = run_cli("package", str(folder), "--repo", str(work / "models"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    chosen = work / json.loads((folder / "search.json").read_text())["chosen"]
    shipped = json.loads((work / "models" / "mnist-lenet300" / "1" / "manifest.json").read_text())
    assert shipped["source"]["metrics_sha256"] == sha(chosen / "metrics.json")  # the chosen candidate's run


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "one of --targets"),
        (["--targets", "2", "--flops", "0.5"], "one of --targets"),
        (["--targets", "2,3"], "needs a named deploy.target"),  # the default pipeline's deploy.target is auto
    ],
)
def test_a_bad_search_is_one_line(tmp_path, args, fragment):
    from tests.conftest import assert_user_error

    assert_user_error(run_cli("search", str(ROOT / LENET300), *args, cwd=tmp_path), fragment)
    assert not (tmp_path / "runs").exists()
