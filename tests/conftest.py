"""Shared fixtures: real MNIST (from the user cache or $VIB_DEPLOY_DATA), the tiny runs several modules read
(each made once per test session), and small helpers. No test module imports another: what they share is here."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]

# xdist workers share the cores: each worker, and every process it starts (the CLI runs inherit the environment),
# gets its share of intra-op threads, so two trainings never fight over one core (a 2-thread torch training beside a
# busy core runs ~5x slower on a 2-core machine). Set before torch is imported; a value the caller set is kept.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(_share))
# the study commands' default executor is Ray when it is installed (make test installs it): the study tests run their
# units one after another unless they ask for Ray (tests/studies/test_executor.py), as two xdist workers already
# share the cores; a Ray instance per study would add start-up and contend with the other worker
os.environ.setdefault("VIB_DEPLOY_EXECUTOR", "serial")
LENET300 = "pipelines/mnist-lenet300.yaml"


def sets(*assignments: str) -> list[str]:
    """`--set a --set b ...` for the CLI."""
    return [arg for a in assignments for arg in ("--set", a)]


TINY_DATA = ("data.train_limit=700", "data.val_size=200", "data.test_limit=300")
TINY_BENCH = ("bench.rounds=2", "bench.iters_per_round=3", "bench.warmup=1")
# the tiny LeNet-300-100 run of `lenet300_run` (test_cli, test_bad_inputs, test_triton) and of torchrun's twin
TINY = sets(
    *TINY_DATA,
    "train.dense.epochs=2",
    "train.vib.epochs=2",
    "train.vib.kl_factor=1e-3",
    *TINY_BENCH,
    "bench.batch_sizes=[1,8]",
    "bench.memory=false",  # ~10 s a bench stage; tests/bench/test_bench.py measures memory
    "train.finetune.epochs=0",  # finetune: tests/training/test_finetune.py
    "deploy.max_error_increase=1",  # any pruned net is within the budget: package ships the chosen one as `<run>`
)
# the one LeNet-5 run through every stage (conftest.lenet5_run): OpenVINO, INT8 (QDQ, and NNCF on OpenVINO), both
# CPU engines
LENET5_EVERY_STAGE = sets(
    *TINY_DATA,
    "train.dense.epochs=1",
    "train.vib.epochs=2",
    "train.vib.kl_factor=1e-4",
    "train.finetune.epochs=0",
    *TINY_BENCH,
    "bench.batch_sizes=[1,8]",
    "bench.backends=[onnxruntime,openvino]",
    "bench.memory=false",
    "quantize.enabled=true",
    "quantize.openvino=nncf",  # OpenVINO's INT8 by NNCF with accuracy control (tests/deploy/test_nncf_int8.py)
)
# the study commands' tiny points (the session's studies workspace: test_compare, test_sweep)
STUDY_TINY = sets(
    *TINY_DATA,
    "train.dense.epochs=1",
    "train.vib.epochs=3",
    "train.batch_size=50",
    "train.vib.gate_lr=0.1",
    "train.vib.kl_factor=1e-3",
    *TINY_BENCH,
    "bench.memory=false",
    "bench.backends=[onnxruntime]",
    "train.finetune.epochs=0",
)
# the progress lines stage commands print on stderr, and the line a changed config prints before anything reruns
STATUS = re.compile(
    r"^\[(run|cached|off)\] [a-z-]+$|^\S+: .* from the (finished run|last run there); .*(rerun|reruns)$"
)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    from vib_deploy.data.datasets import resolve_root
    from vib_deploy.errors import UserError

    try:
        return resolve_root("mnist", None)
    except UserError as e:
        pytest.skip(f"real MNIST is not available ({e}); `make test` fetches it first")


def _made_once(
    tmp_path_factory, name: str, args: list[str], workspace: bool
) -> tuple[Path, subprocess.CompletedProcess]:
    """`vib-deploy ARGS`, run once for the whole session and every xdist worker into <shared>/<name>: as its run
    directory (`--run-dir`), or as its working directory (`workspace`: the study commands' runs/ and docs/).

    The first worker to ask makes it under a file lock; the others wait, then read the same directory and the
    same captured output. Tests that change it work on a copy.
    """
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the workers' common parent
    target, output = shared / "shared-runs" / name, shared / "shared-runs" / f"{name}.json"
    target.parent.mkdir(exist_ok=True)
    argv = args if workspace else [*args, "--run-dir", str(target)]
    with FileLock(str(output) + ".lock"):
        if not output.exists():
            if workspace:
                target.mkdir(exist_ok=True)
            proc = run_cli(*argv, cwd=target if workspace else None)
            output.write_text(json.dumps([proc.returncode, proc.stdout, proc.stderr]))
        code, out, err = json.loads(output.read_text())
    proc = subprocess.CompletedProcess(argv, code, out, err)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target, proc


def shared_run(tmp_path_factory, name: str, *args: str) -> tuple[Path, subprocess.CompletedProcess]:
    """`vib-deploy run ARGS --run-dir <shared>/<name>`, made once for the whole session (see `_made_once`)."""
    return _made_once(tmp_path_factory, name, list(args), workspace=False)


@pytest.fixture(scope="session")
def lenet300_run(tmp_path_factory, mnist_root) -> tuple[Path, subprocess.CompletedProcess]:
    """One tiny run of the default pipeline for the whole session (tests that change it work on a copy)."""
    return shared_run(tmp_path_factory, "l300", "run", LENET300, *TINY)


@pytest.fixture(scope="session")
def lenet5_run(tmp_path_factory, mnist_root) -> tuple[Path, subprocess.CompletedProcess]:
    """The session's one LeNet-5 run through every stage (OpenVINO, INT8, every bench backend): test_cli, test_cpu_deploy."""
    return shared_run(tmp_path_factory, "l5", "run", "pipelines/mnist-lenet5.yaml", *LENET5_EVERY_STAGE)


@pytest.fixture(scope="session")
def studies_workspace(tmp_path_factory, mnist_root) -> tuple[Path, subprocess.CompletedProcess]:
    """The session's one studies workspace: `vib-deploy compare` (VIB and three peers at matched FLOPs, seeds 0
    and 1, STUDY_TINY) run in it once. test_compare reads it (and runs `paper` on it); test_sweep sweeps a copy."""
    args = ["compare", str(ROOT / LENET300), "--methods", "vib,l1,slimming,random", "--match-flops", "--seeds", "0,1"]
    return _made_once(tmp_path_factory, "studies", [*args, "--docs", "docs", *STUDY_TINY], workspace=True)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, no traceback, exactly one `error:` line (besides [run]/[cached] status lines) holding every fragment."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not STATUS.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


# the environment variables a process reads when it starts (the interpreter, the dynamic loader, CUDA, the OpenMP
# runtime): an in-process run cannot honour them, except the thread counts (torch.set_num_threads for the call)
_PROCESS_ONLY_ENV = re.compile(r"^(PYTHON\w*|LD_\w+|CUDA_\w+|KMP_\w+|GOMP_\w+|OMP_(?!NUM_THREADS$)\w+)$")
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_TORCH_DEFAULT_SEED = 67280421310721  # a fresh process's torch.initial_seed()


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 600, process: bool = False
) -> subprocess.CompletedProcess:
    """`vib-deploy ARGS` from `cwd` (default the repository root) with `env` added: its exit code and what it wrote
    on stdout and stderr.

    By default in this process, through the console script's own entry point (`vib_deploy.cli.app:main`, whose
    error handler is the edge under test: one `error:` line, exit 2): saves a new interpreter, torch's import and
    its first-call warm-ups per command. `process=True` spawns `python -m vib_deploy` instead, where the process
    is the claim (a signal, torchrun, an environment read at start-up such as PYTHONPATH), or where the command
    changes what cannot be put back (a Ray instance of its own, a fake module on the path). `timeout` holds for a
    process only.
    """
    if process:
        return subprocess.run(
            [sys.executable, "-m", "vib_deploy", *args],
            cwd=cwd or ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=timeout,
        )
    return _run_in_process(list(args), cwd or ROOT, env or {})


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    import warnings

    (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))


def _run_in_process(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`main()` as `python -m vib_deploy ARGS` runs it, its output captured and its exit status taken from SystemExit
    (an uncaught exception: its traceback on stderr, status 1, as the interpreter does)."""
    import traceback

    from vib_deploy.cli.app import main

    unsupported = sorted(k for k in env if _PROCESS_ONLY_ENV.match(k))
    if unsupported:
        raise ValueError(f"run_cli: {unsupported} take effect at a process's start: pass process=True")
    threads = {int(env[k]) for k in _THREAD_ENV if k in env}
    if len(threads) > 1:
        raise ValueError("run_cli: OMP_NUM_THREADS and MKL_NUM_THREADS differ: pass process=True")
    code = 0
    with _captured_output() as output, _as_a_fresh_process(args, cwd, env, threads.pop() if threads else None):
        try:
            main()
        except SystemExit as e:  # as the interpreter maps sys.exit's argument to an exit status
            code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, int | None):
                print(e.code, file=sys.stderr)
        except Exception:  # what an uncaught exception does to a process (--debug re-raises)
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess([sys.executable, "-m", "vib_deploy", *args], code, *output)


@contextlib.contextmanager
def _captured_output() -> Iterator[list[str]]:
    """stdout and stderr captured at file descriptors 1 and 2 (what native libraries print lands there too, as in a
    process's pipes), as [stdout, stderr] once the block ends. The text streams on them are left open: a library
    imported in the block may keep one (a logging handler), and writes through it later go to whatever file
    descriptor 1 or 2 is then."""
    import io
    import tempfile

    output: list[str] = []
    saved_streams = sys.stdout, sys.stderr
    for stream in saved_streams:
        stream.flush()
    saved_fds = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            # text streams on the descriptors, not a terminal: as a process's pipes (rich prints no colour, no bar)
            sys.stdout = open(1, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False)  # noqa: SIM115
            yield output
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            sys.stdout, sys.stderr = saved_streams
            for fd, saved in zip((1, 2), saved_fds):
                os.dup2(saved, fd)
                os.close(saved)
        for f in (out, err):  # decoded as subprocess.run(text=True) decodes a pipe: universal newlines
            f.seek(0)
            output.append(io.TextIOWrapper(f, encoding="utf-8", errors="replace").read())


@contextlib.contextmanager
def _as_a_fresh_process(args: list[str], cwd: Path, env: dict[str, str], threads: int | None) -> Iterator[None]:
    """sys.argv, `__main__`'s package (click's program name), the working directory, os.environ (plus `env`), torch's
    threads and random stream, the warning filters as a fresh process has them; all of it, the logging levels and the
    SIGINT/SIGTERM handlers put back after the block."""
    import logging
    import signal
    import warnings

    import torch

    interpreter_main = sys.modules["__main__"]
    saved_argv, saved_path, saved_cwd, saved_environ = sys.argv[:], sys.path[:], os.getcwd(), dict(os.environ)
    saved_package, saved_threads = getattr(interpreter_main, "__package__", None), torch.get_num_threads()
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    saved_levels = {
        name: logger.level
        for name, logger in [("", logging.root), *logging.Logger.manager.loggerDict.items()]
        if isinstance(logger, logging.Logger)
    }
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        try:
            sys.argv = [str(ROOT / "vib_deploy" / "__main__.py"), *args]  # with the package: `python -m vib_deploy`
            interpreter_main.__package__ = "vib_deploy"
            os.environ.update(env)
            os.chdir(cwd)
            if threads is not None:
                torch.set_num_threads(threads)
            torch.manual_seed(_TORCH_DEFAULT_SEED)
            warnings.resetwarnings()  # then the interpreter's own filters (no -W), each added in front of the last
            for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
                warnings.simplefilter("ignore", category)
            warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
            warnings.showwarning = _show_warning  # on stderr, not to pytest's recorder
            yield
        finally:
            sys.argv[:], sys.path[:] = saved_argv, saved_path
            interpreter_main.__package__ = saved_package
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_environ)
            torch.set_num_threads(saved_threads)
            for signum, handler in saved_signals.items():
                signal.signal(signum, handler)
            for name, level in saved_levels.items():
                (logging.getLogger(name) if name else logging.root).setLevel(level)


class InterruptAfter:
    """A progress sink for `train` that presses Ctrl-C after `steps` training steps (on every rank alike)."""

    def __init__(self, steps):
        self.steps = steps
        self.console = SimpleNamespace(print=lambda *a, **k: None)

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, task):
        self.steps -= 1
        if self.steps == 0:
            raise KeyboardInterrupt


def kept_pixel_net(directory: Path) -> tuple[torch.nn.Module, Path]:
    """A tiny input-gated MLP (5 of 784 pixels kept by PixelSelect) and its ONNX export in `directory`."""
    import torch

    from vib_deploy.deploy.export import export_onnx
    from vib_deploy.model.layers import PixelSelect

    torch.manual_seed(0)
    kept = torch.tensor([3, 7, 100, 101, 783])
    model = torch.nn.Sequential(torch.nn.Flatten(), PixelSelect(kept), torch.nn.Linear(5, 4)).eval()
    export_onnx(model, directory / "m.onnx", (1, 28, 28), opset=18)
    return model, directory / "m.onnx"


def enabled_stages(run_dir: Path) -> list[str]:
    """The stages the run directory's config turns on, in order, from the stage registry."""
    from vib_deploy.config import read_run_config
    from vib_deploy.stages.registry import STAGES

    config = read_run_config(run_dir)
    return [s.name for s in STAGES if s.enabled(config)]


# The slowest test files, started first: with `--dist loadfile --no-loadscope-reorder` (make test) a worker then ends
# on small files, not on a minute-long one while the other idles. A file missing here runs after these, in collection
# order. Seconds: each file alone, one worker, its session runs included, on a 2-core machine that two one-thread
# trainings kept busy (2026-12-08, `pytest -n 0 --durations`), with the CLI calls in-process (run_cli).
SLOW_FIRST = [
    "test_executor.py",  # ~145: Ray (a fresh worker per unit), sweeps through the CLI, Ctrl-C and kill -9
    "test_gpu_day.py",  # ~85: the GPU-day dry run, a process per step, three tiny pipelines
    "test_resume.py",  # ~75: a SIGKILL at nine points, each a process
    "test_cpu_deploy.py",  # ~70: the LeNet-5 every-stage run, NNCF, a local Triton
    "test_distributed.py",  # ~65: torchrun, two pipelines
    "test_cli.py",  # ~50: the session's LeNet-300 and LeNet-5 runs
    "test_triton.py",  # ~50: local servers
    "test_compare.py",  # ~45: the studies workspace (four methods, two seeds)
    "test_failed_runs.py",  # ~35
    "test_sources.py",  # ~35
    "test_bad_inputs.py",  # ~35
    "test_userdata.py",  # ~25
    "test_finetune.py",  # ~20
    "test_tracking.py",  # ~22: MLflow
    "test_search.py",  # ~17
    "test_sweep.py",  # ~12
    "test_target.py",  # ~11: a tiny 40-epoch LeNet-300 with a FLOPs target
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order
