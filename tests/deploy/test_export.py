"""ONNX export: opset, dynamic batch, checker, parity with torch through ONNX Runtime."""

import numpy as np
import pytest
import torch

from vib_deploy.deploy.export import export_onnx, onnx_summary, parity
from vib_deploy.errors import UserError
from vib_deploy.model.vib import gates
from vib_deploy.prune.sequential import prune_sequential
from vib_deploy.zoo import gated_model, strip_gates


@pytest.fixture(scope="module")
def pruned_lenet5():
    torch.manual_seed(0)
    model = gated_model("lenet5").eval()
    with torch.no_grad():
        for g in gates(model):
            g.mu.copy_(torch.randn(g.units))
            g.logD.copy_(torch.where(torch.rand(g.units) < 0.5, 4.0, -9.0))
    return prune_sequential(model, (1, 28, 28)).model.float()


def test_export_dynamic_batch_and_parity(tmp_path, pruned_lenet5):
    path = tmp_path / "m.onnx"
    export_onnx(pruned_lenet5, path, (1, 28, 28), opset=18, metadata={"vib_deploy.variant": "pruned"})
    info = onnx_summary(path)
    assert info["opset"] >= 17
    assert info["inputs"]["input"][1:] == [1, 28, 28] and isinstance(info["inputs"]["input"][0], str)
    assert info["metadata"]["vib_deploy.variant"] == "pruned"
    x = np.random.default_rng(0).random((257, 1, 28, 28), dtype=np.float32)  # odd batch: the axis is dynamic
    result = parity(path, pruned_lenet5, x, tolerance=1e-4, min_agreement=0.999)
    assert result["max_abs_diff"] <= 1e-4 and result["argmax_agreement"] >= 0.999


def test_kept_pixels_export_as_gather_elements(tmp_path):
    # ONNX Runtime copies a Gather on axis 1 one float at a time (docs/cpu.md, "The kept-pixel Gather"): the pixel
    # selection must export as GatherElements, with a dynamic batch, and select exactly the kept pixels
    import onnx

    from tests.conftest import kept_pixel_net

    model, path = kept_pixel_net(tmp_path)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "GatherElements" in ops and "Gather" not in ops, ops
    for batch in (1, 3):
        x = np.random.default_rng(batch).random((batch, 1, 28, 28), dtype=np.float32)
        assert parity(path, model, x, tolerance=1e-6, min_agreement=1.0)["max_abs_diff"] <= 1e-6
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model[1](x.flatten(1)), x.flatten(1)[:, [3, 7, 100, 101, 783]])


def test_parity_failure_is_reported(tmp_path):
    model = strip_gates(gated_model("lenet300")).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, path, (1, 28, 28), opset=18)
    with torch.no_grad():
        model[-1].bias.add_(0.5)  # the torch model no longer matches the file
    with pytest.raises(UserError, match="differs from torch"):
        parity(path, model, np.zeros((4, 1, 28, 28), np.float32), 1e-4, 0.999)


def test_export_failure_is_user_error(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow cannot be exported
                return x
            return -x

    with pytest.raises(UserError, match="ONNX export of m.onnx failed"):
        export_onnx(Bad(), tmp_path / "m.onnx", (3,), opset=18)
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.iterdir())


def test_exports_share_one_torchlib_registry_and_write_the_same_bytes(tmp_path, monkeypatch):
    from torch.onnx._internal.exporter import _registration

    import vib_deploy.deploy.export as export

    built = []
    original = _registration.ONNXRegistry.__dict__["from_torchlib"].__func__

    def counting(cls, opset_version=18):
        built.append(opset_version)
        return original(cls, opset_version=opset_version)

    monkeypatch.setattr(_registration.ONNXRegistry, "from_torchlib", classmethod(counting))
    monkeypatch.setattr(export, "_REGISTRIES", {})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    for name in ("a.onnx", "b.onnx"):
        export_onnx(model, tmp_path / name, (1, 4, 4), opset=18)
    assert built == [18]  # the second export reused the first one's registry
    assert _registration.ONNXRegistry.__dict__["from_torchlib"].__func__ is counting  # torch's own is back after
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
