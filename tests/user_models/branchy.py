"""A user model with a residual add, a depthwise conv, a concat, and a grouped conv.

Input shape (1, 28, 28). Loaded by path; `build(num_classes, width)` returns a fresh model.
"""

import torch
from torch import nn


class Branchy(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        w = width
        # stem
        self.stem_conv = nn.Conv2d(1, w, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(w)
        self.stem_relu = nn.ReLU()
        # residual block: conv-BN-ReLU-conv-BN + identity, ReLU
        self.res_conv1 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.res_bn1 = nn.BatchNorm2d(w)
        self.res_relu1 = nn.ReLU()
        self.res_conv2 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.res_bn2 = nn.BatchNorm2d(w)
        self.res_relu2 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)  # 28 -> 14
        # depthwise-separable block
        self.dw = nn.Conv2d(w, w, 3, padding=1, groups=w, bias=False)
        self.dw_bn = nn.BatchNorm2d(w)
        self.dw_relu = nn.ReLU()
        self.pw = nn.Conv2d(w, 2 * w, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(2 * w)
        self.pw_relu = nn.ReLU()
        # inception-like block: 1x1 branch and 3x3 branch, concatenated
        self.b1_conv = nn.Conv2d(2 * w, w, 1, bias=False)
        self.b1_bn = nn.BatchNorm2d(w)
        self.b1_relu = nn.ReLU()
        self.b3_conv = nn.Conv2d(2 * w, w, 3, padding=1, bias=False)
        self.b3_bn = nn.BatchNorm2d(w)
        self.b3_relu = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)  # 14 -> 7
        # grouped conv on the concatenated 2w channels
        self.gconv = nn.Conv2d(2 * w, 2 * w, 3, padding=1, groups=2, bias=False)
        self.g_bn = nn.BatchNorm2d(2 * w)
        self.g_relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = self.stem_relu(self.stem_bn(self.stem_conv(x)))
        y = self.res_relu1(self.res_bn1(self.res_conv1(x)))
        y = self.res_bn2(self.res_conv2(y))
        x = self.res_relu2(x + y)
        x = self.pool1(x)
        x = self.dw_relu(self.dw_bn(self.dw(x)))
        x = self.pw_relu(self.pw_bn(self.pw(x)))
        a = self.b1_relu(self.b1_bn(self.b1_conv(x)))
        b = self.b3_relu(self.b3_bn(self.b3_conv(x)))
        x = torch.cat([a, b], dim=1)
        x = self.pool2(x)
        x = self.g_relu(self.g_bn(self.gconv(x)))
        return self.head(self.flatten(self.gap(x)))


def build(num_classes: int = 10, width: int = 8) -> nn.Module:
    return Branchy(num_classes=num_classes, width=width)
