"""The GPU day in one call: every GPU measurement of the project, run as one prepared command within a time budget.

`scripts/gpu-day.sh` installs the project and the carried wheels, then runs `vib-deploy gpu-day`, which runs
these steps, each a subprocess whose output goes to the console and to `$OUT/gpu-day.log`:
  env -> GPU-marked tests -> VGG-16 on Fashion-MNIST (CUDA, bf16 AMP, full training data) -> GPU engines on it
  -> LeNet-5 and LeNet-300-100 pipelines on CUDA, each followed by its GPU bench,
and writes `$OUT/gpu-day.md` (tables to paste into docs/benchmarks.md) and `$OUT/gpu-day.json`.

The budget guard: a step starts only when its minimum time is left, runs under a timeout of what is left (and at
most its own cap), and is stopped at the timeout; every later step that cannot fit is skipped. The report names
each step's status (ok, failed, stopped at the budget, skipped) so nothing is silently missing.

`--dry-run` runs the same steps on the CPU with tiny data (a few hundred images, 1 epoch, tiny batches); the test
suite runs it, so the script cannot rot between GPU days.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vib_deploy.errors import UserError

BUDGET_S = 540.0  # the whole script, install included, should end within 9 minutes on an H200
RUNS = Path("runs/gpu-day")

# VGG-16 epochs sized for ~3 s per epoch on an H200 (bf16, batch 128, data in GPU memory): 12 dense + 12 VIB.
# The report prints the measured epoch time; resize these from it for the next GPU day.
VGG_EPOCHS = {"dense": 12, "vib": 12, "finetune": 2}
# the pipeline's own bench stage (CPU backends) is cut to a token run: the GPU bench is the measurement here
SHORT_CPU_BENCH = [
    "bench.backends=[torch]",
    "bench.batch_sizes=[1]",
    "bench.rounds=2",
    "bench.iters_per_round=5",
    "bench.warmup=2",
    "bench.memory=false",
]
TINY_DATA = [
    "data.train_limit=400",
    "data.val_size=100",
    "data.test_limit=100",
    "train.batch_size=32",
    "train.dense.epochs=1",
    "train.vib.epochs=1",
    "train.finetune.epochs=1",  # the LeNets' finetune stage (20 epochs in their pipelines)
    "train.device=cpu",
]
# AOTInductor last: its compiles (dense and pruned) take longest; the bench writes its JSON after every case
GPU_CASES = (
    "torch-cuda:fp32,torch-cuda:bf16,torch-cuda-graphs:fp32,torch-cuda-graphs:bf16,onnxruntime-cuda:fp32,"
    "onnxruntime-tensorrt:fp32,tensorrt:fp16,aotinductor:fp32"
)
LENET_CASES = "torch-cuda:fp32,torch-cuda-graphs:fp32"
DRY_CASES = "torch-cuda:fp32,torch-cuda:bf16,torch-cuda-graphs:fp32,onnxruntime-cuda:fp32"


# the files holding GPU-marked tests (named, not collected from tests/: a module needing a package the GPU machine
# lacks, such as tritonclient, must not stop the run at collection)
GPU_TEST_FILES = [
    "tests/training/test_train_amp.py",
    "tests/backends/test_gpu_backends.py",
    "tests/bench/test_gpu_bench.py",
]


@dataclass
class Step:
    name: str
    argv: list[str]
    cap_s: float  # never longer than this
    min_s: float  # not started with less than this left
    run_dir: Path | None = None  # the pipeline's run directory (for epoch times and figures)
    bench_json: Path | None = None  # where a gpu-bench step writes its result
    result: dict[str, Any] = field(default_factory=dict)


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def plan(dry_run: bool, python: str = sys.executable, runs: Path = RUNS) -> list[Step]:
    """The steps of the day (GPU) or of the dry run (CPU, tiny data)."""
    # long function: the day's table of steps, in the order they run
    cli = [python, "-m", "vib_deploy"]
    device = "cpu" if dry_run else "cuda"
    tests = [python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "gpu", *GPU_TEST_FILES]
    steps = [Step("env", cli + ["env"], 60, 5), Step("gpu-tests", tests, 150 if not dry_run else 120, 20)]
    vgg_dir, l5_dir, l300_dir = runs / "vgg16-fashion", runs / "mnist-lenet5", runs / "mnist-lenet300"
    if dry_run:
        vgg_sets = TINY_DATA + ["model.kwargs.width=0.125", "train.amp=bf16", "train.vib.finetune_epochs=0"]
        lenet_sets = TINY_DATA
        batches, rounds, cases, lenet_cases = (
            "1,8",
            ["--rounds", "2", "--iters", "2", "--warmup", "1"],
            DRY_CASES,
            DRY_CASES,
        )
    else:
        vgg_sets = [
            "train.device=cuda",
            "train.amp=bf16",
            f"train.dense.epochs={VGG_EPOCHS['dense']}",
            f"train.vib.epochs={VGG_EPOCHS['vib']}",
            f"train.vib.finetune_epochs={VGG_EPOCHS['finetune']}",
            "data.test_limit=2000",
        ]  # the CPU-side checks (exact pruning in fp64, ONNX parity) on 2,000 images
        lenet_sets = ["train.device=cuda"]
        batches, rounds, cases, lenet_cases = (
            "1,8,64,256,1024",
            ["--rounds", "10", "--iters", "10"],
            GPU_CASES,
            LENET_CASES,
        )
    run = lambda p, d, sets: cli + ["run", p, "--run-dir", str(d)] + _sets(sets + SHORT_CPU_BENCH)  # noqa: E731

    def bench(d, c):
        return (
            cli
            + [
                "gpu-bench",
                str(d),
                "--device",
                device,
                "--cases",
                c,
                "--batch-sizes",
                batches,  # noqa: E731
                "--out",
                str(d / "gpu-bench.json"),
            ]
            + rounds
        )

    steps += [
        Step("vgg16-fashion", run("pipelines/vgg16-fashion.yaml", vgg_dir, vgg_sets), 300, 60, run_dir=vgg_dir),
        Step("gpu-bench vgg16-fashion", bench(vgg_dir, cases), 240, 30, bench_json=vgg_dir / "gpu-bench.json"),
        Step("mnist-lenet5", run("pipelines/mnist-lenet5.yaml", l5_dir, lenet_sets), 150, 30, run_dir=l5_dir),
        Step("gpu-bench mnist-lenet5", bench(l5_dir, lenet_cases), 60, 15, bench_json=l5_dir / "gpu-bench.json"),
        Step("mnist-lenet300", run("pipelines/mnist-lenet300.yaml", l300_dir, lenet_sets), 200, 30, run_dir=l300_dir),
        Step("gpu-bench mnist-lenet300", bench(l300_dir, lenet_cases), 60, 15, bench_json=l300_dir / "gpu-bench.json"),
    ]
    return steps


def _run(argv: list[str], timeout: float, log: Any, env: dict[str, str]) -> tuple[int | None, float]:
    """Run `argv`, echoing its output to the console and `log`; stopped (its process group) at `timeout`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # this step's own process group only
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        rc = None
    reader.join(timeout=5)
    log.flush()
    return rc, time.perf_counter() - t0


def run_steps(
    steps: list[Step],
    budget: float,
    log: Any,
    env: dict[str, str],
    started: float,
    say: Callable[[str], None] = print,
    reserve: float = 10.0,
    after: Callable[[], None] = lambda: None,
) -> None:
    """Run the steps in order under the budget guard (`reserve` seconds kept for the report); each step's `result`
    says what happened; `after` runs after every step (the report so far: a call killed later still returns it)."""
    for step in steps:
        left = budget - (time.monotonic() - started) - reserve
        if left < step.min_s:
            step.result = {
                "status": "skipped",
                "why": f"{left:.0f} s left of the budget, needs at least {step.min_s:.0f} s",
            }
            say(f"== {step.name}: skipped ({step.result['why']})")
            after()
            continue
        timeout = min(step.cap_s, left)
        say(f"== {step.name} (at most {timeout:.0f} s): {' '.join(step.argv)}")
        log.write(f"\n== {step.name}: {' '.join(step.argv)}\n")
        rc, seconds = _run(step.argv, timeout, log, env)
        status = "ok" if rc == 0 else ("stopped at the time budget" if rc is None else f"failed (exit {rc})")
        step.result = {"status": status, "seconds": round(seconds, 1), "command": " ".join(step.argv)}
        say(f"== {step.name}: {status} in {seconds:.1f} s")
        if step.run_dir is not None:
            step.result.update(_run_figures(step.run_dir))
            if step.result.get("epoch_seconds"):
                say(f"== {step.name}: epoch time {step.result['epoch_seconds']}")
        after()


def _run_figures(run_dir: Path) -> dict[str, Any]:
    """Epoch times, errors, FLOPs and parameters of a pipeline run (whatever of it exists)."""
    from vib_deploy.records import PruneRecord, TrainDenseRecord, TrainVibRecord
    from vib_deploy.runs.directory import RunDir

    run = RunDir(run_dir)
    out: dict[str, Any] = {}
    epochs = {}
    for stage, record in (("train-dense", TrainDenseRecord), ("train-vib", TrainVibRecord)):
        rec = record.read_if_made(run)
        if rec is not None:
            secs = rec.epoch_seconds or []
            epochs[stage] = {
                "epochs": len(secs),
                "median_s": round(sorted(secs)[len(secs) // 2], 2) if secs else None,
                "first_s": round(secs[0], 2) if secs else None,
                "test_error": rec.test_error,
                "images_per_second": rec.images_per_second,
            }
    if epochs:
        out["epoch_seconds"] = epochs
    p = PruneRecord.read_if_made(run)
    if p is not None:
        out["prune"] = {
            "architecture": p.architecture,
            "dense_architecture": p.dense_architecture,
            "test_error_pruned": p.test_error,
            "test_samples": p.samples,
            "flops_ratio": p.dense.flops / p.pruned.flops,
            "params_ratio": p.dense.params / p.pruned.params,
        }
    return out


def report(
    steps: list[Step], out: Path, facts: dict[str, Any], dry_run: bool, command: str, started_utc: str, total: float
) -> None:
    """$OUT/gpu-day.md and $OUT/gpu-day.json."""
    from vib_deploy.bench.gpu_table import markdown
    from vib_deploy.runs.directory import atomic_write_json, atomic_write_text

    benches = {s.name: json.loads(s.bench_json.read_text()) for s in steps if s.bench_json and s.bench_json.is_file()}
    head = "DRY RUN on CPU (tiny data): no figure below is a GPU figure\n\n" if dry_run else ""
    lines = [
        f"## GPU day: {facts.get('gpu')} ({started_utc})",
        "",
        head + f"Command: `{command}`; "
        f"GPU {facts.get('gpu')}, driver {facts.get('driver')}, CUDA {facts.get('cuda')}, torch {facts.get('torch')}; "
        f"{total:.0f} s in all.",
        "",
        "| step | status | seconds | figures |",
        "|---|---|---|---|",
    ]
    for s in steps:
        fig = ""
        if "epoch_seconds" in s.result:
            fig += "; ".join(
                f"{k}: {v['epochs']} epochs, median {v['median_s']} s/epoch (first {v['first_s']} s), "
                f"test error {v['test_error']:.4f}"
                for k, v in s.result["epoch_seconds"].items()
                if v["test_error"] is not None
            )
        if "prune" in s.result:
            p = s.result["prune"]
            fig += (
                f"; pruned {'-'.join(map(str, p['architecture']))} test error {p['test_error_pruned']:.4f} "
                f"({p['test_samples']} test images), {p['flops_ratio']:.2f}x fewer FLOPs, {p['params_ratio']:.2f}x fewer params"
            )
        why = s.result.get("why", "")
        lines.append(
            f"| {s.name} | {s.result.get('status', 'not run')}{': ' + why if why else ''} | "
            f"{s.result.get('seconds', '')} | {fig.strip('; ')} |"
        )
    lines.append("")
    for table in benches.values():
        lines += [markdown(table), ""]
    atomic_write_text(out / "gpu-day.md", "\n".join(lines))
    atomic_write_json(
        out / "gpu-day.json",
        {
            "machine": facts,
            "dry_run": dry_run,
            "command": command,
            "started_utc": started_utc,
            "seconds": total,
            "steps": [{"name": s.name, **s.result} for s in steps],
            "benches": benches,
        },
    )


def gpu_day(
    out: Path,
    dry_run: bool = False,
    budget: float = BUDGET_S,
    elapsed_before: float = 0.0,
    command: str = "scripts/gpu-day.sh",
    say: Callable[[str], None] = print,
    runs: Path = RUNS,
) -> Path:
    """Run the day's steps under the budget (`elapsed_before`: seconds the shell script already spent installing)."""
    import torch

    from vib_deploy.bench.gpu_memory import gpu_facts

    if not dry_run and not torch.cuda.is_available():
        raise UserError(f"gpu-day needs a CUDA GPU (torch {torch.__version__} sees none); on a CPU use --dry-run")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic() - elapsed_before
    started_utc = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    facts = gpu_facts("cpu" if dry_run else "cuda")
    steps = plan(dry_run, runs=runs)

    def write_report() -> None:
        report(steps, out, facts, dry_run, command, started_utc, time.monotonic() - started)

    with open(out / "gpu-day.log", "a") as log:
        run_steps(steps, budget, log, env, started, say, after=write_report)
    write_report()
    say(f"tables: {out / 'gpu-day.md'}, {out / 'gpu-day.json'}; log: {out / 'gpu-day.log'}")
    return out / "gpu-day.md"
