"""One tiny compare run end to end through the CLI (real MNIST, 2 seeds, VIB + three peers), then the
paper table on the same run directories (all cached)."""

import json
import re

import pytest

from tests.conftest import LENET300, ROOT, STUDY_TINY, run_cli
from vib_deploy.studies.common import override_tag

PIPELINE = str(ROOT / LENET300)
TINY = STUDY_TINY
TAG = override_tag(TINY[1::2])

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def compared(studies_workspace):
    """The session's studies workspace (conftest): one compare run, VIB + l1, slimming, random, seeds 0 and 1."""
    return studies_workspace


def test_records_have_the_required_keys_and_matched_flops(compared):
    cwd, _ = compared
    records = json.loads((cwd / "docs" / "comparison.json").read_text())
    assert sorted((r["method"], r["seed"]) for r in records) == sorted(
        (m, s) for m in ("vib", "l1", "slimming", "random") for s in (0, 1)
    )
    for r in records:
        assert {"model", "method", "seed", "error", "flops", "params"} <= r.keys()
        assert r["model"] == "lenet300" and 0 <= r["error"] <= 1 and r["params"] > 0
        vib = next(v for v in records if v["method"] == "vib" and v["seed"] == r["seed"])
        assert abs(r["flops"] / vib["flops"] - 1) <= 0.02
        assert vib["flops"] < vib["dense_flops"]  # VIB really pruned: the match is not trivial
        assert r["p50_ms"]["onnxruntime/b1/pruned"] > 0 and r["p50_ms"]["onnxruntime/b64/dense"] > 0
        if r["method"] != "vib":  # peers keep every input pixel, prune hidden units only
            assert r["architecture"][0] == 784 and r["architecture"][1:] != [300, 100]
            # McNemar's counts are the two deployed models' per-image correctness: their difference is the error gap
            t = r["vs_vib"]
            assert t["n"] == r["test_samples"] and 0 <= t["p_value"] <= 1
            assert t["a_only"] - t["b_only"] == round((r["error"] - vib["error"]) * t["n"])
            # the peer's fine-tune keeps its best validation epoch (0: as pruned), as VIB's finetune stage does
            history = json.loads((cwd / r["run_dir"] / "prune.json").read_text())["history"]["finetune"]
            accs = [h["val_acc"] for h in history]
            assert r["kept_epoch"] == 0 or accs[r["kept_epoch"] - 1] == max(accs)


def test_peer_run_dirs_are_normal_runs_from_the_same_dense_net(compared):
    cwd, _ = compared
    runs = cwd / "runs"
    for method in ("l1", "slimming", "random"):
        peer = runs / f"mnist-lenet300{TAG}-kl0.001-s1-{method}"
        assert (peer / "dense.pt").read_bytes() == (runs / f"mnist-lenet300{TAG}-kl0.001-s1" / "dense.pt").read_bytes()
        assert {"pruned.onnx", "dense.onnx", "bench.json"} <= {p.name for p in peer.iterdir()}
        assert run_cli("verify", str(peer), cwd=cwd).returncode == 0
        prune = json.loads((peer / "prune.json").read_text())
        assert prune["method"] == method and prune["finetune_epochs"] + prune["sparsity_epochs"] == 3


def test_tables_and_plot(compared):
    cwd, proc = compared
    md = (cwd / "docs" / "comparison.md").read_text()
    assert "## mnist-lenet300" in md and "network slimming" in md and " ± " in md and "| vib | 1 |" in md
    assert md.count("- vs ") == 3  # one verdict per peer
    verdict_lines = [line for line in md.splitlines() if line.startswith("- vs ")]
    assert "McNemar's exact test" in md and all(", p = " in line for line in verdict_lines)
    assert all(any(w in line for w in ("**VIB better**", "**VIB worse**", "**tie**")) for line in verdict_lines)
    # every latency section says when and on what machine its runs were benched (from their bench.json)
    benched = [line for line in md.splitlines() if line.startswith("Benched ")]
    assert len(benched) == 1 and re.fullmatch(
        r"Benched \d{4}-\d\d-\d\d \d\d:\d\d( – \d{4}-\d\d-\d\d \d\d:\d\d)? UTC on .+, \d+ cores "
        r"\(each run's bench.json; 8 of 8 runs\)\.",
        benched[0],
    ), benched
    assert (cwd / "docs" / "img" / f"comparison-mnist-lenet300{TAG}.png").read_bytes()[:4] == b"\x89PNG"
    assert "tables:" in proc.stdout


def test_paper_table_reuses_the_runs(compared):
    cwd, _ = compared
    out = cwd / "docs" / "paper.md"
    proc = run_cli(
        "paper",
        "--pipelines",
        PIPELINE,
        "--seeds",
        "0,1",
        "--out",
        str(out),
        *TINY,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[run]" not in proc.stderr  # the compare run's VIB points, reused
    md = out.read_text()
    assert "| lenet300 | **paper** | 97-71-33 | 1.6 % | 19.1 | 38,696 |" in md
    assert "| lenet300 | ours, mean ± std |" in md and "none (cached)" in md
    assert "**missed**" in md or "**met**" in md
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["seed"] for r in data["records"]] == [0, 1]


def test_unknown_method_and_no_match_flops_are_exit_2(tmp_path):
    proc = run_cli("compare", PIPELINE, "--methods", "vib,l0", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown 'l0'" in proc.stderr
    proc = run_cli("compare", PIPELINE, "--methods", "l1,random", cwd=tmp_path)
    assert proc.returncode == 2 and "must include vib" in proc.stderr
    proc = run_cli("compare", PIPELINE, "--no-match-flops", cwd=tmp_path)
    assert proc.returncode == 2 and "only --match-flops" in proc.stderr


def test_records_of_other_overrides_are_kept_beside_each_other(tmp_path):
    from vib_deploy.studies.compare import write_comparison

    def record(method, seed, overrides, error):
        return {
            "model": "lenet300",
            "pipeline": "mnist-lenet300",
            "method": method,
            "seed": seed,
            "overrides": overrides,
            "error": error,
            "flops": 22_000,
            "params": 11_000,
            "bytes": 44_000,
            "architecture": [784, 14, 7],
            "dense_architecture": [784, 300, 100],
            "dense_flops": 532_400,
            "test_samples": 10_000,
            "p50_ms": {"onnxruntime/b1/pruned": 0.01, "onnxruntime/b1/dense": 0.02},
            "run_dir": "runs/x",
        }

    write_comparison([record("vib", 0, [], 0.019), record("l1", 0, [], 0.05)], tmp_path)
    write_comparison([record("vib", 0, ["train.vib.epochs=3"], 0.3)], tmp_path)  # a quick run: its own table
    write_comparison([record("vib", 0, [], 0.018)], tmp_path)  # the same run again: replaces its record
    records = json.loads((tmp_path / "comparison.json").read_text())
    assert sorted((r["method"], r["error"], tuple(r["overrides"])) for r in records) == [
        ("l1", 0.05, ()),
        ("vib", 0.018, ()),
        ("vib", 0.3, ("train.vib.epochs=3",)),
    ]
    md = (tmp_path / "comparison.md").read_text()
    assert "## mnist-lenet300 (" in md and f"## mnist-lenet300{override_tag(['train.vib.epochs=3'])} (" in md
    assert "--set train.vib.epochs=3" in md
    assert "Benched " not in md  # records without bench facts claim no date or machine


def test_dense_drift_flags_peer_runs_whose_dense_p50_moved_over_20_percent():
    from vib_deploy.studies.compare import dense_drift

    def rec(method, seed, b1, b64):
        return {"method": method, "seed": seed, "p50_ms": {"onnxruntime/b1/dense": b1, "onnxruntime/b64/dense": b64}}

    group = [
        rec("vib", 0, 1.0, 10.0),
        rec("l1", 0, 1.19, 7.9),
        rec("random", 0, 1.25, 10.0),
        rec("vib", 1, 2.0, 20.0),
        rec("l1", 1, 2.0, 20.0),
        rec("scratch", 2, 9.0, 90.0),
    ]  # seed 2 has no VIB record: nothing to compare with
    drift = dense_drift(group)
    assert set(drift) == {("l1", 0), ("random", 0)}
    assert list(drift[("l1", 0)]) == [64] and drift[("l1", 0)][64] == pytest.approx(-0.21)
    assert list(drift[("random", 0)]) == [1] and drift[("random", 0)][1] == pytest.approx(0.25)


def test_the_command_line_names_one_call_per_seed_set():
    """Peers run on fewer seeds than others are labelled by the call that made them, not folded into one command."""
    from vib_deploy.studies.compare import _command

    def rec(method, seed):
        return {"method": method, "seed": seed, "pipeline_file": "p.yaml", "overrides": []}

    group = [rec("vib", s) for s in (0, 1, 2, 3)] + [rec("random", s) for s in (0, 1, 2)]
    group += [rec(m, s) for m in ("l1", "scratch") for s in (0, 2)]
    assert _command(group) == (
        "vib-deploy compare p.yaml --methods vib,l1,scratch --match-flops --seeds 0,2` and "
        "`vib-deploy compare p.yaml --methods vib,random --match-flops --seeds 0,1,2` and "
        "`vib-deploy compare p.yaml --methods vib --match-flops --seeds 3"
    )
    assert (
        _command([rec("vib", 0), rec("l1", 0)]) == "vib-deploy compare p.yaml --methods vib,l1 --match-flops --seeds 0"
    )
