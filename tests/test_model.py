import ast
import pathlib

import pytest
import torch
from torch import nn

from baselines import SeedNet, TiniestNet
from candidates import XvelNet
from config import MODELS
from model import (Net, Residual, SeparableConv, architecture_rules, count_params, multiply_adds,
                   receptive_field)

# built to the assignment's rules
ASSIGNMENT_NETS = ("dilated", "fast", "fastdilated", "mix16", "mix3", "mixd", "mixdeep", "mixw", "net", "xvel")
BASELINES = ("seed", "tiniest")  # the reference solution's net and xvel/cifar10-tiniest's, which break them


def test_every_model_is_either_an_assignment_net_or_a_baseline():
    assert sorted(MODELS) == sorted(ASSIGNMENT_NETS + BASELINES)


@pytest.fixture(scope="module", params=ASSIGNMENT_NETS)
def net(request):
    torch.manual_seed(0)
    return MODELS[request.param]()


def test_forward_shape_and_finite(net):
    out = net.eval()(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()


def test_parameter_budget(net):
    params = count_params(net)
    assert params < 200_000
    assert params == sum(p.numel() for p in net.parameters())  # every parameter trains
    assert count_params(nn.Linear(3, 2).requires_grad_(False)) == 0


def test_no_max_pooling(net):
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) for m in net.modules())


def map_sizes(net):
    sizes = []
    hooks = [block.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[2:])))
             for block in (net.c1, net.c2, net.c3, net.c4)]
    net.eval()(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    return sizes


def test_net_downsamples_with_exactly_three_3x3_stride2_convs():
    net = Net()
    strided = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    assert len(strided) == 3
    assert all(m.kernel_size == (3, 3) and m.stride == (2, 2) for m in strided)
    assert map_sizes(net) == [(32, 32), (16, 16), (8, 8), (4, 4)]


@pytest.mark.parametrize("name", ["dilated", "fastdilated"])
def test_dilated_net_has_no_stride_and_shrinks_only_by_unpadded_dilated_convs(name):
    net = MODELS[name]()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.stride == (1, 1) for m in convs)
    shrinking = [m for m in convs if m.kernel_size != (1, 1) and m.padding == (0, 0)]
    assert len(shrinking) == 2 and all(m.dilation[0] > 1 for m in shrinking)
    assert all(m.padding[0] == m.dilation[0] * (m.kernel_size[0] - 1) // 2 for m in convs if m not in shrinking)
    assert map_sizes(net) == [(32, 32), (16, 16), (8, 8), (8, 8)]


def test_depthwise_separable_and_dilated(net):
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    pairs = [(a, b) for a, b in zip(convs, convs[1:])
             if a.groups == a.in_channels == a.out_channels and a.kernel_size != (1, 1)
             and b.kernel_size == (1, 1) and b.groups == 1]
    assert pairs, "no depthwise k x k followed by a pointwise 1x1"
    assert any(m.dilation[0] > 1 for m in convs)


def test_global_average_pooling_then_linear(net):
    assert isinstance(net.head[0], nn.AdaptiveAvgPool2d) and net.head[0].output_size in (1, (1, 1))
    assert isinstance(net.head[-1], nn.Linear) and net.head[-1].out_features == 10


def test_rules_table_passes(net):
    failed = [rule for rule, _, ok in architecture_rules(net) if not ok]
    assert failed == []


def test_seed_net_is_the_reference_solution_layer_by_layer():
    net = SeedNet()
    assert count_params(net) == 97_264
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [sum(p.numel() for p in m.parameters()) for m in convs] == [
        864, 18_432, 2_080, 9_216, 288, 2_048, 2_080, 18_432, 36_864, 1_040, 4_608, 288, 320]
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for m in convs]
    out = net.eval()(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 10)
    assert [shapes[i] for i in (0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 12)] == [
        (32, 32, 32), (64, 32, 32), (32, 16, 16), (32, 16, 16), (64, 16, 16), (32, 8, 8), (64, 6, 6), (64, 6, 6),
        (16, 3, 3), (32, 3, 3), (10, 3, 3)]
    strided = [m for m in convs if m.stride != (1, 1)]
    assert all(m.kernel_size == (1, 1) and m.bias is not None for m in strided) and len(strided) == 3


def test_tiniest_net_is_xvel_s_network_by_its_published_figures():
    net = TiniestNet()
    assert count_params(net) == 97_530 and multiply_adds(net) == 43_878_176  # 60% of it at 32x32
    assert [len(stage) - 2 for stage in (net.c1, net.c2)] == [3, 3]  # conv, norm, three blocks per stage
    assert net.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # by hand: stem 3; each block's widest branch (3x3 average, 7x7 dilated 3) adds 2 + 18 per jump; the 4x4 conv 3
    assert receptive_field(net)[-1]["rf"] == 3 + 3 * 20 + 3 + 3 * 20 * 2 == 186
    failed = [rule for rule, _, ok in architecture_rules(net) if not ok]
    assert failed == ["downsampling: 3x3 stride-2 or unpadded dilated convs"]


def test_xvel_net_carries_xvel_s_blocks_over_under_the_rules():
    net = XvelNet()
    assert count_params(net) == 192_082  # TiniestNet's 97,530, two 3x3 stride-2 convs and a block at 8x8 and 4x4
    assert [len(stage) - 2 for stage in (net.c1, net.c2, net.c3, net.c4)] == [3, 3, 1, 1]
    assert not any(isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)) for m in net.modules())
    # by hand: stem 3; each block's widest branch (7x7 dilated 3) adds 18 per jump; the grouped stride-2 convs 2 each
    assert receptive_field(net)[-1]["rf"] == 3 + 3 * 18 + 2 + 3 * 18 * 2 + 2 * 2 + 18 * 4 + 2 * 4 + 18 * 8 == 395


def test_seed_net_fails_only_the_downsampling_rule():
    failed = [rule for rule, _, ok in architecture_rules(SeedNet()) if not ok]
    assert failed == ["downsampling: 3x3 stride-2 or unpadded dilated convs"]


def test_residual_block_starts_as_the_identity_and_adds_its_body():
    torch.manual_seed(0)
    block = Residual(SeparableConv(8, 8), SeparableConv(8, 8)).eval()
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(block(x), x)  # the body's last BatchNorm starts at zero
    nn.init.ones_(block.body[-1][2].weight)
    body = block.body(x)
    assert body.abs().sum() > 0 and torch.allclose(block(x), x + body)


def test_receptive_field_table_is_computed_from_the_model():
    rows = receptive_field(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, stride=2),
                                         nn.Conv2d(4, 4, 3, dilation=2)))
    assert [(r["jump"], r["rf"]) for r in rows] == [(1, 3), (2, 5), (2, 13)]


def measured_receptive_field(net, size):
    """Width of the input region that one central pre-pooling unit depends on, by its input gradient."""
    net = net.eval()
    with torch.no_grad():  # every path active: positive weights, identity norms, positive input
        for name, m in list(net.named_modules()):
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
                m.reset_running_stats()
            elif isinstance(m, nn.LayerNorm):  # it would flatten a uniform probe to zero, gradient and all
                parent, _, child = name.rpartition(".")
                setattr(net.get_submodule(parent), child, nn.Identity())
    # small and in float64: gated blocks square their input, which would overflow exp() in a deep stack
    net = net.double()
    x = torch.full((1, 3, size, size), 0.1, dtype=torch.float64, requires_grad=True)
    features = nn.Sequential(*(stage for name, stage in net.named_children() if name != "head"))(x)
    h, w = features.shape[2:]
    features[0, :, h // 2, w // 2].sum().backward()
    assert torch.isfinite(x.grad).all()
    rows = x.grad[0].abs().sum(0).sum(1).nonzero().flatten()
    return (rows.max() - rows.min() + 1).item()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_receptive_field_matches_input_gradient_extent(name):
    rf = receptive_field(MODELS[name]())[-1]["rf"]
    assert rf > 44
    assert measured_receptive_field(MODELS[name](), size=32 * (rf // 32 + 3)) == rf  # the field inside the input


def test_model_imports_only_torch():
    tree = ast.parse(pathlib.Path(__file__).parents[1].joinpath("model.py").read_text())
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert modules == {"torch"}
