"""The runner protocol (backends/base.py): every registered runner implements it; nobody finds it by getattr."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from vib_deploy.backends import BACKENDS, bench_stage_backends, device_backends, get_backend, needs_server
from vib_deploy.backends.base import DeviceRunner, Runner
from vib_deploy.backends.triton import TritonRunner
from vib_deploy.config import parse_config
from vib_deploy.errors import UserError

PACKAGE = Path(__file__).resolve().parents[2] / "vib_deploy"
PROTOCOL = (
    "unavailable",
    "unavailable_on",
    "activate",
    "infer",
    "deactivate",
    "prepare",
    "infer_tensor",
    "weight_bytes",
    "activate_impl",
    "infer_impl",
    "deactivate_impl",
)
FACTS = {
    "name": str,
    "artifact_suffix": str,
    "devices": tuple,
    "bench_stage": bool,
    "needs_server": bool,
    "host_clock": bool,
}


def protocol_problems(cls: type) -> list[str]:
    """What `cls` lacks of the runner protocol: a method, a signature the base's callers rely on, a class fact."""
    if not (isinstance(cls, type) and issubclass(cls, Runner)):
        return [f"{cls!r} is not a Runner"]
    problems = [f"abstract: {sorted(cls.__abstractmethods__)}"] if inspect.isabstract(cls) else []
    for method in PROTOCOL:
        base = inspect.signature(getattr(Runner, method))
        own = inspect.signature(getattr(cls, method))
        if list(own.parameters)[: len(base.parameters)] != list(base.parameters):
            problems.append(f"{method}{own} does not take {method}{base}")
    for fact, kind in FACTS.items():
        if not isinstance(getattr(cls, fact), kind):
            problems.append(f"{fact} is not a {kind.__name__}")
    if not cls.artifact_suffix or not set(cls.devices) <= {"cpu", "cuda"} or not cls.devices:
        problems.append(f"artifact_suffix {cls.artifact_suffix!r} / devices {cls.devices!r}")
    return problems


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_registered_runner_implements_the_protocol(name):
    cls = BACKENDS[name]
    assert cls.name == name
    assert protocol_problems(cls) == []
    for device in ("cpu", "cuda"):
        why = cls.unavailable_on(device)
        assert why is None or (isinstance(why, str) and why)


def test_the_protocol_check_finds_what_a_runner_lacks():
    class NoInfer(Runner):
        name, artifact_suffix = "no-infer", ".onnx"

        def activate_impl(self):
            pass

    class DeafToDevices(Runner):
        name, artifact_suffix = "deaf", ".onnx"

        @classmethod
        def unavailable_on(cls):  # type: ignore[override]
            return None

        def activate_impl(self):
            pass

        def infer_impl(self, x):
            return x

    class DeviceWithoutTensors(DeviceRunner):
        name, artifact_suffix = "half", ".pt"

        def activate_impl(self):
            pass

    assert any("infer_impl" in p for p in protocol_problems(NoInfer))
    assert any(p.startswith("unavailable_on") for p in protocol_problems(DeafToDevices))
    assert any("infer_tensor" in p for p in protocol_problems(DeviceWithoutTensors))
    assert protocol_problems(dict) == [f"{dict!r} is not a Runner"]


def test_registry_flags_pick_the_backends():
    assert bench_stage_backends() == ["onnxruntime", "torch", "openvino"]
    assert list(device_backends()) == [
        "torch-cuda",
        "torch-cuda-graphs",
        "aotinductor",
        "onnxruntime-cuda",
        "onnxruntime-tensorrt",
    ]
    assert BACKENDS["triton"] is TritonRunner and needs_server("triton")
    assert not needs_server("onnxruntime") and not needs_server("nonesuch")
    assert [n for n, c in BACKENDS.items() if not c.host_clock] == [
        "torch-cuda",
        "torch-cuda-graphs",
        "aotinductor",
    ]  # ONNX Runtime runs on its own stream: host clock after a device sync
    with pytest.raises(UserError, match="unknown backend 'nonesuch'; available: onnxruntime, torch, .*triton"):
        get_backend("nonesuch")


def test_host_runner_defaults(tmp_path):
    from vib_deploy.backends.onnxruntime import OnnxRuntimeRunner

    path = tmp_path / "m.onnx"
    path.write_bytes(b"x" * 123)
    runner = OnnxRuntimeRunner(path)
    x = object()
    assert runner.prepare(x) is x and runner.weight_bytes() == 123  # type: ignore[arg-type]
    assert OnnxRuntimeRunner.unavailable_on("cuda") == "onnxruntime runs on cpu only, not cuda"


def test_no_getattr_on_runners_outside_backends():
    """Code outside vib_deploy/backends asks the protocol directly, never getattr/hasattr for one of its names."""
    names = set(PROTOCOL) | set(FACTS)
    found = []
    for path in PACKAGE.rglob("*.py"):
        if "backends" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in names
            ):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    assert not found, found


@pytest.mark.parametrize("backend", ["tensorrt", "nonesuch", "triton"])
def test_config_refuses_a_backend_the_bench_stage_cannot_run(backend):
    tree = {"name": "x", "model": {"name": "lenet5"}, "bench": {"backends": ["onnxruntime", backend]}}
    with pytest.raises(UserError) as e:
        parse_config(tree, "p.yaml")
    message = str(e.value)
    assert message.startswith("p.yaml: key 'bench.backends.1': ") and "\n" not in message
    assert f"bench.backends takes {', '.join(bench_stage_backends())} (got {backend!r})" in message


def test_config_refuses_an_unknown_model_naming_the_zoo():
    from vib_deploy.model.zoo_names import MODULE_ZOO, SEQUENTIAL_ZOO, ZOO_NAMES
    from vib_deploy.zoo import ZOO

    with pytest.raises(UserError, match=r"key 'model.name': unknown model; the zoo has lenet300, lenet5, resnet20, "):
        parse_config({"name": "x", "model": {"name": "alexnet"}}, "p.yaml")
    assert set(ZOO) == set(SEQUENTIAL_ZOO) and ZOO_NAMES == (*SEQUENTIAL_ZOO, *MODULE_ZOO)
    for name in ZOO_NAMES:
        assert parse_config({"name": "x", "model": {"name": name}}, "p.yaml").model.name == name
