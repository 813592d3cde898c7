"""Baselines that break the assignment's rules, kept to measure against (architecture_rules says which rule):

SeedNet: the network of the solution this project started from.
TiniestNet: xvel/cifar10-tiniest's network, the best tiny CIFAR-10 net we know (94.4% after 200 epochs in its
own recipe), rebuilt from its description to measure per-epoch learning in our harness (issue 46).
"""
import torch
from torch import nn

from candidates import ChannelNorm, TanhExpGate


class SeedConv(nn.Sequential):
    """The reference solution's unit: k x k conv (or depthwise k x k + pointwise 1x1) -> BatchNorm -> ReLU ->
    Dropout2d(0.01)."""

    def __init__(self, c_in, c_out, dilation=1, padding=1, separable=False):
        convs = [nn.Conv2d(c_in, c_in, 3, padding=padding, dilation=dilation, groups=c_in, bias=False),
                 nn.Conv2d(c_in, c_out, 1, bias=False)] if separable else \
            [nn.Conv2d(c_in, c_out, 3, padding=padding, dilation=dilation, bias=False)]
        super().__init__(*convs, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.Dropout2d(0.01))


class Shrink(nn.Sequential):
    """The reference solution's downsampling: a strided 1x1 conv with bias -> ReLU (halves H, W; no BatchNorm)."""

    def __init__(self, c_in, c_out):
        super().__init__(nn.Conv2d(c_in, c_out, 1, stride=2), nn.ReLU(inplace=True))


class SeedNet(nn.Module):
    """The network of the solution this project started from (97,264 parameters), as a baseline.

    It downsamples with strided 1x1 convs, which the assignment's rules do not
    allow (architecture_rules says so), and ends in a pointwise conv to the
    classes, averaged: no linear layer.
    """

    def __init__(self, num_classes=10, dropout=0.0):
        super().__init__()
        self.c1 = nn.Sequential(SeedConv(3, 32), SeedConv(32, 64))  # 32x32
        self.c2 = nn.Sequential(Shrink(64, 32), SeedConv(32, 32), SeedConv(32, 64, separable=True))  # 16x16
        self.c3 = nn.Sequential(  # 8x8 -> 6x6: dilation 2 with padding 1 trims 2 pixels per axis
            Shrink(64, 32), SeedConv(32, 64, dilation=2), SeedConv(64, 64))
        self.c4 = nn.Sequential(  # 3x3; the last pointwise conv gives the class scores directly
            Shrink(64, 16), SeedConv(16, 32),
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.Conv2d(32, num_classes, 1, bias=False))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))

    def forward(self, x):  # (B, 3, 32, 32) -> (B, num_classes)
        return self.head(self.c4(self.c3(self.c2(self.c1(x)))))


class TiniestBlock(nn.Module):
    """Quarters of the channels: kept, depthwise 3x3, depthwise 7x7, 3x3 average then depthwise 7x7 dilated 3;
    concatenated -> LayerNorm -> 1x1 to 2c -> gate -> 1x1 back, plus the input times a learned per-channel scale."""

    def __init__(self, c):
        super().__init__()
        q = c // 4

        def depthwise(k, d=1):
            return nn.Conv2d(q, q, k, padding=d * (k - 1) // 2, dilation=d, groups=q)

        self.branches = nn.ModuleList([nn.Identity(), depthwise(3), depthwise(7),
                                       nn.Sequential(nn.AvgPool2d(3, 1, 1), depthwise(7, 3))])
        self.mlp = nn.Sequential(ChannelNorm(c), nn.Conv2d(c, 2 * c, 1), TanhExpGate(), nn.Conv2d(c, c, 1))
        self.scale = nn.Parameter(torch.ones(1, c, 1, 1))

    def forward(self, x):  # (B, c, H, W) -> (B, c, H, W)
        mixed = torch.cat([branch(part) for branch, part in zip(self.branches, x.chunk(4, 1))], 1)
        return self.mlp(mixed) + x * self.scale


class TiniestNet(nn.Module):
    """48 channels at 32x32, one 4x4 stride-2 grouped conv to 80 at 16x16, three blocks at each; GAP, linear.

    It downsamples once, with a 4x4 conv where the rules ask for three 3x3 stride-2 convs, and average-pools
    inside its blocks. LayerNorm where our nets have BatchNorm, so nothing folds away at inference.
    """

    def __init__(self, widths=(48, 80), num_classes=10, dropout=0.0):
        super().__init__()
        c1, c2 = widths
        self.c1 = nn.Sequential(nn.Conv2d(3, c1, 3, padding=1), ChannelNorm(c1),
                                *(TiniestBlock(c1) for _ in range(3)))  # 32x32
        self.c2 = nn.Sequential(nn.Conv2d(c1, c2, 4, stride=2, padding=1, groups=16), ChannelNorm(c2),
                                *(TiniestBlock(c2) for _ in range(3)))  # 16x16
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2, num_classes))

    def forward(self, x):  # (B, 3, 32, 32) -> (B, num_classes)
        return self.head(self.c2(self.c1(x)))
