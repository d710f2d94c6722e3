"""Hypothesis strategies that draw small random CNNs for property tests of gate insertion and pruning.

`random_nets()` draws a `RandomNet`: a stem conv-BN-ReLU (1 -> c channels), 1..4 blocks drawn from

* "residual": conv3x3-BN-ReLU-conv3x3-BN + identity, ReLU (keeps the channels),
* "depthwise": depthwise conv3x3 (groups = channels) + BN + ReLU, pointwise 1x1 conv + BN, ReLU,
* "concat": a 1x1 branch and a 3x3 branch (each conv-BN-ReLU), concatenated on dim 1,
* "grouped": conv3x3 with groups in {2, 4} (1 < groups < channels, dividing in and out) + BN + ReLU,
* "plain": conv3x3-BN-ReLU,
* "dense": two DenseNet layers (BN-ReLU-conv1x1-BN-ReLU-conv3x3, `growth` channels each), each reading the
  concat of the block input and the earlier layers' outputs; the block returns the concat of all three,

then a head named `head`: global average pooling and a Linear, or (`conv_head`, fully convolutional like
SqueezeNet) a 1x1 conv to the classes, ReLU and global average pooling. Channel counts stay in 2..14.
Inputs are (B, *INPUT_SHAPE). The net is a pure function of the draw: its weights come from
torch.manual_seed(seed) with a drawn seed (inside fork_rng, so the global RNG is untouched), and its
BatchNorm running stats and affine parameters are randomised so that eval-mode BN is not the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import nn

INPUT_SHAPE = (1, 12, 12)
KINDS = ("plain", "residual", "depthwise", "concat", "dense", "grouped")  # simplest first: hypothesis shrinks that way


def _cbr(cin: int, cout: int, k: int = 3, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(*_cbr(c, c), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.body(x))


class Depthwise(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            *_cbr(cin, cin, groups=cin), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Concat(nn.Module):
    def __init__(self, cin: int, c1: int, c3: int):
        super().__init__()
        self.branch1 = nn.Sequential(*_cbr(cin, c1, k=1))
        self.branch3 = nn.Sequential(*_cbr(cin, c3, k=3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x)], dim=1)


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            nn.Conv2d(cin, 2 * growth, 1, bias=False),
            nn.BatchNorm2d(2 * growth),
            nn.ReLU(),
            nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.body(torch.cat(features, dim=1))


class Dense(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, dim=1)


@dataclass(frozen=True)
class BlockSpec:
    kind: str
    cin: int
    cout: int
    groups: int = 1  # "grouped" only
    split: int = 0  # "concat": channels of the 1x1 branch (the 3x3 branch has cout - split)

    def build(self) -> nn.Module:
        if self.kind == "residual":
            return Residual(self.cin)
        if self.kind == "depthwise":
            return Depthwise(self.cin, self.cout)
        if self.kind == "concat":
            return Concat(self.cin, self.split, self.cout - self.split)
        if self.kind == "grouped":
            return nn.Sequential(*_cbr(self.cin, self.cout, groups=self.groups))
        if self.kind == "plain":
            return nn.Sequential(*_cbr(self.cin, self.cout))
        if self.kind == "dense":
            return Dense(self.cin, (self.cout - self.cin) // 2)
        raise ValueError(self.kind)


class RandomNet(nn.Module):
    """stem conv-BN-ReLU, the drawn blocks, then a Linear `head` after global average pooling, or a 1x1 conv
    `head` to the classes, ReLU and global average pooling (conv_head)."""

    def __init__(self, stem: int, specs: tuple[BlockSpec, ...], num_classes: int, seed: int, conv_head: bool = False):
        super().__init__()
        self.specs, self.seed, self.num_classes, self.conv_head = specs, seed, num_classes, conv_head
        width = specs[-1].cout if specs else stem
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.stem = nn.Sequential(*_cbr(INPUT_SHAPE[0], stem))
            self.blocks = nn.Sequential(*(s.build() for s in specs))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flatten = nn.Flatten()
            self.head = nn.Conv2d(width, num_classes, 1) if conv_head else nn.Linear(width, num_classes)
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    with torch.no_grad():
                        m.weight.uniform_(0.5, 1.5)
                        m.bias.normal_(0.0, 0.1)
                        m.running_mean.normal_(0.0, 0.1)
                        m.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        if self.conv_head:
            return self.flatten(self.pool(torch.relu(self.head(x))))
        return self.head(self.flatten(self.pool(x)))

    def extra_repr(self) -> str:
        return f"seed={self.seed}, conv_head={self.conv_head}, specs={[(s.kind, s.cin, s.cout, s.groups) for s in self.specs]}"


def _grouped_options(c: int) -> list[int]:
    """Group counts g in {2, 4} with 1 < g < c and g dividing c."""
    return [g for g in (2, 4) if g < c and c % g == 0]


@st.composite
def _block(draw, cin: int) -> BlockSpec:
    # "grouped" needs an even channel count >= 4; where it is possible it gets half the draws, else it is rare
    if _grouped_options(cin) and draw(st.booleans()):
        kind = "grouped"
    else:
        kind = draw(st.sampled_from([k for k in KINDS[:-1] if k != "dense" or cin <= 8]))  # widths stay <= 14
    if kind == "residual":
        return BlockSpec(kind, cin, cin)
    if kind in ("depthwise", "plain"):
        return BlockSpec(kind, cin, draw(st.integers(2, 8)))
    if kind == "concat":
        cout = draw(st.integers(2, 8))
        return BlockSpec(kind, cin, cout, split=draw(st.integers(1, cout - 1)))
    if kind == "dense":
        return BlockSpec(kind, cin, cin + 2 * draw(st.integers(1, 3)))
    g = draw(st.sampled_from(_grouped_options(cin)))
    cout = draw(st.sampled_from([m for m in range(2 * g, 9, g)]))  # multiple of g, > g
    return BlockSpec(kind, cin, cout, groups=g)


@st.composite
def _random_net(draw) -> RandomNet:
    seed = draw(st.integers(0, 2**31 - 1))
    stem = draw(st.integers(2, 8))
    specs, c = [], stem
    for _ in range(draw(st.integers(1, 4))):
        spec = draw(_block(c))
        specs.append(spec)
        c = spec.cout
    num_classes = draw(st.integers(2, 5))
    return RandomNet(stem, tuple(specs), num_classes, seed, conv_head=draw(st.booleans()))


def random_nets() -> st.SearchStrategy[RandomNet]:
    """A strategy drawing a small random CNN (`RandomNet`) for inputs of shape (B, *INPUT_SHAPE)."""
    return _random_net()
