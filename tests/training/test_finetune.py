"""The finetune stage (tests on tiny real runs: e2e): off changes nothing, on trains the pruned net (best validation epoch, pruned weights
included), keeps the kept pixels, is cached, resumes after an interruption to the same bits, and is what
export and bench use. Real MNIST, a few hundred images, one thread."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, InterruptAfter
from vib_deploy import __version__
from vib_deploy.config import load_config
from vib_deploy.errors import UserError
from vib_deploy.model.layers import PixelSelect
from vib_deploy.nets import load_model
from vib_deploy.pipeline import _input_hashes, run_pipeline
from vib_deploy.records import ExportRecord
from vib_deploy.runs.directory import RunDir, stage_key
from vib_deploy.stages import Context, get_stage
from vib_deploy.stages.registry import enabled
from vib_deploy.training.loop import TrainSpec, train

TINY = [
    "data.train_limit=700",
    "data.val_size=200",
    "data.test_limit=300",
    "train.dense.epochs=1",
    "train.vib.epochs=2",
    "train.vib.kl_factor=1e-3",
    "bench.rounds=1",
    "bench.iters_per_round=2",
    "bench.warmup=0",
    "bench.batch_sizes=[1]",
    "bench.memory=false",
    "bench.backends=[onnxruntime,torch]",
    "train.finetune.epochs=0",
]  # the LeNet pipelines fine-tune by default; these tests turn it on with ON
ON = ["train.finetune.epochs=3", "train.finetune.lr=3e-4"]


def _config(*extra: str):
    return load_config(ROOT / "pipelines/mnist-lenet300.yaml", [*TINY, *extra])


def _lines(echoed: list[str], tag: str) -> list[str]:
    return [line.split()[1] for line in echoed if line.startswith(tag)]


def _run(config, run_dir, **kw) -> list[str]:
    echoed: list[str] = []
    torch.set_num_threads(1)
    run_pipeline(config, run_dir, echo=echoed.append, **kw)
    return echoed


@pytest.fixture(scope="module")
def off_run(tmp_path_factory, mnist_root):
    run_dir = tmp_path_factory.mktemp("ft") / "off"
    _run(_config(), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def on_run(off_run, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ft") / "on"
    shutil.copytree(off_run, run_dir)
    echoed = _run(_config(*ON), run_dir)
    return run_dir, echoed


def _keys(run_dir) -> dict[str, str]:
    return {s: e["key"] for s, e in json.loads((run_dir / "manifest.json").read_text())["stages"].items()}


@pytest.mark.e2e
def test_off_is_no_stage_and_no_input(off_run):
    config = _config()
    assert not enabled("finetune", config) and "finetune" not in _keys(off_run)
    assert not (off_run / "finetuned.pt").exists()
    run = RunDir(off_run)
    # export's key is made of exactly the inputs it had before the finetune stage existed
    export = get_stage("export")
    inputs = _input_hashes(Context(run, config), export)
    manifest = run.manifest()
    old = {
        n: manifest["artifacts"][n]["sha256"]
        for s in ("train-dense", "prune")
        for n in manifest["stages"][s]["outputs"]
    }
    assert {k: v for k, v in inputs.items() if not k.startswith("data:")} == old
    assert _keys(off_run)["export"] == stage_key(export.section(config), inputs, __version__)
    assert all(
        v.model_file in ("dense.pt", "pruned.pt", "pruned_reduced.pt") for v in ExportRecord.read(run).variants.values()
    )
    metrics = run.read_json("metrics.json")
    assert metrics["deployed"] == "pruned.pt" and metrics["finetuned"] is None
    assert run.read_json("bench.json")["model_files"]["pruned"] == "pruned.pt"


@pytest.mark.e2e
def test_off_run_rerun_is_all_cached_and_on_reruns_from_finetune(off_run, on_run):
    assert _lines(_run(_config(), off_run), "[run]") == []
    run_dir, echoed = on_run
    assert _lines(echoed, "[cached]") == ["train-dense", "train-vib", "prune"]
    assert _lines(echoed, "[run]") == ["finetune", "export", "bench", "report"]
    assert _lines(_run(_config(*ON), run_dir), "[run]") == []  # cached
    keys_off, keys_on = _keys(off_run), _keys(run_dir)
    assert keys_on["prune"] == keys_off["prune"] and keys_on["export"] != keys_off["export"]


@pytest.mark.e2e
def test_on_exports_and_times_the_finetuned_net(on_run):
    run_dir, _ = on_run
    run = RunDir(run_dir)
    export = ExportRecord.read(run).variants
    assert (
        export["pruned"].model_file == "finetuned.pt" and export["pruned_reduced"].model_file == "finetuned_reduced.pt"
    )
    assert run.read_json("bench.json")["model_files"] == {
        "dense": "dense.pt",
        "pruned": "finetuned.pt",
        "pruned_reduced": "finetuned_reduced.pt",
    }
    # pruned.onnx is the fine-tuned net: its logits are finetuned.pt's, not pruned.pt's
    import onnxruntime as ort

    data = Context(run, _config(*ON)).splits()
    sess = ort.InferenceSession(str(run_dir / "pruned.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = torch.as_tensor(sess.run(None, {sess.get_inputs()[0].name: data.x_test[:200]})[0])
    with torch.no_grad():
        tuned = load_model(run_dir / "finetuned.pt")(torch.as_tensor(data.x_test[:200]))
        pruned = load_model(run_dir / "pruned.pt")(torch.as_tensor(data.x_test[:200]))
    assert (onnx_logits - tuned).abs().max() < 1e-4
    tune = run.read_json("finetune.json")
    if tune["best_epoch"] > 0:  # the weights moved: the ONNX model is not the pruned one
        assert (onnx_logits - pruned).abs().max() > 1e-3
    metrics = run.read_json("metrics.json")
    assert metrics["deployed"] == "finetuned.pt" and metrics["finetuned"]["error"] == tune["test_error"]
    assert "fine-tuned" in (run_dir / "report.md").read_text()


@pytest.mark.e2e
def test_kept_pixels_unchanged_and_reduced_net_is_the_finetuned_one(on_run):
    run_dir, _ = on_run
    kept = RunDir(run_dir).read_json("prune.json")["kept_pixels"]
    tuned, reduced = load_model(run_dir / "finetuned.pt"), load_model(run_dir / "finetuned_reduced.pt")
    select = [m for m in tuned if isinstance(m, PixelSelect)]
    assert len(select) == 1 and select[0].indices.tolist() == kept
    assert not any(isinstance(m, PixelSelect) for m in reduced)
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(tuned(x), reduced(x.flatten(1)[:, kept]))


@pytest.mark.e2e
def test_validation_chose_the_epoch(on_run):
    run_dir, _ = on_run
    tune = RunDir(run_dir).read_json("finetune.json")
    vals = [1.0 - tune["pruned_val_error"]] + [h["val_acc"] for h in tune["history"]]
    assert tune["best_epoch"] == int(np.argmax(vals)) and len(tune["history"]) == 3
    assert tune["val_error"] == pytest.approx(1.0 - vals[tune["best_epoch"]], abs=1e-9)


@pytest.mark.e2e
def test_interrupted_finetune_resumes_to_the_same_bits(off_run, on_run, tmp_path):
    run_dir, _ = on_run
    copy = tmp_path / "killed"
    shutil.copytree(off_run, copy)  # as on_run started: every stage before finetune done
    steps = 5 + 1  # 500 training images / batch 100 = 5 steps an epoch: stop in epoch 2
    with pytest.raises(UserError, match="finetune interrupted at epoch 2"):
        _run(_config(*ON), copy, progress=InterruptAfter(steps))
    assert "finetune" not in _keys(copy) and (copy / "finetune.ckpt").exists()
    echoed = _run(_config(*ON), copy)
    assert _lines(echoed, "[run]") == ["finetune", "export", "bench", "report"]
    tune, ref = RunDir(copy).read_json("finetune.json"), RunDir(run_dir).read_json("finetune.json")
    assert tune["resumed_from_epoch"] == 1 and tune["history"] == ref["history"]
    a, b = load_model(run_dir / "finetuned.pt").state_dict(), load_model(copy / "finetuned.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.e2e
def test_force_or_single_run_of_an_off_stage_is_a_clear_error(off_run):
    with pytest.raises(UserError, match="stage finetune is off"):
        run_pipeline(_config(), off_run, force="finetune", echo=lambda s: None)


# -- train(): the starting weights as epoch 0 -------------------------------------------------------------
def _data(n=300):
    rng = np.random.default_rng(0)
    x = rng.random((n, 20), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    return SimpleNamespace(x_train=x[:200], y_train=y[:200], x_val=x[200:], y_val=y[200:])


@pytest.mark.parametrize("lr,start_wins", [(10.0, True), (1e-2, False)])
def test_keep_start_keeps_the_starting_weights_unless_an_epoch_beats_them(tmp_path, lr, start_wins):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    data = _data()
    # a good start: fit first, then fine-tune with a lr that ruins it (start wins) or one that helps
    train(net, TrainSpec("pre", "k", 20, 1e-2, 50, 0, torch.device("cpu")), data, RunDir(tmp_path / "pre"))
    start = {k: v.clone() for k, v in net.state_dict().items()}
    result = train(
        net,
        TrainSpec("finetune", "k", 3, lr, 50, 0, torch.device("cpu"), select_best=True, keep_start=True),
        data,
        RunDir(tmp_path / "ft"),
    )
    vals = [h["val_acc"] for h in result.history]
    assert result.start_val_acc is not None
    assert (result.best_epoch == 0) == start_wins == (max(vals) <= result.start_val_acc)
    same = all(torch.equal(start[k], v) for k, v in net.state_dict().items())
    assert same == start_wins


@pytest.mark.e2e
def test_ship_says_the_shipped_pruned_model_is_the_finetuned_one(on_run, tmp_path):
    from vib_deploy.runs.directory import sha256_file
    from vib_deploy.triton.repository import package

    run_dir, _ = on_run
    package(run_dir, tmp_path / "models", name="ft")
    manifest = json.loads((tmp_path / "models" / "ft-pruned" / "1" / "manifest.json").read_text())
    assert sha256_file(tmp_path / "models" / "ft-pruned" / "1" / "model.onnx") == sha256_file(run_dir / "pruned.onnx")
    assert manifest["metrics"]["error"] == RunDir(run_dir).read_json("finetune.json")["test_error"]


# -- peers that take VIB's architecture (they live beside a VIB run, like compare's) ----------------------
@pytest.mark.e2e
@pytest.mark.parametrize("method", ["scratch", "random-same"])
def test_scratch_and_same_width_peers_have_vibs_architecture(off_run, tmp_path, method):
    from vib_deploy.studies.compare import run_peer

    vib_dir = tmp_path / "vib"
    shutil.copytree(off_run, vib_dir)
    torch.set_num_threads(1)
    peer = run_peer(_config(), RunDir(vib_dir), method, echo=lambda s: None)
    vib, got = RunDir(vib_dir).read_json("prune.json"), peer.read_json("prune.json")
    assert got["architecture"] == vib["architecture"] and got["pruned"]["flops"] == vib["pruned"]["flops"]
    assert len(got["kept_pixels"]) == len(vib["kept_pixels"])
    if method == "scratch":
        assert got["kept_pixels"] == vib["kept_pixels"]
    else:  # VIB's pixel count, this criterion's pixels (unit-tested in test_peers: seeded, not L1's)
        assert got["kept_pixels"] == sorted(
            torch.randperm(784, generator=torch.Generator().manual_seed(0))[: len(got["kept_pixels"])].tolist()
        )
    budget = {"scratch": 1 + 2, "random-same": 2}[method]  # dense + VIB epochs from scratch; VIB epochs after dense
    assert got["finetune_epochs"] == got["budget_epochs"] == budget and got["sparsity_epochs"] == 0
    if method == "scratch":  # re-initialised: nothing of the VIB weights
        a, b = load_model(vib_dir / "pruned.pt"), load_model(peer.path / "pruned.pt")
        assert a[2].weight.shape == b[2].weight.shape and not torch.allclose(a[2].weight, b[2].weight)
    assert {"pruned.onnx", "pruned_reduced.onnx", "bench.json"} <= {p.name for p in peer.path.iterdir()}


@pytest.mark.e2e
def test_peer_of_a_finetuned_vib_run_gets_its_epochs_and_runs_without_the_stage(on_run, tmp_path):
    from vib_deploy.studies.compare import run_peer

    run_dir, _ = on_run
    vib_dir = tmp_path / "vib"
    shutil.copytree(run_dir, vib_dir)
    torch.set_num_threads(1)
    peer = run_peer(_config(*ON), RunDir(vib_dir), "l1-same", echo=lambda s: None)
    got = peer.read_json("prune.json")
    assert got["budget_epochs"] == got["finetune_epochs"] == 2 + 3  # VIB's epochs + its fine-tune epochs
    assert got["architecture"] == RunDir(vib_dir).read_json("prune.json")["architecture"]
    assert "finetune" not in json.loads((peer.path / "manifest.json").read_text())["stages"]
    assert ExportRecord.read(peer).variants["pruned"].model_file == "pruned.pt"  # the peer's own fine-tuned net


def test_the_finetune_command_of_a_run_with_it_off_is_exit_2(tmp_path):
    from tests.conftest import run_cli

    off = ("--set", "train.finetune.epochs=0")  # the LeNet pipelines fine-tune by default
    assert run_cli("init", "pipelines/mnist-lenet300.yaml", "--run-dir", str(tmp_path / "r"), *off).returncode == 0
    for args in (
        ("finetune", str(tmp_path / "r")),
        ("run", "pipelines/mnist-lenet300.yaml", "--run-dir", str(tmp_path / "r"), "--force", "finetune", *off),
    ):
        proc = run_cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert (
            proc.stderr.strip().splitlines()[-1]
            == "error: stage finetune is off in this config (train.finetune.epochs: 0)"
        )


@pytest.mark.e2e
def test_quantize_of_a_finetuned_run_takes_the_finetuned_net(on_run, tmp_path):
    from vib_deploy.pipeline import run_single

    run_dir, _ = on_run
    copy = tmp_path / "q"
    shutil.copytree(run_dir, copy)
    torch.set_num_threads(1)
    run_single(copy, "quantize", echo=lambda s: None, overrides=["quantize.enabled=true"])
    quant = RunDir(copy).read_json("quantize.json")
    assert quant["pruned"]["fp32_error"] == RunDir(copy).read_json("finetune.json")["test_error"]
    # keyed on the fine-tuned net: its inputs include finetuned.pt
    manifest = RunDir(copy).manifest()
    assert "finetuned.pt" in manifest["stages"]["quantize"]["inputs"]
