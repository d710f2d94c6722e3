"""End to end through the CLI on real MNIST (a few hundred images, 1-2 epochs): every stage, its
artifacts, the metrics.json contract, caching, single stages, integrity errors and exit codes."""

import json
import os
import shutil
import sys

import pytest
import torch

from tests.conftest import TINY, enabled_stages, run_cli

pytestmark = pytest.mark.e2e


def test_every_artifact_and_the_metrics_contract(lenet300_run):
    run_dir, proc = lenet300_run
    for name in [
        "config.yaml",
        "manifest.json",
        "dense.pt",
        "vib.pt",
        "pruned.pt",
        "pruned_reduced.pt",
        "dense.onnx",
        "pruned.onnx",
        "pruned_reduced.onnx",
        "metrics.json",
        "report.md",
        "plots/units.png",
        "plots/latency.png",
        "plots/training.png",
        "train-dense.ckpt",
        "train-vib.ckpt",
    ]:
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["model"] == "lenet300" and m["dataset"] == "mnist"
    for part in ("dense", "vib", "pruned"):
        assert 0.0 <= m[part]["error"] < 0.5
    assert m["dense"]["architecture"] == [784, 300, 100]
    kept = m["pruned"]["architecture"]
    assert len(kept) == 3 and all(1 <= k <= n for k, n in zip(kept, [784, 300, 100]))
    assert m["pruned"]["flops"] == 2 * (kept[0] * kept[1] + kept[1] * kept[2] + kept[2] * 10)
    assert m["dense"]["flops"] == 2 * (784 * 300 + 300 * 100 + 100 * 10)
    assert m["dense"]["bytes"] == 4 * m["dense"]["params"] == 4 * 266610
    assert m["ideal_speedup"] == pytest.approx(m["dense"]["flops"] / m["pruned"]["flops"])
    assert m["prune"]["max_abs_diff_float64"] <= 1e-9 * m["prune"]["logit_scale"]
    assert m["prune"]["max_abs_diff"] <= 1e-5 * m["prune"]["logit_scale"]
    assert m["export"]["max_abs_diff"] <= 1e-4 and m["export"]["argmax_agreement"] >= 0.999
    assert m["export"]["opset"] >= 17
    combos = {(r["backend"], r["batch"], r["variant"]) for r in m["bench"]}
    assert combos == {
        (b, n, v) for b in ("onnxruntime", "torch") for n in (1, 8) for v in ("dense", "pruned", "pruned_reduced")
    }
    for r in m["bench"]:
        assert {
            "backend",
            "device",
            "batch",
            "variant",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "throughput",
            "peak_memory_bytes",
        } <= set(r)
    assert len(m["speedup"]) == 8 and all(s["speedup"] > 0 for s in m["speedup"])
    # the final table is printed
    assert "architecture kept" in proc.stdout and "784-300-100 →" in proc.stdout
    report = (run_dir / "report.md").read_text()
    assert "plots/latency.png" in report and "-".join(map(str, kept)) in report


def test_rerun_is_cached_and_one_change_reruns_from_there(lenet300_run, tmp_path):
    run_dir, _ = lenet300_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    proc = run_cli("run", "pipelines/mnist-lenet300.yaml", "--run-dir", str(copy), *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("[cached]") == len(enabled_stages(copy))
    proc = run_cli(
        "run", "pipelines/mnist-lenet300.yaml", "--run-dir", str(copy), *TINY, "--set", "bench.iters_per_round=2"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("[run]")]
    assert ran == ["bench", "report"]
    proc = run_cli(
        "run",
        "pipelines/mnist-lenet300.yaml",
        "--run-dir",
        str(copy),
        *TINY,
        "--set",
        "bench.iters_per_round=2",
        "--force",
        "export",
    )
    assert [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("[run]")] == [
        "export",
        "bench",
        "report",
    ]


def test_single_stage_commands_and_verify(lenet300_run, tmp_path):
    run_dir, _ = lenet300_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    for stage in ("prune", "report"):
        proc = run_cli(stage, str(copy))
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert run_cli("verify", str(copy)).returncode == 0
    # a corrupted artifact: verify and the stage reading it both name the file, exit 2, no traceback
    onnx = copy / "pruned.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-100])
    for args in (["verify", str(copy)], ["bench", str(copy)]):
        proc = run_cli(*args)
        assert proc.returncode == 2
        assert "pruned.onnx is corrupt or was altered" in proc.stderr and "Traceback" not in proc.stderr


def test_lenet5_through_every_stage(lenet5_run):
    run_dir, proc = lenet5_run  # the session's one LeNet-5 run (conftest), shared with test_cpu_deploy
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["dense"]["architecture"] == [20, 50, 500]
    assert m["prune"]["max_abs_diff"] <= 1e-5 * m["prune"]["logit_scale"]
    assert not (run_dir / "pruned_reduced.onnx").exists()
    assert {r["variant"] for r in m["bench"]} == {"dense", "pruned"}


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "pipelines/nope.yaml"], "pipeline file pipelines/nope.yaml not found"),
        (["run", "pipelines/mnist-lenet300.yaml", "--set", "train.vib.kl_factr=1"], "unknown key 'train.vib.kl_factr'"),
        (["run", "pipelines/mnist-lenet300.yaml", "--set", "train.dense.epochs=zero"], "key 'train.dense.epochs'"),
        (["run", "pipelines/mnist-lenet300.yaml", "--force", "nosuchstage"], "not a stage"),
        (["run", "pipelines/mnist-lenet300.yaml", "--until", "deploy"], "--until 'deploy': not a stage"),
        (["run", "pipelines/mnist-lenet300.yaml", "--force", "bench", "--until", "export"], "comes after --until"),
        (["prune", "/nonexistent/run"], "run directory /nonexistent/run not found"),
        (["data", "fetch", "cifar"], "unknown dataset 'cifar'"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message, tmp_path):
    proc = run_cli(*args, "--run-dir", str(tmp_path / "r")) if args[0] == "run" else run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_debug_shows_traceback():
    proc = run_cli("--debug", "run", "pipelines/nope.yaml")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run", "pipelines/nope.yaml"],  # a user error: one line, exit 2
        ["--debug", "run", "pipelines/nope.yaml"],  # --debug: the traceback of an uncaught exception, exit 1
        ["prune", "--help"],  # click's own exit 0
        ["prune"],  # click's usage error, exit 2
    ],
)
def test_in_process_run_cli_is_the_process(args, tmp_path):
    """conftest's in-process `run_cli` (most tests' CLI calls) gives what the real process gives, and puts back
    what the command may change."""
    before = (os.getcwd(), dict(os.environ), sys.argv[:], torch.get_num_threads(), torch.initial_seed())
    here = run_cli(*args, cwd=tmp_path.parent, env={"VIB_DEPLOY_RUN_CLI_PROBE": "1"})
    assert (os.getcwd(), dict(os.environ), sys.argv[:], torch.get_num_threads(), torch.initial_seed()) == before
    real = run_cli(*args, cwd=tmp_path.parent, env={"VIB_DEPLOY_RUN_CLI_PROBE": "1"}, process=True)
    assert here.returncode == real.returncode
    if "--debug" in args:  # the frames differ (runpy vs pytest), the error does not
        assert "Traceback" in here.stderr and here.stderr.splitlines()[-1] == real.stderr.splitlines()[-1]
    else:
        assert (here.stdout, here.stderr) == (real.stdout, real.stderr)
