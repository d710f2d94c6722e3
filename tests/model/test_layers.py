"""Models as data: save/load round trips, FLOPs and parameter counts (the paper's conventions)."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.model.layers import PixelSelect, count_flops, count_params, describe
from vib_deploy.nets import load_model, save_model
from vib_deploy.zoo import gated_model, strip_gates


def _mlp(widths):
    layers = [nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def test_paper_lenet300_figures():
    # the paper's 97-71-33 LeNet-300-100: 19.1 KFLOPs and 38,696 bytes (fp32 weights + biases)
    pruned = _mlp([97, 71, 33, 10])
    assert count_flops(pruned, (97,)) == 19120
    assert count_params(pruned) * 4 == 38696
    dense = strip_gates(gated_model("lenet300"))
    assert count_flops(dense, (1, 28, 28)) == 2 * (784 * 300 + 300 * 100 + 100 * 10)
    assert count_params(dense) == 266610


def test_lenet5_flops():
    dense = strip_gates(gated_model("lenet5"))
    macs = 20 * 24 * 24 * 25 + 50 * 8 * 8 * 20 * 25 + 800 * 500 + 500 * 10
    assert count_flops(dense, (1, 28, 28)) == 2 * macs


def test_save_load_roundtrip_in_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), PixelSelect(torch.tensor([3, 5, 700])), nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)
    )
    path = tmp_path / "m.pt"
    save_model(model, path)
    x = torch.rand(3, 1, 28, 28)
    expected = model.eval()(x)
    assert torch.equal(load_model(path)(x), expected)
    code = (
        "import torch,sys; from vib_deploy.nets import load_model; m=load_model(sys.argv[1]);"
        "torch.manual_seed(0); print(describe(m) if False else m(torch.load(sys.argv[2])).sum().item())"
    )
    torch.save(x, tmp_path / "x.pt")
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(tmp_path / "x.pt")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == pytest.approx(expected.sum().item(), rel=1e-6)
    assert describe(load_model(path))[1] == {"type": "select", "count": 3}


def test_load_garbage_is_user_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a loadable"):
        load_model(bad)
    truncated = tmp_path / "t.pt"
    save_model(_mlp([4, 3, 2]), truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(UserError):
        load_model(truncated)
