"""Small nets with the structure of well-known classifiers that Torch-Pruning's graph finds hard (issue 15).

Each `build()`-style function returns a fresh net for inputs of shape (1, 16, 16), with BatchNorm statistics
and affine parameters randomised (eval-mode BN is not the identity, so a BN left ungated would show in the
exact-pruning self-check). Loaded by path in the tests: `tests/archnets.py:squeezenet`.

* `squeezenet`: fully convolutional (Fire modules; class scores from a final 1x1 conv, ReLU, global pooling).
* `shufflenet`: ShuffleNet-V2 units (chunk, concat, channel shuffle as view/transpose/view) in the units' forward.
* `shufflenet_modules`: the same with the shuffle as its own module (nn.ChannelShuffle), so it can be ignored alone.
* `densenet`: two dense blocks of three layers (growth 4), each layer reading the concat of all before it;
  `densenet121`: DenseNet-121's four blocks and widths.
* `convnext`: a ConvNeXt block (depthwise conv, LayerNorm over channels in channels-last, MLP, residual).
"""

from __future__ import annotations

import torch
from torch import nn


def _randomise_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(c, generator=generator) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
    return net


def _cbr(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU()] if relu else layers


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1x1(x)), torch.relu(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 12, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            Fire(12, 4, 6),
            Fire(12, 4, 8),
            nn.MaxPool2d(2),
            Fire(16, 6, 8),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Conv2d(16, num_classes, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet-V2's InvertedResidual: stride 1 splits the channels in two; stride 2 runs two branches."""

    def __init__(self, cin: int, cout: int, stride: int, shuffle_module: bool = False):
        super().__init__()
        half = cout // 2
        self.stride = stride
        self.branch1 = (
            nn.Sequential(*_cbr(cin, cin, 3, stride, cin, relu=False), *_cbr(cin, half))
            if stride > 1
            else nn.Sequential()
        )
        self.branch2 = nn.Sequential(
            *_cbr(cin if stride > 1 else half, half), *_cbr(half, half, 3, stride, half, relu=False), *_cbr(half, half)
        )
        self.shuffle = nn.ChannelShuffle(2) if shuffle_module else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return self.shuffle(out) if self.shuffle is not None else channel_shuffle(out, 2)


class ShuffleNet(nn.Module):
    def __init__(self, num_classes: int = 10, shuffle_module: bool = False):
        super().__init__()
        self.conv1 = nn.Sequential(*_cbr(1, 8, 3))
        self.stage2 = nn.Sequential(
            ShuffleUnit(8, 16, 2, shuffle_module),
            ShuffleUnit(16, 16, 1, shuffle_module),
            ShuffleUnit(16, 16, 1, shuffle_module),
        )
        self.conv5 = nn.Sequential(*_cbr(16, 24))
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv5(self.stage2(self.conv1(x))).mean([2, 3]))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(2 * growth), nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(torch.relu(self.norm1(torch.cat(features, 1))))
        return self.conv2(torch.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    def __init__(self, cin: int, layers: int, growth: int):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    """stem conv, then dense blocks `block1`, `block2`, ... with a transition (BN-ReLU-1x1 conv halving the
    channels-avg pool) `transition1`, ... between them, then BN-ReLU, global pooling and a Linear."""

    def __init__(self, num_classes: int = 10, growth: int = 4, blocks: tuple[int, ...] = (3, 3), stem: int = 8):
        super().__init__()
        self.conv0 = nn.Conv2d(1, stem, 3, padding=1, bias=False)
        self.stages = ["conv0"]
        c = stem
        for i, layers in enumerate(blocks, 1):
            self.add_module(f"block{i}", DenseBlock(c, layers, growth))
            self.stages.append(f"block{i}")
            c += layers * growth
            if i < len(blocks):
                self.add_module(
                    f"transition{i}",
                    nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)),
                )
                self.stages.append(f"transition{i}")
                c //= 2
        self.norm5 = nn.BatchNorm2d(c)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.classifier(torch.relu(self.norm5(x)).mean([2, 3]))


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pwconv1, self.pwconv2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        return x + self.pwconv2(torch.nn.functional.gelu(self.pwconv1(y))).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 4, stride=4)
        self.block = ConvNeXtBlock(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean([2, 3]))


def squeezenet(num_classes: int = 10) -> nn.Module:
    return _randomise_bn(SqueezeNet(num_classes))


def shufflenet(num_classes: int = 10) -> nn.Module:
    return _randomise_bn(ShuffleNet(num_classes))


def shufflenet_modules(num_classes: int = 10) -> nn.Module:
    return _randomise_bn(ShuffleNet(num_classes, shuffle_module=True))


def densenet(num_classes: int = 10) -> nn.Module:
    return _randomise_bn(DenseNet(num_classes))


def densenet121(num_classes: int = 10) -> nn.Module:
    """DenseNet-121's blocks and widths (6-12-24-16 layers, growth 32, stem 64) on one-channel images."""
    return _randomise_bn(DenseNet(num_classes, growth=32, blocks=(6, 12, 24, 16), stem=64))


def convnext(num_classes: int = 10) -> nn.Module:
    return ConvNeXt(num_classes)
