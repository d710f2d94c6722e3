"""scripts/gpu-day.sh: the budget guard, the GPU-only refusal, and the whole --dry-run on CPU (so it cannot rot)."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, run_cli
from vib_deploy.bench.gpu_day import GPU_TEST_FILES, Step, plan, run_steps


def test_budget_guard_stops_and_skips(tmp_path):
    py = sys.executable
    steps = [
        Step("quick", [py, "-c", "print('hi')"], cap_s=30, min_s=0),
        Step("slow", [py, "-c", "import time; time.sleep(60)"], cap_s=30, min_s=0.5),
        Step("late", [py, "-c", "print('never')"], cap_s=30, min_s=5),
    ]
    t0 = time.monotonic()
    with open(tmp_path / "log", "w") as log:
        reports: list[int] = []
        run_steps(
            steps,
            budget=3,
            log=log,
            env=dict(os.environ),
            started=t0,
            say=lambda s: None,
            reserve=0,
            after=lambda: reports.append(1),
        )
    assert len(reports) == 3  # the report is rewritten after every step: a call killed later still returns it
    assert time.monotonic() - t0 < 20  # the sleeping step was stopped at the budget, not waited for
    assert [s.result["status"] for s in steps] == ["ok", "stopped at the time budget", "skipped"]
    assert "needs at least 5 s" in steps[2].result["why"]
    assert "hi" in (tmp_path / "log").read_text()


def test_plan_covers_the_day():
    names = [s.name for s in plan(dry_run=False)]
    assert names == [
        "env",
        "gpu-tests",
        "vgg16-fashion",
        "gpu-bench vgg16-fashion",
        "mnist-lenet5",
        "gpu-bench mnist-lenet5",
        "mnist-lenet300",
        "gpu-bench mnist-lenet300",
    ]
    vgg = next(s for s in plan(dry_run=False) if s.name == "vgg16-fashion").argv
    assert (
        "train.device=cuda" in vgg
        and "train.amp=bf16" in vgg
        and not any(a.startswith("data.train_limit") for a in vgg)
    )
    bench = next(s for s in plan(dry_run=False) if s.name == "gpu-bench vgg16-fashion").argv
    assert bench[bench.index("--batch-sizes") + 1] == "1,8,64,256,1024"
    assert all((ROOT / f).is_file() for f in GPU_TEST_FILES)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_gpu_day_without_gpu_is_one_line_exit_2(tmp_path):
    proc = run_cli("gpu-day", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"error: gpu-day needs a CUDA GPU (torch {torch.__version__} sees none); on a CPU use --dry-run"
    )


@pytest.mark.e2e
def test_dry_run(tmp_path, mnist_root):
    """The whole script on CPU with tiny data (~40-60 s on 2 cores): every step ok, tables and JSON written."""
    from vib_deploy.data.datasets import resolve_root
    from vib_deploy.errors import UserError

    try:
        resolve_root("fashion-mnist", None)
    except UserError as e:
        pytest.skip(f"Fashion-MNIST is not available ({e}); `vib-deploy data fetch fashion-mnist`")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", "scripts/gpu-day.sh", "--dry-run", "--runs", str(tmp_path / "runs")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    day = json.loads((tmp_path / "out" / "gpu-day.json").read_text())
    assert day["dry_run"] is True
    assert {s["name"]: s["status"] for s in day["steps"]} == {s.name: "ok" for s in plan(dry_run=True)}
    assert set(day["benches"]) == {"gpu-bench vgg16-fashion", "gpu-bench mnist-lenet5", "gpu-bench mnist-lenet300"}
    vgg = day["benches"]["gpu-bench vgg16-fashion"]
    assert {(r["backend"], r["precision"], r["batch"]) for r in vgg["speedup"]} == {
        ("torch-cuda", p, b) for p in ("fp32", "bf16") for b in (1, 8)
    }
    assert all(r["parity"]["ok"] for r in vgg["records"])
    assert {u["backend"] for u in vgg["unavailable"]} == {"torch-cuda-graphs", "onnxruntime-cuda"}
    md = (tmp_path / "out" / "gpu-day.md").read_text()
    assert "DRY RUN on CPU" in md and "not available: CUDA graphs need a CUDA device" in md
    assert "s/epoch" in md  # the epoch time the next GPU day is sized from
    log = (tmp_path / "out" / "gpu-day.log").read_text()
    assert (
        "torch-cuda-graphs on cuda: " in log and "NVIDIA driver: " in log
    )  # `vib-deploy env` says what the engines need
