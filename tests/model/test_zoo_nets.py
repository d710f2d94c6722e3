"""Fast checks of the plain zoo nets (ResNet-20/56, small MobileNet, VGG-16), the user model file
tests/user_models/branchy.py and the random nets of tests/netgen.py: shapes, sizes, and that
Torch-Pruning's DependencyGraph traces every one of them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from hypothesis import given, settings
from torch import nn

from tests.netgen import INPUT_SHAPE, random_nets
from vib_deploy.zoo.mobilenet import mobilenet_small
from vib_deploy.zoo.resnet import resnet20, resnet56
from vib_deploy.zoo.vgg import vgg16

HERE = Path(__file__).resolve().parents[1]  # tests/

FACTORIES = {
    "resnet20": resnet20,
    "resnet56": resnet56,
    "mobilenet_small": mobilenet_small,
    "vgg16_w0.125": lambda **kw: vgg16(width=0.125, **kw),
}


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _convs(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


def _groups(net: nn.Module, x: torch.Tensor) -> list:
    dg = tp.DependencyGraph().build_dependency(net, example_inputs=x)
    return list(dg.get_all_groups())


def _load_branchy():
    spec = importlib.util.spec_from_file_location("user_branchy", HERE / "user_models" / "branchy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", FACTORIES)
def test_output_shape(name):
    torch.manual_seed(0)
    net = FACTORIES[name]().eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    net = FACTORIES[name](num_classes=7, in_channels=3).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_resnets_also_take_28x28():
    with torch.no_grad():
        assert resnet20().eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


# Parameter counts of the option-B CIFAR ResNets (bias-free convs, BN = 2 params/channel), with C input
# channels and K classes, n blocks per stage:
#   stem 9*16*C + 32
#   stage 1: n * (2*9*16*16 + 2*32)                                        = n * 4672
#   stage 2: (9*16*32 + 9*32*32 + 2*64 + 16*32 + 64) + (n-1) * (2*9*32*32 + 2*64) = 14528 + (n-1) * 18560
#   stage 3: (9*32*64 + 9*64*64 + 2*128 + 32*64 + 128) + (n-1) * (2*9*64*64 + 2*128) = 57728 + (n-1) * 73984
#   head 64*K + K
# ResNet-20 (n=3), C=1, K=10: 144+32 + 14016 + 51648 + 205696 + 650 = 272186 (C=3: +288 = 272474, i.e. the
# well-known 269722 of option A plus 2752 for the two 1x1-conv+BN shortcuts: the paper's "0.27M").
# ResNet-56 (n=9), C=1, K=10: 176 + 42048 + 163008 + 649600 + 650 = 855482 (C=3: 855770 = 853018 + 2752, "0.85M").
@pytest.mark.parametrize(
    "factory, c, expected", [(resnet20, 1, 272186), (resnet20, 3, 272474), (resnet56, 1, 855482), (resnet56, 3, 855770)]
)
def test_resnet_param_counts(factory, c, expected):
    assert _n_params(factory(in_channels=c)) == expected


@pytest.mark.parametrize("factory, n_3x3", [(resnet20, 19), (resnet56, 55)])
def test_resnet_conv_counts(factory, n_3x3):
    convs = _convs(factory())
    assert sum(c.kernel_size == (3, 3) for c in convs) == n_3x3
    shortcuts = [c for c in convs if c.kernel_size == (1, 1)]
    assert len(shortcuts) == 2 and all(c.stride == (2, 2) for c in shortcuts)
    assert len(convs) == n_3x3 + 2


def test_vgg16_shape_of_the_paper():
    net = vgg16()
    convs = _convs(net)
    assert len(convs) == 13 and all(c.kernel_size == (3, 3) for c in convs)
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 13
    assert [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)] == [
        (512, 512),
        (512, 10),
    ]
    assert _n_params(net) == 14989770  # 14.99 M with 1 input channel
    assert [c.out_channels for c in _convs(vgg16(width=0.125))][:3] == [8, 8, 16]


def test_mobilenet_small_is_depthwise_separable():
    convs = _convs(mobilenet_small())
    depthwise = [c for c in convs if c.groups > 1]
    assert len(depthwise) == 5 and all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    assert [c.out_channels for c in convs if c.kernel_size == (1, 1)] == [32, 64, 64, 128, 128]


@pytest.mark.parametrize("name", FACTORIES)
def test_torch_pruning_traces_zoo(name):
    torch.manual_seed(0)
    assert len(_groups(FACTORIES[name]().eval(), torch.randn(1, 1, 32, 32))) > 0


def test_user_branchy_model():
    torch.manual_seed(0)
    net = _load_branchy().build(num_classes=10, width=8).eval()
    assert any(c.groups == c.in_channels == c.out_channels > 1 for c in _convs(net))  # depthwise
    assert any(1 < c.groups < c.in_channels for c in _convs(net))  # grouped
    assert isinstance(net.head, nn.Linear)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert net(x).shape == (2, 10)
    assert len(_groups(net, x[:1])) > 0


@settings(max_examples=10, deadline=None)
@given(random_nets())
def test_netgen_draws_run_and_trace(net):
    net.eval()
    x = torch.randn(2, *INPUT_SHAPE)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, net.num_classes) and torch.isfinite(y).all()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not torch.allclose(m.running_var, torch.ones_like(m.running_var)) for m in bns)
    assert len(_groups(net, x[:1])) > 0


def test_netgen_is_deterministic_given_the_draw():
    from hypothesis import find

    net = find(random_nets(), lambda n: len(n.specs) >= 2)
    from tests.netgen import RandomNet

    twin = RandomNet(net.stem[0].out_channels, net.specs, net.num_classes, net.seed, net.conv_head)
    for a, b in zip(net.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(a, b)
