"""Ship to Triton: the model repository (layout, schema-checked configs, manifests, versions, atomic
writes, `verify`) and a real tritonserver round trip over HTTP and gRPC with real MNIST test images."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli

pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed: pip install 'vib-deploy[ship]'")

from google.protobuf import text_format  # noqa: E402  (after the importorskip: tritonclient brings this protobuf)
from tritonclient.grpc import model_config_pb2  # noqa: E402

from vib_deploy.runs.directory import RunDir, sha256_file  # noqa: E402
from vib_deploy.triton import repository as ship  # noqa: E402

TEST_LIMIT = 300
MODELS = ("tiny-dense", "tiny-pruned")
CHOSEN = "tiny"  # the deployment chosen for the user (conftest.TINY's budget takes any pruned net): fp32 pruned.onnx

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tiny_run(lenet300_run) -> Path:
    """The session's real (tiny) run of the default pipeline (conftest): CI has no finished run to copy."""
    return lenet300_run[0]


@pytest.fixture(scope="module")
def repo(tiny_run, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo") / "models"
    proc = run_cli("package", str(tiny_run), "--repo", str(repo), "--name", "tiny")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return repo


@pytest.fixture(scope="module")
def test_images(tiny_run):
    from vib_deploy.data.datasets import load_splits

    splits = load_splits("mnist", None, 200, 700, TEST_LIMIT)
    return np.ascontiguousarray(splits.x_test, dtype=np.float32), splits.y_test


def _copy(repo: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "models"
    shutil.copytree(repo, copy)
    return copy


# -- the repository ----------------------------------------------------------------------------
def test_layout_config_and_manifest(repo, tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert sorted(p.name for p in repo.iterdir()) == [CHOSEN, *MODELS]
    for name, variant in zip(MODELS, ("dense", "pruned")):
        model_dir = repo / name
        assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "labels.txt"]  # no temp dir left
        assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["manifest.json", "model.onnx"]
        # the config parses with Triton's schema and describes the real ONNX graph
        config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.name == name and config.platform == "onnxruntime_onnx" and config.max_batch_size == 256
        assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [
            ("input", "TYPE_FP32", [1, 28, 28])
        ]
        assert [(o.name, list(o.dims), o.label_filename) for o in config.output] == [("logits", [10], "labels.txt")]
        assert list(config.dynamic_batching.preferred_batch_size) == [16, 64]
        assert config.dynamic_batching.max_queue_delay_microseconds == 100
        assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [
            (1, "KIND_CPU")
        ]
        assert config.version_policy.WhichOneof("policy_choice") == "latest"
        assert config.model_warmup[0].inputs["input"].zero_data and list(
            config.model_warmup[0].inputs["input"].dims
        ) == [1, 28, 28]
        assert (model_dir / "labels.txt").read_text().split() == [str(i) for i in range(10)]
        # the ONNX file is the run's, and the manifest traces it back with the run's metrics
        assert sha256_file(model_dir / "1" / "model.onnx") == sha256_file(tiny_run / f"{variant}.onnx")
        manifest = json.loads((model_dir / "1" / "manifest.json").read_text())
        assert manifest["files"] == {"model.onnx": sha256_file(model_dir / "1" / "model.onnx")}
        assert manifest["model_files"] == {
            f"../{n}": sha256_file(model_dir / n) for n in ("config.pbtxt", "labels.txt")
        }
        assert manifest["source"]["run"] == str(tiny_run.resolve())
        assert manifest["source"]["metrics_sha256"] == sha256_file(tiny_run / "metrics.json")
        assert manifest["metrics"]["error"] == metrics[variant]["error"]
        assert manifest["metrics"]["flops"] == metrics[variant]["flops"]
        assert {(r["backend"], r["batch"]) for r in manifest["metrics"]["latency"]} == {
            (b, n) for b in ("onnxruntime", "torch") for n in (1, 8)
        }  # the run's bench (conftest.TINY), this variant
    proc = run_cli("verify", str(repo))
    assert proc.returncode == 0 and "ok: 3 model versions" in proc.stdout, proc.stderr


def test_the_run_name_is_the_chosen_deployment(repo, tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    chosen = metrics["choice"]["chosen"]
    assert chosen["variant"] == "pruned" and chosen["precision"] == "fp32" and chosen["batch"] == 8
    assert chosen["val_error"] == metrics["pruned"]["val_error"]  # the prune stage's, on the validation split
    fastest = min(
        (r for r in metrics["bench"] if r["batch"] == 8 and r["variant"] == "pruned"), key=lambda r: r["p50_ms"]
    )
    assert (chosen["engine"], chosen["p50_ms"]) == (fastest["backend"], fastest["p50_ms"])
    vdir = repo / CHOSEN / "1"
    assert sorted(p.name for p in vdir.iterdir()) == ["manifest.json", "model.onnx"]
    assert sha256_file(vdir / "model.onnx") == sha256_file(tiny_run / "pruned.onnx")
    config = text_format.Parse((repo / CHOSEN / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == CHOSEN and config.platform == "onnxruntime_onnx"
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["chosen"] == metrics["choice"] and manifest["variant"] == "pruned"
    if chosen["engine"] == "torch":  # no Triton layout for torch here: its ONNX twin, and the record says so
        assert manifest["shipped_as"].startswith("onnxruntime: torch has no Triton layout here")
    else:
        assert "shipped_as" not in manifest


def _fake_run(tmp_path: Path) -> RunDir:
    """A run directory holding the pruned net's deployable files (stand-in bytes; nothing loads them here)."""
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    files = ["pruned.onnx", "pruned_int8.onnx", "pruned.xml", "pruned.bin"]
    for name in files:
        (run.path / name).write_bytes(name.encode())
    (run.path / "pruned.xml.json").write_text(json.dumps({"openvino": "2025.0", "cpu": "x"}))
    run.add_artifacts("stand-in", [*files, "pruned.xml.json"])
    return run


@pytest.mark.parametrize(
    "engine,precision,files,platform,from_file",
    [
        ("onnxruntime", "fp32", ["model.onnx"], "onnxruntime_onnx", {"model.onnx": "pruned.onnx"}),
        ("onnxruntime", "int8", ["model.onnx"], "onnxruntime_onnx", {"model.onnx": "pruned_int8.onnx"}),
        (
            "openvino",
            "fp32",
            ["model.bin", "model.onnx", "model.xml", "model.xml.json"],
            "openvino",
            {"model.xml": "pruned.xml", "model.onnx": "pruned.onnx"},
        ),
        ("openvino", "int8", ["model.onnx"], "openvino", {"model.onnx": "pruned_int8.onnx"}),
        ("torch", "fp32", ["model.onnx"], "onnxruntime_onnx", {"model.onnx": "pruned.onnx"}),
    ],
)
def test_the_chosen_deployment_ships_in_its_engines_layout(tmp_path, engine, precision, files, platform, from_file):
    from vib_deploy.records.summary import Deployment, DeploymentChoice
    from vib_deploy.triton.chosen import chosen_target
    from vib_deploy.triton.modelconfig import ShipOptions

    run = _fake_run(tmp_path)
    d = Deployment(engine, precision, "pruned", 64, 0.1, 0.02, 0.021, [4, 9])
    choice = DeploymentChoice(f"{engine}-{precision}@64", 64, 0.005, 0.018, 0.023, d, None, None, 10.0, None)
    ((name, sources, got_platform, _, record),) = chosen_target(run, "net", choice, ShipOptions())
    assert name == "net" and sorted(sources) == files and got_platform == platform
    assert {k: sources[k].name for k in from_file} == from_file
    assert record["chosen"]["chosen"]["engine"] == engine and record["precision"] == precision
    assert ("served_locally" in record) == (engine == "openvino")  # the local server runs model.onnx instead
    assert ("shipped_as" in record) == (engine == "torch")
    nothing = dataclasses.replace(choice, chosen=None, why_none="no pruned deployment within the error budget")
    assert chosen_target(run, "net", nothing, ShipOptions()) == []  # package ships `<run>-<variant>` only


def test_a_chosen_openvino_int8_by_nncf_ships_its_ir_with_the_qdq_twin(tmp_path):
    """quantize.openvino: nncf: OpenVINO's INT8 is NNCF's IR (pruned_int8.xml), shipped for Triton's OpenVINO backend;
    the QDQ ONNX is the twin the local server runs."""
    from vib_deploy.records import NncfModel, QuantizedModel, QuantizeRecord
    from vib_deploy.records.summary import Deployment, DeploymentChoice
    from vib_deploy.triton.chosen import chosen_target
    from vib_deploy.triton.modelconfig import ShipOptions

    run = _fake_run(tmp_path)
    files = ["pruned_int8.xml", "pruned_int8.bin", "pruned_int8.xml.json"]
    for name in files:
        (run.path / name).write_text(json.dumps({"openvino_version": "x", "precision": "int8"}))
    made = NncfModel("pruned_int8.xml", 9, 0.02, 0.021, 0.02, 0.023, 0.003, ["a", "b"], ["b"], {})
    q = QuantizedModel("pruned_int8.onnx", 1, 4, {"openvino": 0.03}, 0.02, 300, {"openvino": 0.03}, made)
    QuantizeRecord({}, "QDQ", "int8 per channel", "uint8", ["openvino"], {"pruned": q}).write(
        run.file(QuantizeRecord.FILE)
    )
    run.add_artifacts("quantize", [*files, QuantizeRecord.FILE])
    d = Deployment("openvino", "int8", "pruned", 64, 0.1, 0.021, 0.02, [4, 9], made.method)
    choice = DeploymentChoice("auto", 64, 0.005, 0.018, 0.023, d, None, None, 10.0, None)
    ((_, sources, platform, _, record),) = chosen_target(run, "net", choice, ShipOptions())
    assert platform == "openvino" and {k: v.name for k, v in sources.items()} == {
        "model.onnx": "pruned_int8.onnx",
        "model.xml": "pruned_int8.xml",
        "model.bin": "pruned_int8.bin",
        "model.xml.json": "pruned_int8.xml.json",
    }
    assert record["openvino"]["precision"] == "int8" and "served_locally" in record


def test_an_openvino_model_with_an_onnx_twin_is_served_through_it(repo, tmp_path):
    """The local tritonserver has no OpenVINO backend: a chosen OpenVINO deployment is served from its model.onnx."""
    from vib_deploy.triton.modelconfig import MODEL_FILE, OPENVINO, ShipOptions, graph_io, render_config
    from vib_deploy.triton.server import pytriton_root, serving_copy

    if pytriton_root() is None:
        pytest.skip("nvidia-pytriton is not installed")
    copy = _copy(repo, tmp_path)
    inputs, outputs = graph_io(copy / CHOSEN / "1" / MODEL_FILE)
    (copy / CHOSEN / "config.pbtxt").write_text(
        render_config(CHOSEN, inputs, outputs, ShipOptions(), OPENVINO, MODEL_FILE)
    )
    ir_only = copy / "tiny-pruned-openvino"  # an IR without a twin stays unserved
    shutil.copytree(copy / CHOSEN, ir_only)
    (ir_only / "1" / MODEL_FILE).unlink()
    names = serving_copy(copy, tmp_path / "serving")
    assert CHOSEN in names and "tiny-pruned-openvino" not in names
    served = ship.parse_config((tmp_path / "serving/models" / CHOSEN / "config.pbtxt").read_text(), "copy")
    assert (served.backend, served.platform, served.default_model_filename) == ("python", "", "")
    assert (tmp_path / "serving/models" / CHOSEN / "1" / MODEL_FILE).is_file()


def test_versions_increase_and_can_be_set(repo, tiny_run, tmp_path):
    copy = _copy(repo, tmp_path)
    proc = run_cli("package", str(tiny_run), "--repo", str(copy), "--name", "tiny")
    assert proc.returncode == 0 and proc.stdout.count("version 1 unchanged") == 3, proc.stdout + proc.stderr
    proc = run_cli(
        "package",
        str(tiny_run),
        "--repo",
        str(copy),
        "--name",
        "tiny",
        "--version",
        "7",
        "--max-batch-size",
        "32",
        "--preferred-batch-sizes",
        "8,32",
        "--instances",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    for name in (CHOSEN, *MODELS):
        assert ship.versions(copy / name) == [1, 7]
        assert not [p for p in (copy / name).iterdir() if p.name.startswith(".")]
        config = text_format.Parse((copy / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.max_batch_size == 32 and config.instance_group[0].count == 2
    assert (
        run_cli("package", str(tiny_run), "--repo", str(copy), "--name", "tiny").returncode == 0
    )  # config differs: new version
    assert ship.versions(copy / MODELS[0]) == [1, 7, 8]
    # replacing an existing version keeps the others and still verifies
    assert run_cli("package", str(tiny_run), "--repo", str(copy), "--name", "tiny", "--version", "7").returncode == 0
    assert ship.versions(copy / MODELS[0]) == [1, 7, 8]
    assert not [p for p in (copy / MODELS[0]).iterdir() if p.name.startswith(".")]
    proc = run_cli("verify", str(copy))
    assert proc.returncode == 0 and "ok: 9 model versions" in proc.stdout, proc.stderr


def test_a_failed_write_leaves_no_partial_version(repo, tiny_run, tmp_path, monkeypatch):
    copy = _copy(repo, tmp_path)

    def fail(path, obj):
        raise OSError("simulated failure while writing the version manifest")

    monkeypatch.setattr(ship, "atomic_write_json", fail)
    with pytest.raises(OSError, match="simulated"):
        ship.package(tiny_run, copy, version=2, name="tiny")
    for name in MODELS:
        assert sorted(p.name for p in (copy / name).iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    # replacing version 1 fails the same way: version 1 is still the old, complete one
    with pytest.raises(OSError, match="simulated"):
        ship.package(tiny_run, copy, version=1, name="tiny")
    monkeypatch.undo()
    assert sorted(p.name for p in (copy / MODELS[0]).iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert run_cli("verify", str(copy)).returncode == 0


@pytest.mark.parametrize(
    "target,edit,message",
    [
        ("tiny-pruned/1/model.onnx", lambda b: b[:-10], "tiny-pruned/1/model.onnx changed"),
        ("tiny-dense/labels.txt", lambda b: b.replace(b"7", b"seven"), "tiny-dense/labels.txt changed"),
        (
            "tiny-dense/config.pbtxt",
            lambda b: b.replace(b"max_batch_size: 256", b"max_batch_size: 128"),
            "tiny-dense/config.pbtxt changed",
        ),
        (
            "tiny-dense/config.pbtxt",
            lambda b: b.replace(b"max_batch_size", b"max_batch_sise"),
            "is not a valid Triton model config",
        ),
        ("tiny-dense/1/manifest.json", lambda b: b[:20], "tiny-dense/1/manifest.json is corrupt"),
    ],
)
def test_tampered_repository_fails_verify_naming_the_file(repo, tmp_path, target, edit, message):
    copy = _copy(repo, tmp_path)
    path = copy / target
    path.write_bytes(edit(path.read_bytes()))
    proc = run_cli("verify", str(copy))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_a_typo_in_a_generated_config_is_the_parsers_message():
    with pytest.raises(ship.UserError, match=r"not a valid Triton model config: .*max_batch_sise"):
        ship.parse_config('name: "x"\nmax_batch_sise: 4\n', "config.pbtxt")


@pytest.mark.parametrize(
    "args,message",
    [
        (["package", "/nonexistent/run", "--repo", "{tmp}/m"], "run directory /nonexistent/run not found"),
        (["package", "{run}", "--repo", "{tmp}/m", "--version", "0"], "--version must be a positive integer"),
        (["package", "{run}", "--repo", "{tmp}/m", "--preferred-batch-sizes", "16,x"], "comma-separated integers"),
        (["package", "{run}", "--repo", "{tmp}/m", "--preferred-batch-sizes", "512"], "must lie in 1..256"),
        (["package", "{run}", "--repo", "{run}"], "is a run directory, not a model repository"),
        (["serve", "{tmp}", "--http-port", "0"], "is not a Triton model repository"),
        (
            ["bench", "{run}", "--backend", "triton", "--batch-sizes", "1,100000", "--concurrency", "1,100000"],
            "--batch-sizes x --concurrency (requests in flight): the input alone needs 31,360,000,000,000 bytes (29206.3 GiB: 100,000 x 100,000 x 1x28x28",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message, tiny_run, tmp_path):
    proc = run_cli(*[a.format(run=tiny_run, tmp=tmp_path) for a in args])
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# -- a real server -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(repo):
    from vib_deploy.triton.server import TritonServer, unavailable

    problem = unavailable()
    if problem:
        pytest.skip(f"a local Triton cannot start here: {problem}")
    server = TritonServer(repo)
    try:
        server.start()
        yield server
    finally:
        server.stop()  # also when a test (or the start) fails
    assert server.process.poll() is not None


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_round_trip_equals_onnxruntime_and_metrics(server, repo, tiny_run, test_images, protocol):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    lib = httpclient if protocol == "http" else grpcclient
    client = lib.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    x, y = test_images
    try:
        for name, variant in zip((*MODELS, CHOSEN), ("dense", "pruned", "pruned")):
            assert client.is_model_ready(name)
            got = []
            for i in range(0, len(x), 64):  # batches of 64, the last one smaller
                inp = lib.InferInput("input", list(x[i : i + 64].shape), "FP32")
                inp.set_data_from_numpy(x[i : i + 64])
                got.append(client.infer(name, [inp], outputs=[lib.InferRequestedOutput("logits")]).as_numpy("logits"))
            logits = np.concatenate(got)
            local = _ort(repo / name / "1" / "model.onnx", x)
            assert logits.shape == (len(x), 10)
            assert np.array_equal(logits.argmax(1), local.argmax(1))
            np.testing.assert_allclose(logits, local, rtol=1e-5, atol=1e-5)
            error = float((logits.argmax(1) != y).mean())
            agreement = metrics["export"]["variants"][variant][
                "argmax_agreement"
            ]  # ONNX vs torch, where the error came from
            assert abs(error - metrics[variant]["error"]) <= (1 - agreement) + 1e-9
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(
    "shape,dtype,message",
    [
        ((2, 784), "FP32", "unexpected shape for input 'input'"),
        ((2, 1, 28, 28), "FP64", "data-type is 'FP64', but model 'tiny-pruned' expects 'FP32'"),
    ],
)
def test_a_bad_request_gets_the_servers_error(server, protocol, shape, dtype, message):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    lib = httpclient if protocol == "http" else grpcclient
    client = lib.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    inp = lib.InferInput("input", list(shape), dtype)
    inp.set_data_from_numpy(np.zeros(shape, dtype=np.float32 if dtype == "FP32" else np.float64))
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODELS[1], [inp])
        assert message in str(info.value), str(info.value)
    finally:
        client.close()


def test_the_server_is_stopped_when_the_body_fails(repo):
    from vib_deploy.triton.server import TritonServer, unavailable

    problem = unavailable()
    if problem:
        pytest.skip(f"a local Triton cannot start here: {problem}")
    with pytest.raises(RuntimeError, match="a failing test"):
        with TritonServer(repo) as server:
            pid, workdir = server.process.pid, server.workdir
            raise RuntimeError("a failing test")
    assert server.process.poll() is not None and not workdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_serve_command_serves_until_sigterm(repo):
    import tritonclient.http as httpclient

    from vib_deploy.triton.server import free_port, listening_addresses, unavailable

    problem = unavailable()
    if problem:
        pytest.skip(f"a local Triton cannot start here: {problem}")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vib_deploy", "serve", str(repo), "--http-port", str(port), "--grpc-port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # "ready in ... (pid N)"
        assert line.startswith("ready in") and f"HTTP 127.0.0.1:{port}, gRPC 127.0.0.1:" in line, (
            line,
            proc.stderr.read() if proc.poll() is not None else "",
        )
        assert listening_addresses(port) == ["127.0.0.1"]  # read from the kernel, not from our own line
        server_pid = int(line.split("(pid ")[1].split(")")[0])
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_model_ready(MODELS[0]) and client.is_model_ready(MODELS[1])
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert "Python-backend model.py" in proc.stderr.read()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"tritonserver (pid {server_pid}) still runs after `vib-deploy serve` got SIGTERM")


def test_a_host_that_is_not_an_address_is_one_line(repo):
    proc = run_cli("serve", str(repo), "--host", "every-interface")
    assert proc.returncode == 2 and "--host 'every-interface': not an IP address" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_server_listens_on_loopback_only(server):
    from vib_deploy.triton.server import listening_addresses

    assert listening_addresses(server.http_port) == ["127.0.0.1"]
    assert listening_addresses(server.grpc_port) == ["127.0.0.1"]
    assert server.bound() == {"http": ["127.0.0.1"], "grpc": ["127.0.0.1"]}


def test_host_widens_it_and_says_so(repo):
    from vib_deploy.triton.server import free_port, listening_addresses, unavailable

    problem = unavailable()
    if problem:
        pytest.skip(f"a local Triton cannot start here: {problem}")
    port, grpc = free_port(), free_port()
    args = ["serve", str(repo), "--http-port", str(port), "--grpc-port", str(grpc), "--host", "0.0.0.0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vib_deploy", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        # gRPC's wildcard is the dual-stack [::] (IPv4 and IPv6): shown as it is bound
        assert f"HTTP 0.0.0.0:{port}, gRPC " in line and (f"0.0.0.0:{grpc}" in line or f"[::]:{grpc}" in line), line
        assert listening_addresses(port) == ["0.0.0.0"] and listening_addresses(grpc) in (["0.0.0.0"], ["::"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    warnings = [w for w in proc.stderr.read().splitlines() if w.startswith("warning: binding to 0.0.0.0")]
    assert len(warnings) == 1 and "anyone who can reach this machine" in warnings[0]


def test_bench_through_triton(tiny_run, tmp_path):
    from vib_deploy.triton.server import unavailable

    problem = unavailable()
    if problem:
        pytest.skip(f"a local Triton cannot start here: {problem}")
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    proc = run_cli(
        "bench", str(copy), "--backend", "triton", "--concurrency", "1,3", "--batch-sizes", "1,8", "--requests", "5"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads((copy / "bench-triton.json").read_text())["records"]
    assert {(r["variant"], r["batch"], r["concurrency"]) for r in records} == {
        (v, b, c) for v in ("dense", "pruned", "chosen") for b in (1, 8) for c in (1, 3)
    }
    choice = json.loads((copy / "metrics.json").read_text())["choice"]  # the tiny run's budget lets one be chosen
    for r in records:
        assert r["calls"] == 5 * r["concurrency"] and 0 < r["p50_ms"] <= r["p99_ms"] and r["throughput"] > 0
        if r["variant"] != "chosen":
            assert r["in_process_p50_ms"] > 0  # the run's own onnxruntime figure at the same batch, beside it
        elif r["batch"] == choice["batch"]:  # the chosen one's own engine, where the choice was made
            assert (r["in_process_p50_ms"], r["in_process_speedup"]) == (choice["chosen"]["p50_ms"], choice["speedup"])
        else:
            assert r["in_process_p50_ms"] is None
    assert "through Triton" in proc.stdout
    assert proc.stdout.count("served speedup, batch ") == 4  # dense / chosen per batch and client count
    bound = json.loads((copy / "bench-triton.json").read_text())["bound"]  # read back while it served
    assert bound == {"http": ["127.0.0.1"], "grpc": ["127.0.0.1"]}
    assert run_cli("verify", str(copy)).returncode == 0  # bench-triton.json is listed in the run's manifest
    proc = run_cli("bench", str(copy), "--backend", "tensorflow")
    assert proc.returncode == 2 and "key 'bench.backends.0'" in proc.stderr and "Traceback" not in proc.stderr


def test_an_engine_ships_as_a_tensorrt_model(tiny_run, tmp_path):
    """Where build-engine made a plan, it ships as <model>_trt (platform tensorrt_plan, KIND_GPU, the sidecar beside it).
    No TensorRT here: the plan is stand-in bytes (nothing loads it), the sidecar has build-engine's fields."""
    from vib_deploy.runs.directory import RunDir, atomic_write_json

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "dense.plan").write_bytes(b"stand-in engine bytes")
    atomic_write_json(
        run / "dense.plan.json",
        {
            "tensorrt_version": "10.3.0",
            "gpu_name": "NVIDIA H100",
            "compute_capability": "9.0",
            "precision": "fp16",
            "profile": {"input": [[1, 1, 28, 28], [64, 1, 28, 28], [128, 1, 28, 28]]},
            "inputs": {"input": [-1, 1, 28, 28]},
            "outputs": {"logits": [-1, 10]},
            "onnx_sha256": sha256_file(run / "dense.onnx"),
            "build_seconds": 1.0,
            "device_memory_bytes": 1,
        },
    )
    RunDir(run).add_artifacts("build-engine", ["dense.plan", "dense.plan.json"])
    repo = tmp_path / "models"
    proc = run_cli("package", str(run), "--repo", str(repo), "--name", "tiny")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in repo.iterdir()) == ["tiny", "tiny-dense", "tiny-dense_trt", "tiny-pruned"]
    vdir = repo / "tiny-dense_trt" / "1"
    assert sorted(p.name for p in vdir.iterdir()) == ["manifest.json", "model.plan", "model.plan.json"]
    config = text_format.Parse((repo / "tiny-dense_trt" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 128  # capped by the engine's profile
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 64]
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["engine"] == {
        "tensorrt_version": "10.3.0",
        "gpu_name": "NVIDIA H100",
        "compute_capability": "9.0",
        "precision": "fp16",
    }
    assert manifest["files"]["model.plan"] == sha256_file(run / "dense.plan")
    assert run_cli("verify", str(repo)).returncode == 0
    (vdir / "model.plan").write_bytes(b"altered")
    proc = run_cli("verify", str(repo))
    assert proc.returncode == 2 and "tiny-dense_trt/1/model.plan changed" in proc.stderr
