"""gpu_bench: alternating timing, NVML absent -> "not available", speedup rows and the table; GPU-marked timing sanity."""

import json
import re
import sys
import time

import numpy as np
import pytest
import torch

from vib_deploy.bench.gpu_memory import NvmlSampler, gpu_facts
from vib_deploy.bench.gpu_table import markdown, speedup_rows
from vib_deploy.measure.timing import alternate, clock_for

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")


class Sleeper:
    """A runner whose call takes `ms` and records the order of calls."""

    def __init__(self, name, ms, order):
        self.name, self.ms, self.order = name, ms, order

    def infer_tensor(self, x):
        self.order.append(self.name)
        time.sleep(self.ms / 1e3)


def _timed(runners, inputs, device, **kw):
    """What gpu_bench does: each runner's `infer_tensor` on its input, on the clock its device and runner ask for."""
    calls = {name: (lambda r=r, x=inputs[name]: r.infer_tensor(x)) for name, r in runners.items()}
    clocks = {name: clock_for(device, host_clock=False) for name in runners}
    return {name: [ns / 1e6 for ns in s] for name, s in alternate(calls, clocks=clocks, **kw).items()}


def test_time_alternating_flips_order_and_measures_host_time():
    order: list[str] = []
    runners = {"dense": Sleeper("dense", 4, order), "pruned": Sleeper("pruned", 1, order)}
    samples = _timed(runners, {"dense": None, "pruned": None}, "cpu", rounds=2, iters=3, warmup=1)
    assert order == ["dense", "pruned"] + ["dense"] * 3 + ["pruned"] * 3 + ["pruned"] * 3 + ["dense"] * 3
    assert len(samples["dense"]) == len(samples["pruned"]) == 6
    assert min(samples["dense"]) >= 4 and min(samples["pruned"]) >= 1
    assert np.median(samples["dense"]) > np.median(samples["pruned"])


def test_nvml_absent_is_not_available(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    sampler = NvmlSampler()
    assert re.match(r"not available \((ModuleNotFound|Import)Error", sampler.problem or "")
    with sampler:
        pass
    assert sampler.peak is None
    assert gpu_facts("cpu")["driver"].startswith("not available")


def _rec(backend, batch, variant, p50, **kw):
    return {
        "backend": backend,
        "precision": "fp32",
        "batch": batch,
        "variant": variant,
        "p50_ms": p50,
        "p99_ms": p50 * 2,
        "throughput": batch / p50 * 1e3,
        "weight_bytes": 4 << 20,
        "max_memory_allocated_bytes": None,
        "nvml_used_bytes": "not available (ImportError: x)",
        "parity": {"ok": True, "max_abs_diff": 0.0},
        **kw,
    }


def test_speedup_rows_and_table():
    records = [_rec("torch-cuda", 256, "dense", 2.0), _rec("torch-cuda", 256, "pruned", 0.5)]
    rows = speedup_rows(records, ideal=8.0)
    assert rows == [
        {
            "backend": "torch-cuda",
            "precision": "fp32",
            "batch": 256,
            "variant": "pruned",
            "speedup": 4.0,
            "measured_over_ideal": 0.5,
        }
    ]
    result = {
        "run": "r",
        "ideal_speedup": 8.0,
        "records": records,
        "speedup": rows,
        "machine": {"gpu": "G", "driver": "D", "cuda": "C", "torch": "T", "device": "cuda"},
        "unavailable": [{"backend": "onnxruntime-cuda", "precision": "fp32", "why": "no CUDAExecutionProvider"}],
    }
    table = markdown(result)
    assert "| torch-cuda | fp32 | 256 | 2.0000 / 4.0000 | 0.5000 / 1.0000 | 128,000 | 512,000 | 4.00x | 0.50 |" in table
    assert "not available (ImportError: x)" in table
    assert "| onnxruntime-cuda | fp32 | - | not available: no CUDAExecutionProvider |" in table
    assert all(
        line.count("|") == table.splitlines()[4].count("|") for line in table.splitlines()[4:] if line.startswith("|")
    )


def test_launch_overhead_table():
    from vib_deploy.bench.gpu_table import launch_overhead

    records = [
        _rec("torch-cuda", 1, "dense", 1.0),
        _rec("torch-cuda-graphs", 1, "dense", 0.25),
        _rec("torch-cuda", 8, "dense", 1.0),
    ]  # batch 8 has no graph figure: no row
    lines = launch_overhead({(r["backend"], r["precision"], r["batch"], r["variant"]): r for r in records})
    assert [line for line in lines if line.startswith("| fp32")] == ["| fp32 | 1 | dense | 1.0000 | 0.2500 | 75% |"]
    assert launch_overhead({}) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_gpu_bench_device_cuda_on_cpu_is_one_line_exit_2(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli("gpu-bench", str(tmp_path), "--device", "cuda")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --device cuda: no CUDA device (torch ")
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("gpu-bench", str(tmp_path), "--device", "gpu0")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --device 'gpu0': expected cuda, cuda:N or cpu"


# -- on a GPU ------------------------------------------------------------------------------------------
class MatMul:
    def __init__(self, n):
        self.w = torch.randn(n, n, device="cuda")

    def infer_tensor(self, x):
        return x @ self.w


@pytest.mark.gpu
@cuda
def test_cuda_event_timing_sanity():
    """CUDA events: 8x the work takes longer; the events' sum stays within the host's wall time of the same calls."""
    small, big = MatMul(1024), MatMul(2048)
    inputs = {"small": torch.randn(1024, 1024, device="cuda"), "big": torch.randn(2048, 2048, device="cuda")}
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    samples = _timed({"small": small, "big": big}, inputs, "cuda", rounds=4, iters=10, warmup=3)
    wall_ms = (time.perf_counter() - t0) * 1e3
    assert np.median(samples["big"]) > 2 * np.median(samples["small"])
    assert sum(samples["big"]) + sum(samples["small"]) <= wall_ms


@pytest.mark.gpu
@cuda
def test_nvml_sees_an_allocation():
    sampler = NvmlSampler()
    if sampler.problem:
        pytest.skip(f"NVML {sampler.problem}")
    before = sampler.used()
    with sampler:
        block = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")  # 1 GiB
        torch.cuda.synchronize()
        time.sleep(0.05)
    assert sampler.peak is not None and sampler.peak >= before + (1 << 30) * 0.9
    del block


@pytest.fixture
def tiny_run(tmp_path, mnist_root):
    """A run directory with just what gpu-bench reads: config, dense.pt, pruned.pt, prune.json (FLOPs ratio 4) and
    train-dense.json."""
    from torch import nn

    from vib_deploy.config import parse_config
    from vib_deploy.nets import save_model
    from vib_deploy.pipeline import write_config
    from vib_deploy.records import Cost, PruneRecord, TrainDenseRecord
    from vib_deploy.runs.directory import RunDir

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    write_config(
        run,
        parse_config(
            {
                "name": "tiny",
                "model": {"name": "lenet300"},
                "data": {"train_limit": 600, "val_size": 100, "test_limit": 300},
            },
            "tiny",
        ),
    )
    torch.manual_seed(0)
    save_model(nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)), run.file("dense.pt"))
    save_model(nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10)), run.file("pruned.pt"))
    PruneRecord([16], [64], None, 0.1, 300, Cost(400, 4), Cost(100, 1)).write(run.file(PruneRecord.FILE))
    TrainDenseRecord([], 1, 1.0, 0.1, 0.1, 300).write(run.file(TrainDenseRecord.FILE))
    run.add_artifacts("test", ["dense.pt", "pruned.pt", PruneRecord.FILE, TrainDenseRecord.FILE])
    return run.path


def test_bench_on_cpu_keeps_going_past_a_failing_engine(tiny_run, monkeypatch):
    from vib_deploy.backends.torch_cuda import TorchCudaRunner
    from vib_deploy.bench.gpu import Case, bench_gpu

    real = TorchCudaRunner.activate_impl

    def activate(self):
        if self.precision == "bf16":
            raise RuntimeError("boom")
        real(self)

    monkeypatch.setattr(TorchCudaRunner, "activate_impl", activate)
    out = tiny_run / "gpu-bench.json"
    result = bench_gpu(
        tiny_run,
        [Case("torch-cuda", "bf16"), Case("torch-cuda"), Case("torch-cuda-graphs")],
        device="cpu",
        batch_sizes=(1, 8),
        rounds=2,
        iters=2,
        warmup=1,
        echo=lambda s: None,
        out=out,
    )
    assert [(r["batch"], r["variant"]) for r in result["records"]] == [
        (1, "dense"),
        (1, "pruned"),
        (8, "dense"),
        (8, "pruned"),
    ]
    assert all(
        r["parity"]["ok"] and r["parity"]["max_abs_diff"] == 0 for r in result["records"]
    )  # fp32 eager on CPU: exact
    assert result["ideal_speedup"] == 4.0
    failed, graphs = result["unavailable"]
    assert failed == {"backend": "torch-cuda", "precision": "bf16", "why": "FAILED: RuntimeError: boom", "failed": True}
    assert graphs["backend"] == "torch-cuda-graphs" and "need a CUDA device" in graphs["why"]
    table = markdown(result)
    assert "| torch-cuda | bf16 | - | FAILED: RuntimeError: boom |" in table
    assert json.loads(out.read_text())["records"] == result["records"]
