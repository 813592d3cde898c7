"""The designs measured in issue 46 (docs/experiments.md, "Net v2"), each under every rule.

Net's variants (MixNet3, MixNet16, MixNetW, MixNetD, MixNetDeep) and XvelNet, with xvel's own block, spend
their work at 32x32 and 16x16 in blocks that mix space and channels separately, as xvel/cifar10-tiniest's do;
FastDilatedNet, the DilatedNet before the issue, has FastNet's plain blocks. Selectable by --model so that
their runs leave records and can be rerun.
"""
import torch
from torch import nn

from model import Classifier, ConvBN, FourStages, Mixer, Net, Residual, SeparableConv


class MixNet3(Net):
    """Net with one depthwise 3x3 over all channels in every block: the control for the Mixer's kernel mix."""

    def __init__(self, num_classes=10, dropout=0.0):
        super().__init__(kernels=(3,), num_classes=num_classes, dropout=dropout)


class MixNet16(Net):
    """Net with one depthwise 3x3 in C1's blocks and the kernel mix from 16x16 on.

    A large depthwise kernel costs four times as much at 32x32 as at 16x16, and C1's blocks already see
    through the 16x16 stage's: this asks whether the mix pays at 32x32 for what it costs there.
    """

    def __init__(self, num_classes=10, dropout=0.0):
        super().__init__(c1_kernels=(3,), num_classes=num_classes, dropout=dropout)


class MixNetW(Net):
    """Net with its capacity moved from 8x8 and 4x4 to 16x16: 80 channels there (xvel's width) and a 96 hidden.

    Net holds most of its weights at 8x8 and 4x4, where they cost little time but see a few pixels each; this
    asks whether the same budget learns more where the reference keeps it.
    """

    def __init__(self, num_classes=10, dropout=0.0):
        super().__init__(widths=(32, 80, 112, 144), hidden=(32, 96, 64, 64), num_classes=num_classes, dropout=dropout)


class MixNetDeep(Net):
    """Net with a third gated block at 32x32, as the reference has three there.

    MixNet16 showed C1's blocks earn their time; this asks whether one more pays for the 14% more
    multiply-adds it costs, with the parameters it adds (4k) still inside the budget.
    """

    def __init__(self, num_classes=10, dropout=0.0):
        super().__init__(depths=(3, 3, 1, 1), num_classes=num_classes, dropout=dropout)


class MixNetD(Net):
    """Net with xvel's kernel mix: identity, depthwise 3x3, 7x7, and 7x7 with dilation 3 (a 19x19 reach).

    The far-reaching quarter is what xvel/cifar10-tiniest puts after a 3x3 average pool; here it sees the
    whole 16x16 map from one block, without the pool the rules forbid.
    """

    def __init__(self, num_classes=10, dropout=0.0):
        super().__init__(kernels=(0, 3, 7, 7), dilations=(1, 1, 1, 3), num_classes=num_classes, dropout=dropout)


class FastDilatedNet(FourStages):
    """The DilatedNet before issue 46: FastNet's blocks with no stride; unpadded dilated convs shrink the maps.

    A 3x3 conv with dilation d and no padding trims 2d pixels per axis: d = 8 and 4
    give 16x16 and 8x8. Neighbouring units stay one input pixel apart (no
    subsampling), so the receptive field grows through dilation alone.
    """

    def __init__(self, widths=(40, 64, 112, 152), num_classes=10, dropout=0.0):
        super().__init__()
        c1, c2, c3, c4 = widths
        # C2's dilation-8 conv samples C1 every 8 pixels; two cheap separable convs take
        # C1's receptive field from 3 to 9 pixels so those samples leave no gaps.
        self.c1 = nn.Sequential(ConvBN(3, c1), SeparableConv(c1, c1, dilation=2), SeparableConv(c1, c1))  # 32x32
        self.c2 = nn.Sequential(  # 32x32 -> 16x16
            ConvBN(c1, c2, dilation=8, valid=True),
            Residual(SeparableConv(c2, c2), SeparableConv(c2, c2)),
        )
        self.c3 = nn.Sequential(  # 16x16 -> 8x8
            ConvBN(c2, c3, dilation=4, valid=True),
            Residual(SeparableConv(c3, c3, dilation=2), SeparableConv(c3, c3)),
        )
        self.c4 = nn.Sequential(  # 8x8, padded: a 4x4 map would sit on the image's central 4x4 pixels
            SeparableConv(c3, c4, dilation=2),
            Residual(SeparableConv(c4, c4, dilation=2), SeparableConv(c4, c4)),
        )
        self.head = Classifier(c4, num_classes, dropout)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of a (B, C, H, W) map."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TanhExpGate(nn.Module):
    """(B, 2h, H, W) -> (B, h, H, W): a * tanh(exp(a)) * b of the two halves a, b (TanhExp, gated)."""

    def forward(self, x):
        a, b = x.chunk(2, 1)
        return a * torch.tanh(torch.exp(a)) * b


class XvelBlock(nn.Module):
    """xvel/cifar10-tiniest's block without the 3x3 average pool the rules forbid: quarters of the channels kept,
    depthwise 3x3, 7x7, 7x7 dilated 3 -> LayerNorm -> 1x1 to 2c -> gate -> 1x1 back, plus x times a learned scale."""

    def __init__(self, c):
        super().__init__()
        self.mixer = Mixer(c, kernels=(0, 3, 7, 7), dilations=(1, 1, 1, 3))
        self.mlp = nn.Sequential(ChannelNorm(c), nn.Conv2d(c, 2 * c, 1), TanhExpGate(), nn.Conv2d(c, c, 1))
        self.scale = nn.Parameter(torch.ones(1, c, 1, 1))

    def forward(self, x):  # (B, c, H, W) -> (B, c, H, W)
        return self.mlp(self.mixer(x)) + x * self.scale


class XvelNet(FourStages):
    """xvel/cifar10-tiniest's blocks and stem carried over under the rules: its 48 channels at 32x32 and 80 at
    16x16, three blocks each; grouped 3x3 stride-2 convs where it has one 4x4, and two more stages, one block each,
    to reach 4x4 with the budget it leaves. LayerNorm throughout, as in its net: nothing folds at inference."""

    def __init__(self, widths=(48, 80, 96, 128), depths=(3, 3, 1, 1), num_classes=10, dropout=0.0):
        super().__init__()

        def stage(first, c, n):
            return nn.Sequential(first, ChannelNorm(c), *(XvelBlock(c) for _ in range(n)))

        (c1, c2, c3, c4), (n1, n2, n3, n4) = widths, depths
        self.c1 = stage(nn.Conv2d(3, c1, 3, padding=1), c1, n1)  # 32x32
        self.c2 = stage(nn.Conv2d(c1, c2, 3, 2, 1, groups=16), c2, n2)  # 32x32 -> 16x16
        self.c3 = stage(nn.Conv2d(c2, c3, 3, 2, 1, groups=16), c3, n3)  # 16x16 -> 8x8
        self.c4 = stage(nn.Conv2d(c3, c4, 3, 2, 1, groups=16), c4, n4)  # 8x8 -> 4x4
        self.head = Classifier(c4, num_classes, dropout)
