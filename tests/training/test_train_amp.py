"""train.device / train.amp: amp off is bitwise the plain fp32 loop; bf16/fp16 autocast paths run; CUDA checks (GPU-marked)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import run_cli
from vib_deploy.config import parse_config
from vib_deploy.errors import UserError
from vib_deploy.runs.directory import RunDir
from vib_deploy.training.loop import TrainSpec, resolve_device, train
from vib_deploy.zoo import gated_model, strip_gates


def dense_model(name: str) -> nn.Sequential:
    return strip_gates(gated_model(name))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    return SimpleNamespace(x_train=x[:250], y_train=y[:250], x_val=x[250:], y_val=y[250:])


def _spec(**kw):
    base = dict(stage="train-dense", key="k", epochs=1, lr=1e-3, batch_size=50, seed=0, device=torch.device("cpu"))
    return TrainSpec(**{**base, **kw})


def _reference_epoch(model: nn.Module, data, spec: TrainSpec) -> None:
    """The fp32 training loop as it was before AMP existed: one epoch of Adam on shuffled batches."""
    opt = torch.optim.Adam([{"params": list(model.parameters()), "lr": spec.lr, "weight_decay": spec.weight_decay}])
    gen = torch.Generator().manual_seed(spec.seed)
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    perm = torch.randperm(len(x), generator=gen)
    model.train()
    for i in range(0, len(x), spec.batch_size):
        idx = perm[i : i + spec.batch_size]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_amp_off_is_bitwise_the_fp32_loop(tmp_path, name):
    torch.manual_seed(0)
    model = dense_model(name)
    reference = dense_model(name)
    reference.load_state_dict(model.state_dict())
    train(model, _spec(amp="off"), _data(), RunDir(tmp_path))
    _reference_epoch(reference, _data(), _spec())
    for (k, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_paths_train_on_cpu(tmp_path, amp):
    torch.manual_seed(0)
    fp32 = dense_model("lenet5")
    low = dense_model("lenet5")
    low.load_state_dict(fp32.state_dict())
    train(fp32, _spec(), _data(), RunDir(tmp_path / "fp32"))
    result = train(low, _spec(amp=amp, epochs=2), _data(), RunDir(tmp_path / amp))
    assert all(np.isfinite(r["loss"]) for r in result.history)
    assert all(p.dtype == torch.float32 for p in low.parameters())  # autocast: fp32 master weights
    ckpt = torch.load(tmp_path / amp / "train-dense.ckpt", weights_only=True)
    assert ("scaler" in ckpt) == (amp == "fp16")  # fp16's loss scale is resumed with everything else


def test_bf16_autocast_changes_the_maths_within_bounds(tmp_path):
    torch.manual_seed(0)
    fp32 = dense_model("lenet300")
    bf16 = dense_model("lenet300")
    bf16.load_state_dict(fp32.state_dict())
    train(fp32, _spec(), _data(), RunDir(tmp_path / "a"))
    train(bf16, _spec(amp="bf16"), _data(), RunDir(tmp_path / "b"))
    diffs = [float((a - b).detach().abs().max()) for a, b in zip(fp32.parameters(), bf16.parameters())]
    assert max(diffs) > 0  # the autocast context was really entered
    assert max(diffs) < 5 * 1e-3 * 5  # 5 Adam steps of lr 1e-3 move a weight by at most ~lr each


@pytest.mark.parametrize(
    "device,ok",
    [
        ("auto", True),
        ("cpu", True),
        ("cuda", True),
        ("cuda:1", True),
        ("gpu", False),
        ("cuda:", False),
        ("cuda:x", False),
        ("CPU", False),
    ],
)
def test_device_values(device, ok):
    tree = {"name": "t", "model": {"name": "lenet300"}, "train": {"device": device}}
    if ok:
        assert parse_config(tree, "p.yaml").train.device == device
    else:
        with pytest.raises(UserError, match=r"p.yaml: key 'train.device': .*auto, cpu, cuda or cuda:N"):
            parse_config(tree, "p.yaml")


def test_amp_values():
    with pytest.raises(UserError, match="train.amp"):
        parse_config({"name": "t", "model": {"name": "lenet300"}, "train": {"amp": "fp8"}}, "p.yaml")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_on_cpu_machine_is_a_user_error(name):
    with pytest.raises(UserError, match=f"train.device={name} but torch sees no CUDA device"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_cli_cuda_on_cpu_machine_exits_2(mnist_root, tmp_path):
    proc = run_cli(
        "run",
        "pipelines/mnist-lenet300.yaml",
        "--run-dir",
        str(tmp_path / "r"),
        "--set",
        "train.device=cuda",
        "--set",
        "data.train_limit=600",
        "--set",
        "data.val_size=100",
        "--set",
        "data.test_limit=100",
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert lines == [f"error: train.device=cuda but torch sees no CUDA device (torch {torch.__version__})"], proc.stderr


def test_amp_is_keyed_only_when_set():
    from vib_deploy.stages import get_stage

    base = {"name": "t", "model": {"name": "lenet300"}}
    dense = get_stage("train-dense")
    off = dense.section(parse_config(base, "p"))
    assert "amp" not in off  # runs made before train.amp existed keep their cache keys
    on = dense.section(parse_config({**base, "train": {"amp": "bf16"}}, "p"))
    assert on["amp"] == "bf16"


# -- on a GPU ------------------------------------------------------------------------------------------
@pytest.mark.gpu
@cuda
def test_cuda_fp32_matches_cpu(tmp_path):
    """Tolerance: logits within 1e-2 x max(1, |logit|) after 5 Adam steps, TF32 off (reduction order differs)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _cuda_vs_cpu(tmp_path)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _cuda_vs_cpu(tmp_path):
    torch.manual_seed(0)
    cpu = dense_model("lenet5")
    gpu = dense_model("lenet5")
    gpu.load_state_dict(cpu.state_dict())
    train(cpu, _spec(), _data(), RunDir(tmp_path / "cpu"))
    train(gpu, _spec(device=torch.device("cuda")), _data(), RunDir(tmp_path / "gpu"))
    x = torch.as_tensor(_data().x_val)
    a, b = cpu.eval()(x), gpu.cpu().eval()(x)
    bound = 1e-2 * max(1.0, float(a.abs().max()))
    assert float((a - b).abs().max()) <= bound
    assert gpu[0].weight.is_contiguous()  # channels_last is undone after training


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_amp_trains(tmp_path, amp):
    torch.manual_seed(0)
    model = dense_model("lenet5")
    result = train(model, _spec(device=torch.device("cuda"), amp=amp, epochs=2), _data(), RunDir(tmp_path))
    assert all(np.isfinite(r["loss"]) for r in result.history)
    assert result.history[-1]["loss"] < result.history[0]["loss"] + 0.5
