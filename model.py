"""Net: a compact CIFAR-10 CNN, C1 C2 C3 C4 + output, under 200k parameters.

No max-pooling: three 3x3 stride-2 convs halve the resolution (32 -> 16 -> 8 -> 4).
Gated blocks do most of the work at 32x32 and 16x16: depthwise convs of several
kernel sizes over channel groups, then a gated pointwise MLP. A separable and
dilated conv downsamples to 8x8, and global average pooling feeds one linear
classifier. FastNet, the Net before it, does less work per image in plain
separable blocks; DilatedNet is Net with no stride: unpadded dilated convs shrink
the maps instead. The variants tried against Net live in candidates.py, the
baselines that break the rules (SeedNet, TiniestNet) in baselines.py.
"""
import torch
from torch import nn


def _padding(kernel_size, dilation, valid):
    # "same" padding keeps H, W at stride 1; an unpadded ("valid") conv trims dilation*(k-1) pixels per axis
    return 0 if valid else dilation * (kernel_size - 1) // 2


class ConvBN(nn.Sequential):
    """Full k x k conv -> BatchNorm -> SiLU."""

    def __init__(self, c_in, c_out, kernel_size=3, stride=1, dilation=1, valid=False):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, stride, _padding(kernel_size, dilation, valid), dilation, bias=False),
            nn.BatchNorm2d(c_out),
            nn.SiLU(inplace=True),  # x * sigmoid(x): far ahead of ReLU in this net (docs/experiments.md, Activation)
        )


class SeparableConv(nn.Sequential):
    """Depthwise k x k (one filter per channel) -> pointwise 1x1 -> BatchNorm -> SiLU.

    About k*k + c_out times fewer weights than a full conv: c_in*(k*k + c_out).
    """

    def __init__(self, c_in, c_out, kernel_size=3, stride=1, dilation=1, valid=False):
        super().__init__(
            nn.Conv2d(c_in, c_in, kernel_size, stride, _padding(kernel_size, dilation, valid), dilation,
                      groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.SiLU(inplace=True),
        )


class Residual(nn.Module):
    """x + body(x). The body's last BatchNorm starts at zero, so the block starts as the identity."""

    def __init__(self, *layers):
        super().__init__()
        self.body = nn.Sequential(*layers)
        last_bn = [m for m in self.body.modules() if isinstance(m, nn.BatchNorm2d)][-1]
        nn.init.zeros_(last_bn.weight)

    def forward(self, x):
        return x + self.body(x)


class Classifier(nn.Sequential):
    """Global average pooling -> dropout -> linear: (B, C, H, W) -> (B, num_classes) logits."""

    def __init__(self, c_in, num_classes, dropout):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes))


class FourStages(nn.Module):
    """C1 C2 C3 C4 + head, run in order; subclasses build the stages."""

    def forward(self, x):  # (B, 3, 32, 32)
        x = self.c1(x)  # (B, c1, 32, 32)
        x = self.c2(x)  # (B, c2, 16, 16)
        x = self.c3(x)  # (B, c3, 8, 8)
        x = self.c4(x)  # (B, c4, 4, 4); 8x8 in DilatedNet
        return self.head(x)  # (B, num_classes) logits


class Mixer(nn.Module):
    """Spatial mixing over channel groups: group i goes through a depthwise conv of kernels[i], 0 passes it through.

    Small and large kernels side by side let one layer see near and far at once for few weights (the idea of
    xvel/cifar10-tiniest's blocks). The groups are the channels split evenly, the last one taking the remainder.
    """

    def __init__(self, c, kernels=(0, 3, 5, 7), dilations=None):
        super().__init__()
        n = len(kernels)
        self.sizes = [c // n] * (n - 1) + [c - (n - 1) * (c // n)]
        self.branches = nn.ModuleList(
            nn.Conv2d(s, s, k, padding=d * (k // 2), dilation=d, groups=s, bias=False) if k else nn.Identity()
            for s, k, d in zip(self.sizes, kernels, dilations or [1] * n))

    def forward(self, x):  # (B, c, H, W) -> (B, c, H, W)
        if len(self.branches) == 1:
            return self.branches[0](x)
        return torch.cat([branch(part) for branch, part in zip(self.branches, x.split(self.sizes, 1))], 1)


class Gate(nn.Module):
    """(B, 2h, H, W) -> (B, h, H, W): SiLU of the first half times the second (a gated linear unit, SwiGLU)."""

    def forward(self, x):
        a, b = x.chunk(2, 1)
        return nn.functional.silu(a) * b


def gated_block(c, hidden, kernels, dilations=None):
    """A residual block: Mixer -> BatchNorm -> 1x1 to 2*hidden -> Gate -> 1x1 back to c -> BatchNorm, plus x.

    Spatial mixing and channel mixing in separate layers, as in a transformer block; BatchNorm where a
    transformer has LayerNorm, because it folds into the neighbouring convs at inference.
    """
    return Residual(Mixer(c, kernels, dilations), nn.BatchNorm2d(c), nn.Conv2d(c, 2 * hidden, 1, bias=False), Gate(),
                    nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))


class Net(FourStages):
    """Most of its work at 32x32 and 16x16, in gated blocks that mix space and channels apart (docs/experiments.md,
    "Net v2"), as xvel/cifar10-tiniest's do.

    Full 3x3 convs make C1 and downsample to C2; separable ones downsample to C3 (dilated) and C4, where a full
    conv would spend the budget.
    """

    def __init__(self, widths=(32, 64, 128, 160), hidden=(32, 64, 96, 96), depths=(2, 3, 1, 1),
                 kernels=(0, 3, 5, 7), dilations=None, c1_kernels=None, num_classes=10, dropout=0.0):
        super().__init__()
        (c1, c2, c3, c4), (h1, h2, h3, h4), (n1, n2, n3, n4) = widths, hidden, depths

        def blocks(c, h, n, ks=kernels):
            return [gated_block(c, h, ks, dilations) for _ in range(n)]

        self.c1 = nn.Sequential(ConvBN(3, c1), *blocks(c1, h1, n1, c1_kernels or kernels))  # 32x32
        self.c2 = nn.Sequential(ConvBN(c1, c2, stride=2), *blocks(c2, h2, n2))  # 32x32 -> 16x16
        self.c3 = nn.Sequential(SeparableConv(c2, c3, stride=2, dilation=2), *blocks(c3, h3, n3))  # 16x16 -> 8x8
        self.c4 = nn.Sequential(SeparableConv(c3, c4, stride=2), *blocks(c4, h4, n4))  # 8x8 -> 4x4
        self.head = Classifier(c4, num_classes, dropout)


class FastNet(FourStages):
    """The Net before issue 46: one residual block of two separable convs per stage, most weights at 8x8 and 4x4.

    Net learns more per epoch; this one, with fewer multiply-adds in plain separable convs, runs an epoch in
    under half of Net's time on a CPU (docs/experiments.md, "Net v2"). pretrained/ ships its weights.
    """

    def __init__(self, widths=(32, 64, 112, 160), num_classes=10, dropout=0.0):
        super().__init__()
        c1, c2, c3, c4 = widths
        # A residual block at full resolution costs few weights (separable) but many multiply-adds; it pays in
        # accuracy per epoch (docs/experiments.md, Net architecture with Muon), which depthwise weights at 16x16 did not.
        self.c1 = nn.Sequential(ConvBN(3, c1), Residual(SeparableConv(c1, c1), SeparableConv(c1, c1)))  # 32x32
        self.c2 = nn.Sequential(  # 32x32 -> 16x16
            ConvBN(c1, c2, stride=2),
            Residual(SeparableConv(c2, c2), SeparableConv(c2, c2)),
        )
        self.c3 = nn.Sequential(  # 16x16 -> 8x8; dilation 2 widens the view at no extra cost
            ConvBN(c2, c3, stride=2, dilation=2),
            Residual(SeparableConv(c3, c3), SeparableConv(c3, c3)),
        )
        self.c4 = nn.Sequential(  # 8x8 -> 4x4; a separable stride-2 conv keeps the wide layers in budget
            SeparableConv(c3, c4, stride=2),
            Residual(SeparableConv(c4, c4), SeparableConv(c4, c4)),
        )
        self.head = Classifier(c4, num_classes, dropout)


class DilatedNet(Net):
    """Net with no stride anywhere: unpadded dilated convs shrink the maps 32 -> 16 -> 8.

    A 3x3 conv with dilation d and no padding trims 2d pixels per axis: d = 8 and 4 give 16x16 and 8x8.
    Neighbouring units stay one input pixel apart (no subsampling), so the receptive field grows through
    dilation and the blocks' large kernels alone. C1's blocks see 15 pixels, so C2's dilation-8 taps leave no
    gaps; C4 stays at 8x8, where a 4x4 map would sit on the image's central pixels.
    """

    def __init__(self, widths=(32, 64, 128, 160), num_classes=10, dropout=0.0):
        super().__init__(widths=widths, num_classes=num_classes, dropout=dropout)
        c1, c2, c3, c4 = widths
        # Net's three stride-2 convs, each replaced by a stride-free one of the same weights' shapes
        self.c2[0] = ConvBN(c1, c2, dilation=8, valid=True)  # 32x32 -> 16x16
        self.c3[0] = SeparableConv(c2, c3, dilation=4, valid=True)  # 16x16 -> 8x8
        self.c4[0] = SeparableConv(c3, c4, dilation=2)  # 8x8


def receptive_field(model):
    """Receptive-field table of a plain conv stack, read from the model's own conv layers.

    Walks every Conv2d in registration order, which is forward order in `Net`; a
    residual block counts its body, the longest path through it, and parallel branches (a module's
    `branches`, as in a Mixer) their widest one. Each row is a dict: layer name, kernel, stride, dilation, jump
    (input pixels between neighbouring outputs) and rf (input pixels one output sees, per side).
    """
    rows, rf, jump, inside = [], 1, 1, None
    for name, m in model.named_modules():
        if inside and name.startswith(inside):
            continue
        if isinstance(getattr(m, "branches", None), nn.ModuleList):  # stride-1 branches: the widest sets the field
            inside = name + "."
            widest = max(m.branches, key=_extent)
            convs = [c for c in widest.modules() if isinstance(c, nn.Conv2d)]
            if convs:
                rf += _extent(widest) * jump
                k, d = convs[-1].kernel_size[0], convs[-1].dilation[0]
                rows.append(dict(layer=name, kernel=k, stride=1, dilation=d, jump=jump, rf=rf))
            continue
        if isinstance(m, nn.Conv2d):
            k, s, d = m.kernel_size[0], m.stride[0], m.dilation[0]
            rf += (k - 1) * d * jump
            jump *= s
            rows.append(dict(layer=name, kernel=k, stride=s, dilation=d, jump=jump, rf=rf))
    return rows


def _extent(branch):
    """Input pixels a stride-1 branch widens the field by: (k - 1) * dilation over its convs and average pools."""
    return sum((m.kernel_size[0] - 1) * m.dilation[0] if isinstance(m, nn.Conv2d) else m.kernel_size - 1
               for m in branch.modules() if isinstance(m, (nn.Conv2d, nn.AvgPool2d)))


def count_params(model):
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def architecture_rules(model):
    """The assignment's rules as (rule, value, passed) rows, all read off the model."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [m for m in convs if m.groups == m.in_channels > 1]
    separable = any(m.groups == m.in_channels > 1 and n.kernel_size == (1, 1) and n.groups == 1
                    for m, n in zip(convs, convs[1:]))
    strided = [m for m in convs if m.stride != (1, 1)]
    unpadded = [m for m in convs if m.kernel_size != (1, 1) and m.padding == (0, 0)]  # these shrink the map too
    rf = receptive_field(model)[-1]["rf"]
    params = count_params(model)
    has = lambda kind: any(isinstance(m, kind) for m in model.modules())  # noqa: E731
    return [
        ("parameters < 200,000", f"{params:,}", params < 200_000),
        ("receptive field > 44", rf, rf > 44),
        ("no max-pooling", not has(nn.MaxPool2d), not has(nn.MaxPool2d)),
        ("downsampling: 3x3 stride-2 or unpadded dilated convs", f"{len(strided)} strided, {len(unpadded)} dilated",
         all(m.kernel_size == (3, 3) and m.stride == (2, 2) for m in strided)
         and all(m.dilation != (1, 1) for m in unpadded)),
        ("depthwise-separable conv", f"{len(depthwise)} depthwise", separable),
        ("dilated conv", sum(m.dilation != (1, 1) for m in convs), any(m.dilation != (1, 1) for m in convs)),
        ("global average pooling", has(nn.AdaptiveAvgPool2d), has(nn.AdaptiveAvgPool2d)),
    ]


def multiply_adds(model, image_size=32):
    """Multiply-adds per image of the model's convs and linear layers, forward pass (what sets its arithmetic)."""
    total = []
    hooks = [m.register_forward_hook(lambda m, i, o: total.append(o[0].numel() * m.weight[0].numel()))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return sum(total)
