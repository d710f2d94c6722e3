"""check_exact: float32 on every image, float64 on a fixed sample that still catches one inexact unit."""

import pytest
import torch
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.model.factory import build_net
from vib_deploy.model.gated import GatedNet
from vib_deploy.model.graph import plan_groups
from vib_deploy.prune.groups import _random_gates, prune_groups
from vib_deploy.prune.result import FLOAT64_SAMPLES, check_exact, float64_sample
from vib_deploy.stages.sources import MODULE_ZOO

SHAPE = (1, 32, 32)


def test_float64_sample_is_fixed_and_spread():
    a, b = float64_sample(10_000), float64_sample(10_000)
    assert torch.equal(a, b) and len(a) == FLOAT64_SAMPLES
    assert int(a[0]) == 0 and int(a[-1]) == 9_999 and bool((a.diff() > 0).all())
    assert torch.equal(float64_sample(100), torch.arange(100))  # a small set is checked whole


@pytest.fixture(scope="module")
def pruned_resnet():
    torch.manual_seed(0)
    net = build_net(MODULE_ZOO["resnet20"], {})
    gated = GatedNet(net, plan_groups(net, SHAPE).gated).double().eval()
    _random_gates(gated, torch.Generator().manual_seed(0))
    result, _ = prune_groups(gated, SHAPE)
    return gated, result, torch.rand(600, *SHAPE)


def test_exact_prune_passes_and_says_what_was_checked(pruned_resnet):
    gated, result, x = pruned_resnet
    y = torch.arange(len(x)) % 10
    info = check_exact(result, gated, x, tolerance=1e-5, y=y)
    assert info["samples"] == 600 and info["float64_samples"] == FLOAT64_SAMPLES
    # the error it reports is the float32 pruned net's, as evaluate would give it
    import copy

    from vib_deploy.training.evaluate import predict

    assert info["error"] == int((predict(copy.deepcopy(result.model).float(), x).argmax(1) != y).sum()) / len(x)
    assert info["max_abs_diff_float64"] <= 1e-9 * info["logit_scale"]
    assert info["argmax_agreement"] == 1.0


def test_sampled_float64_catches_one_inexact_unit(pruned_resnet):
    gated, result, x = pruned_resnet
    broken = result.model
    layer = next(m for m in broken.modules() if isinstance(m, nn.BatchNorm2d))  # one group's first layer
    with torch.no_grad():
        layer.bias[0] += 1e-7  # one unit of one group, far below the float32 tolerance
    try:
        with pytest.raises(UserError, match=f"not exact in float64: .* on {FLOAT64_SAMPLES} images"):
            check_exact(result, gated, x, tolerance=1e-5)
    finally:
        with torch.no_grad():
            layer.bias[0] -= 1e-7
