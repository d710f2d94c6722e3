"""OpenVINO IR + parity, INT8 (QDQ) quantization calibrated on training images, bench over precision, the
deploy matrix in the report -- end to end on a tiny real-MNIST LeNet-5 run; the OpenVINO runner and its
sidecar on a small net."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import LENET5_EVERY_STAGE, ROOT, run_cli

ov = pytest.importorskip("openvino", reason="the openvino wheel is a dependency: `make setup` installs it")

TINY = LENET5_EVERY_STAGE  # the session run of conftest.lenet5_run


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 5),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 12 * 12, 10),
    ).eval()


def _ir(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    from vib_deploy.backends.openvino import save_ir, sidecar_path
    from vib_deploy.deploy.export import export_onnx
    from vib_deploy.runs.directory import atomic_write, atomic_write_json

    model = _net()
    export_onnx(model, tmp_path / "m.onnx", (1, 28, 28), opset=18)
    xml = tmp_path / "m.xml"
    atomic_write_json(
        sidecar_path(xml), save_ir(tmp_path / "m.onnx", xml, lambda name, fn: atomic_write(tmp_path / name, fn))
    )
    return model, xml


def test_openvino_runner_matches_torch_from_onnx_and_ir(tmp_path):
    from vib_deploy.backends.openvino import OpenVinoRunner

    model, xml = _ir(tmp_path)
    x = np.random.default_rng(0).random((33, 1, 28, 28), dtype=np.float32)
    ref = model(torch.from_numpy(x)).detach().numpy()
    for path in (tmp_path / "m.onnx", xml):
        runner = OpenVinoRunner(path, threads=1).activate()
        assert runner.compiled.get_property("INFERENCE_NUM_THREADS") == 1  # pinned like ONNX Runtime's
        assert np.abs(runner.infer(x) - ref).max() < 1e-4
        assert runner.infer(x[:1]).shape == (1, 10)  # dynamic batch
        runner.deactivate()
    side = json.loads((tmp_path / "m.xml.json").read_text())
    assert side["openvino_version"] == ov.get_version() and side["precision"] == "fp32"
    assert side["input_shapes"] == {"input": "[?,1,28,28]"} and isinstance(side["isa"], list) and side["cpu"]
    from vib_deploy.runs.directory import sha256_file

    assert side["onnx_sha256"] == sha256_file(tmp_path / "m.onnx") and side["bin_sha256"] == sha256_file(
        tmp_path / "m.bin"
    )


def test_ir_from_another_openvino_version_is_one_clear_error(tmp_path):
    from vib_deploy.backends.openvino import OpenVinoRunner
    from vib_deploy.errors import UserError

    _, xml = _ir(tmp_path)
    side = tmp_path / "m.xml.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "openvino_version": "2024.0.0-1-old"}))
    with pytest.raises(UserError, match=r"made for OpenVINO 2024.0.0-1-old, this is OpenVINO 20"):
        OpenVinoRunner(xml).activate()
    side.unlink()
    with pytest.raises(UserError, match="no sidecar m.xml.json"):
        OpenVinoRunner(xml).activate()


def test_calibration_set_is_training_images(tmp_path):
    from types import SimpleNamespace

    from vib_deploy.deploy.cpu_deploy import calibration_images
    from vib_deploy.errors import UserError

    splits = SimpleNamespace(x_train=np.arange(50, dtype=np.float32).reshape(50, 1, 1, 1), x_val=None, x_test=None)
    got = calibration_images(splits, 7)
    assert got.shape == (7, 1, 1, 1) and got[0, 0, 0, 0] == 0 and got[-1, 0, 0, 0] == 49 and len(set(got.ravel())) == 7
    with pytest.raises(UserError, match="only 50 images"):
        calibration_images(splits, 51)


@pytest.fixture(scope="module")
def cpu_run(lenet5_run):
    return lenet5_run


@pytest.mark.e2e
def test_ir_artifacts_and_parity_on_the_test_set(cpu_run):
    from vib_deploy.backends.openvino import OpenVinoRunner
    from vib_deploy.config import load_config
    from vib_deploy.data.datasets import splits_of
    from vib_deploy.nets import load_model
    from vib_deploy.records import RECORD_VERSION

    run_dir, proc = cpu_run
    assert "[run] openvino" in proc.stderr and "[run] quantize" in proc.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    report = json.loads((run_dir / "openvino.json").read_text())
    assert report.pop("record_version") == RECORD_VERSION and set(report) == {"dense", "pruned"}
    x = splits_of(load_config(run_dir / "config.yaml").data).x_test
    for variant, rec in report.items():
        for name in (f"{variant}.xml", f"{variant}.bin", f"{variant}.xml.json"):
            assert manifest["artifacts"][name]["stage"] == "openvino"
        assert rec["samples"] == len(x) == 300 and rec["max_abs_diff"] <= rec["tolerance"] == 1e-4
        # the enforced figure, recomputed here from the shipped IR
        got = OpenVinoRunner(run_dir / f"{variant}.xml").activate().infer(x)
        ref = load_model(run_dir / f"{variant}.pt")(torch.from_numpy(x)).detach().numpy()
        assert np.abs(got - ref).max() <= 1e-4
    assert run_cli("verify", str(run_dir)).returncode == 0


@pytest.mark.e2e
def test_int8_models_are_qdq_per_channel_and_keep_accuracy(cpu_run):
    import onnx

    from vib_deploy.config import load_config
    from vib_deploy.data.datasets import splits_of
    from vib_deploy.deploy.cpu_deploy import onnx_error

    run_dir, _ = cpu_run
    quant = json.loads((run_dir / "quantize.json").read_text())
    assert quant["calibration"] == {"split": "train", "images": 300, "method": "minmax"}
    data = splits_of(load_config(run_dir / "config.yaml").data)
    for variant in ("dense", "pruned"):
        path = run_dir / f"{variant}_int8.onnx"
        graph = onnx.load(str(path)).graph
        ops = {n.op_type for n in graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        scales = {i.name: i for i in graph.initializer if i.name.endswith("_scale")}
        assert any(len(i.dims) == 1 and i.dims[0] > 1 for i in scales.values())  # per-channel weight scales
        q = quant[variant]
        assert q["bytes"] == path.stat().st_size < q["fp32_bytes"] / 2
        for engine in ("onnxruntime", "openvino"):
            assert q["error"][engine] == onnx_error(engine, path, data.x_test, data.y_test)
            assert abs(q["error"][engine] - q["fp32_error"]) <= 0.03  # 9 of 300 images, on a 1-epoch net
            assert q["val_error"][engine] == onnx_error(engine, path, data.x_val, data.y_val)  # what the choice reads


@pytest.mark.e2e
def test_openvino_int8_by_nncf_is_within_the_error_budget_on_validation(cpu_run):
    from vib_deploy.config import load_config
    from vib_deploy.data.datasets import splits_of
    from vib_deploy.deploy.cpu_deploy import onnx_error

    run_dir, _ = cpu_run
    quant = json.loads((run_dir / "quantize.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())["artifacts"]
    dense_val = json.loads((run_dir / "train-dense.json").read_text())["val_error"]
    data = splits_of(load_config(run_dir / "config.yaml").data)
    for variant in ("dense", "pruned"):
        m = quant[variant]["openvino"]
        xml = run_dir / f"{variant}_int8.xml"
        assert m["file"] == xml.name and m["bytes"] == xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
        for name in (xml.name, f"{variant}_int8.bin", f"{variant}_int8.xml.json"):
            assert manifest[name]["stage"] == "quantize"
        assert m["sidecar"]["precision"] == "int8" and m["sidecar"]["source"] == f"{variant}.xml"
        # every figure recomputed here on OpenVINO from the shipped IR
        assert m["error"] == onnx_error("openvino", xml, data.x_test, data.y_test)
        assert m["val_error"] == onnx_error("openvino", xml, data.x_val, data.y_val)
        assert m["fp32_val_error"] == onnx_error("openvino", run_dir / f"{variant}.xml", data.x_val, data.y_val)
        assert m["budget"] == pytest.approx(dense_val + 0.005) and m["max_drop"] == max(
            0.0, m["budget"] - m["fp32_val_error"]
        )
        if m["fp32_val_error"] <= m["budget"]:  # the budget is reachable (all in fp32 at worst): NNCF holds it
            assert m["val_error"] <= m["budget"] + 1e-9
        assert set(m["kept_fp32"]) <= set(m["quantized"]) and m["quantized"]
        assert abs(m["error"] - quant[variant]["fp32_error"]) <= 0.03  # test set: 9 of 300 images


@pytest.mark.e2e
def test_calibration_reads_only_training_images(cpu_run, tmp_path, monkeypatch):
    """The quantize stage run in-process: every image its calibration reader serves is a training image."""
    from vib_deploy.config import load_config
    from vib_deploy.deploy import cpu_deploy
    from vib_deploy.runs.directory import RunDir
    from vib_deploy.stages import Context

    run_dir = tmp_path / "run"
    shutil.copytree(cpu_run[0], run_dir)
    served: list[np.ndarray] = []
    real = cpu_deploy._Batches.get_next

    def spy(self):
        feed = real(self)
        if feed is not None:
            served.extend(next(iter(feed.values())))
        return feed

    monkeypatch.setattr(cpu_deploy._Batches, "get_next", spy)
    from vib_deploy.deploy import nncf_int8

    nncf_seen: list[tuple[np.ndarray, np.ndarray]] = []  # NNCF's calibration and validation images
    real_nncf = nncf_int8.quantize_ir

    def spy_nncf(src, calibration, x_val, *rest):
        nncf_seen.append((calibration, x_val))
        return real_nncf(src, calibration, x_val, *rest)

    monkeypatch.setattr(nncf_int8, "quantize_ir", spy_nncf)
    from vib_deploy.stages import cpu_deploy as cpu_stages

    ctx = Context(RunDir(run_dir), load_config(run_dir / "config.yaml"))
    cpu_stages.quantize(ctx)
    data = ctx.splits()
    key = lambda a: np.ascontiguousarray(a, dtype=np.float32).tobytes()  # noqa: E731
    train, held_out = {key(a) for a in data.x_train}, {key(a) for a in np.concatenate([data.x_val, data.x_test])}
    assert len(served) >= 2 * 300  # each of the two models calibrated on 300 images
    assert all(key(a) in train for a in served)
    assert not any(key(a) in held_out for a in served)
    assert len(nncf_seen) == 2  # dense and pruned
    for calibration, x_val in nncf_seen:
        assert len(calibration) == 300 and all(key(a) in train and key(a) not in held_out for a in calibration)
        assert x_val is data.x_val  # NNCF's accuracy control sees the validation split, never the test set


@pytest.mark.e2e
def test_bench_over_precision_and_the_deploy_matrix(cpu_run, tmp_path):
    run_dir, proc = cpu_run
    m = json.loads((run_dir / "metrics.json").read_text())
    combos = {(r["backend"], r["precision"], r["variant"], r["batch"]) for r in m["bench"]}
    assert combos == {
        (b, p, v, n)
        for b in ("onnxruntime", "openvino")
        for p in ("fp32", "int8")
        for v in ("dense", "pruned")
        for n in (1, 8)
    }
    quant = m["quantize"]
    for r in m["bench"]:
        want = quant[r["variant"]]["error"][r["backend"]] if r["precision"] == "int8" else m[r["variant"]]["error"]
        if (r["backend"], r["precision"]) == ("openvino", "int8"):  # OpenVINO times NNCF's IR, with its error
            ir = run_dir / f"{r['variant']}_int8.xml"
            want = quant[r["variant"]]["openvino"]["error"]
            assert r["bytes"] == ir.stat().st_size + ir.with_suffix(".bin").stat().st_size
        assert r["error"] == want and r["widths"] == m[r["variant"]]["architecture"] and r["bytes"] > 0
    report = (run_dir / "report.md").read_text()
    assert "## Deploy matrix" in report and report.count("best pruned") >= 1 and "- batch 8:" in report
    assert "| openvino | int8 | pruned |" in report and (run_dir / "plots/speedup.png").stat().st_size > 0
    assert "OpenVINO INT8: NNCF with accuracy control" in report and "| pruned |" in report.split("OpenVINO INT8:")[1]
    assert "b8 best dense → pruned" in proc.stdout and "ms: " in proc.stdout  # the headline in the final table
    choice = m["choice"]  # every INT8 deployment had a validation error to be judged by
    assert choice["batch"] == 8 and choice["notes"] == [] and "## Chosen deployment" in report
    assert "chosen (deploy.target" in proc.stdout and "error budget (validation)" in report
    # the bench command over engines, precisions and batches; the run's config keeps what was asked
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    proc = run_cli(
        "bench", str(copy), "--backend", "openvino", "--precision", "int8", "--batch", "2", "--set", "bench.rounds=1"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = json.loads((copy / "bench.json").read_text())["records"]
    assert {(r["backend"], r["precision"], r["batch"]) for r in recs} == {("openvino", "int8", 2)}
    assert {r["calls"] for r in recs} == {1 * 3}  # 1 round (--set) x 3 calls per round (the run's config)
    proc = run_cli("bench", str(copy), "--set", "train.seed=1")
    assert proc.returncode == 2 and "bench takes bench.* keys only" in proc.stderr
    proc = run_cli("bench", str(copy), "--precision", "fp16")
    assert proc.returncode == 2 and "key 'bench.precisions.0'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.e2e
def test_missing_openvino_is_one_line_with_the_install_hint(cpu_run, tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'openvino':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    copy = tmp_path / "run"
    shutil.copytree(cpu_run[0], copy)
    config = (copy / "config.yaml").read_text()
    for args in (["openvino", str(copy)], ["bench", str(copy), "--backend", "openvino"]):
        proc = run_cli(*args, env={"PYTHONPATH": f"{hide}:{ROOT}"}, process=True)  # openvino hidden at start-up
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert (
            "backend openvino is not available: pip install openvino" in proc.stderr and "Traceback" not in proc.stderr
        )
    assert (copy / "config.yaml").read_text() == config  # a failed bench leaves the run's config as it was


@pytest.mark.e2e
def test_package_ships_int8_and_openvino_and_serve_runs_int8(cpu_run, tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed: pip install 'vib-deploy[ship]'")
    import onnxruntime as ort
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from vib_deploy.config import load_config
    from vib_deploy.data.datasets import splits_of
    from vib_deploy.runs.directory import sha256_file
    from vib_deploy.triton.server import TritonServer, unavailable

    run_dir = cpu_run[0]
    repo = tmp_path / "models"
    proc = run_cli("package", str(run_dir), "--repo", str(repo), "--name", "l5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    chosen = ["l5"] if json.loads((run_dir / "metrics.json").read_text())["choice"]["chosen"] else []
    models = ["l5-dense", "l5-pruned", "l5-pruned-int8", "l5-pruned-openvino"]
    assert sorted(p.name for p in repo.iterdir()) == chosen + models
    ov_dir = repo / "l5-pruned-openvino"
    assert sorted(p.name for p in (ov_dir / "1").iterdir()) == [
        "manifest.json",
        "model.bin",
        "model.xml",
        "model.xml.json",
    ]
    assert sha256_file(ov_dir / "1" / "model.bin") == sha256_file(run_dir / "pruned.bin")
    config = text_format.Parse((ov_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.backend == "openvino" and config.platform == "" and config.default_model_filename == "model.xml"
    assert {k: v.string_value for k, v in config.parameters.items()} == {
        "INFERENCE_NUM_THREADS": "1",
        "NUM_STREAMS": "1",
        "PERFORMANCE_HINT": "LATENCY",
    }
    int8 = text_format.Parse((repo / "l5-pruned-int8" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert int8.platform == "onnxruntime_onnx"
    assert sha256_file(repo / "l5-pruned-int8" / "1" / "model.onnx") == sha256_file(run_dir / "pruned_int8.onnx")
    assert run_cli("verify", str(repo)).returncode == 0
    problem = unavailable()
    if problem:
        pytest.skip(f"a local Triton cannot start here: {problem}")
    import tritonclient.http as httpclient

    data = splits_of(load_config(run_dir / "config.yaml").data)
    x, y = np.ascontiguousarray(data.x_test[:128]), data.y_test[:128]
    with TritonServer(repo) as server:
        assert "l5-pruned-int8" in server.models and "l5-pruned-openvino" not in server.models  # python backend only
        client = httpclient.InferenceServerClient(server.http_url)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer("l5-pruned-int8", [inp]).as_numpy("logits")
        client.close()
    local = ort.InferenceSession(str(run_dir / "pruned_int8.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]
    np.testing.assert_allclose(got, local, rtol=1e-5, atol=1e-5)
    assert got.argmax(1).tolist() == local.argmax(1).tolist() and (got.argmax(1) != y).mean() < 0.9


@pytest.mark.e2e
def test_prune_round_to_from_the_cli(cpu_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(cpu_run[0], copy)
    proc = run_cli("prune", str(copy), "--round-to", "3")
    assert proc.returncode == 2 and "key 'prune.round_to'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("prune", str(copy), "--round-to", "16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((copy / "prune.json").read_text())
    assert info["round_to"] == 16 and [w["kept"] for w in info["widths"]] == info["architecture"]
    assert all(
        w["vib"] <= w["kept"] <= w["units"] and (w["kept"] % 16 == 0 or w["kept"] == w["units"]) for w in info["widths"]
    )
    assert "round_to: 16" in (copy / "config.yaml").read_text()


@pytest.mark.e2e
def test_prune_round_to_auto_measures_on_the_first_backend_and_caches(cpu_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(cpu_run[0], copy)
    proc = run_cli("prune", str(copy), "--round-to", "auto")
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((copy / "prune.json").read_text())
    sweep = json.loads((copy / "widths-sweep.json").read_text())
    assert info["round_to"] == "auto" and sweep["key"]["backend"] == "onnxruntime"  # bench.backends[0]
    for w in info["widths"]:
        assert w["vib"] <= w["kept"] <= w["units"] and "on onnxruntime" in w["why"]
        assert set(w["sweep_ms"]) == {str(n) for n in range(w["vib"], min(w["units"], -(-w["vib"] // 16) * 16) + 1)}
        assert all(t > 0 for t in w["sweep_ms"].values())
    assert "widths-sweep.json" in json.loads((copy / "manifest.json").read_text())["artifacts"]  # a listed artifact
    proc = run_cli("verify", str(copy))  # every file verifies; the stages after prune now describe the old pruned net
    assert (
        proc.returncode == 2
        and "stage export is out of date (prune.json" in proc.stderr
        and "corrupt" not in proc.stderr
    )
    proc = run_cli("prune", str(copy), "--round-to", "auto")  # the cache answers: the same timings, nothing re-measured
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((copy / "widths-sweep.json").read_text()) == sweep
    assert [w["sweep_ms"] for w in json.loads((copy / "prune.json").read_text())["widths"]] == [
        w["sweep_ms"] for w in info["widths"]
    ]


@pytest.mark.e2e
def test_a_chosen_openvino_deployment_ships_its_ir_and_serves_its_onnx_twin(cpu_run, tmp_path):
    """deploy.target names OpenVINO fp32: only the report reruns (and, the budget changed, NNCF's quantize, which
    holds it, and the bench after it); `package` ships it as `<run>` for Triton's OpenVINO backend (the IR) with the
    ONNX twin that the local server (no OpenVINO backend) serves."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed: pip install 'vib-deploy[ship]'")
    from vib_deploy.runs.directory import sha256_file

    copy = tmp_path / "run"
    shutil.copytree(cpu_run[0], copy)
    target = ["--set", "deploy.target=openvino-fp32@1", "--set", "deploy.max_error_increase=1"]
    proc = run_cli("run", "pipelines/mnist-lenet5.yaml", "--run-dir", str(copy), *TINY, *target)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran = [line.removeprefix("[run] ") for line in proc.stderr.splitlines() if line.startswith("[run] ")]
    assert ran == ["quantize", "bench", "report"]  # deploy.target keys the report; the budget NNCF's quantize too
    choice = json.loads((copy / "metrics.json").read_text())["choice"]
    assert choice["target"] == "openvino-fp32@1" and choice["batch"] == 1
    assert (choice["chosen"]["engine"], choice["chosen"]["precision"]) == ("openvino", "fp32")
    assert "chosen (deploy.target openvino-fp32@1, b1)" in (copy / "report.md").read_text()
    repo = tmp_path / "models"
    assert run_cli("package", str(copy), "--repo", str(repo), "--name", "l5").returncode == 0
    vdir = repo / "l5" / "1"
    assert sorted(p.name for p in vdir.iterdir()) == [
        "manifest.json",
        "model.bin",
        "model.onnx",
        "model.xml",
        "model.xml.json",
    ]
    assert sha256_file(vdir / "model.xml") == sha256_file(copy / "pruned.xml")
    assert sha256_file(vdir / "model.onnx") == sha256_file(copy / "pruned.onnx")
    assert 'backend: "openvino"' in (repo / "l5" / "config.pbtxt").read_text()
    assert 'default_model_filename: "model.xml"' in (repo / "l5" / "config.pbtxt").read_text()
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["chosen"] == choice and manifest["served_locally"].startswith("model.onnx through onnxruntime")
    assert run_cli("verify", str(repo)).returncode == 0
    from vib_deploy.triton.server import TritonServer, unavailable

    if unavailable():
        pytest.skip(f"a local Triton cannot start here: {unavailable()}")
    with TritonServer(repo) as server:
        assert "l5" in server.models and "l5-pruned-openvino" not in server.models  # the twin; an IR alone: not here


def test_openvino_runs_the_kept_pixels_as_a_gather_on_axis_1(tmp_path):
    # PixelSelect exports GatherElements (fast on ONNX Runtime); OpenVINO's Gather on axis 1 is the fast form there,
    # so the runner and the IR lower it: same outputs, no GatherElements left
    import onnx

    from tests.conftest import kept_pixel_net
    from vib_deploy.backends.openvino import OpenVinoRunner, lower_row_gathers, save_ir
    from vib_deploy.runs.directory import atomic_write

    model, path = kept_pixel_net(tmp_path)
    ops = lambda m: {op.get_type_name() for op in m.get_ordered_ops()}  # noqa: E731
    read = ov.Core().read_model(str(path))
    assert "GatherElements" in ops(read)
    assert lower_row_gathers(read) == 1
    assert "GatherElements" not in ops(read) and "Gather" in ops(read)
    save_ir(path, tmp_path / "m.xml", lambda name, fn: atomic_write(tmp_path / name, fn))
    assert "GatherElements" not in ops(ov.Core().read_model(str(tmp_path / "m.xml")))
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    runner = OpenVinoRunner(path)
    runner.activate()
    assert np.abs(runner.infer(x) - want).max() <= 1e-6
    # GatherElements whose indices vary by row is not a Gather: left as it is
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("GatherElements", ["x", "i"], ["y"], axis=1)],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])],
        [onnx.numpy_helper.from_array(np.array([[0, 1], [2, 3]], dtype=np.int64), "i")],
    )
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), tmp_path / "rows.onnx")
    varied = ov.Core().read_model(str(tmp_path / "rows.onnx"))
    assert lower_row_gathers(varied) == 0 and "GatherElements" in ops(varied)
