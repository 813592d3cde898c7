"""The optimizer: which weights Muon trains, what its step is, and the one-cycle schedule."""
import pytest
import torch
from torch import nn

from config import Config
from model import FastNet, Net
from optim import MuonSGD, make_optimizer, orthogonalize, param_groups

CPU = torch.device("cpu")


def small_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8),
                         nn.Conv2d(8, 8, 3, groups=8, bias=False), nn.Conv2d(8, 6, 1, bias=False),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))


def test_muon_takes_full_and_pointwise_convs_sgd_the_rest():
    net = small_net()
    decay, no_decay, muon = param_groups(net, 5e-4)
    assert muon["muon"] and [p.shape for p in muon["params"]] == [(8, 3, 3, 3), (6, 8, 1, 1)]
    assert decay["weight_decay"] == 5e-4 and [p.shape for p in decay["params"]] == [(8, 1, 3, 3), (10, 6)]
    assert no_decay["weight_decay"] == 0 and [p.shape for p in no_decay["params"]] == [(8,), (8,), (10,)]


def test_without_muon_every_weight_is_decayed_by_sgd():
    groups = param_groups(small_net(), 5e-4, muon=False)
    assert len(groups) == 2 and len(groups[0]["params"]) == 4 and len(groups[1]["params"]) == 3


def test_net_gives_muon_all_but_its_depthwise_and_linear_weights():
    muon = param_groups(Net(), 5e-4)[2]["params"]  # 2 full convs, 2 downsampling pointwise, 7 blocks x 2 pointwise
    assert len(muon) == 18 and sum(p.numel() for p in muon) == 173_920
    muon = param_groups(FastNet(), 5e-4)[2]["params"]  # 2 full convs, 10 pointwise
    assert len(muon) == 12 and sum(p.numel() for p in muon) == 188_256


@pytest.mark.parametrize("shape", [(24, 48), (64, 216), (160, 112)])
def test_orthogonalize_brings_singular_values_near_one(shape):
    torch.manual_seed(0)
    m = torch.randn(shape) @ torch.diag(torch.logspace(0, 1, shape[1]))  # columns 1 to 10 times apart
    s = torch.linalg.svdvals(orthogonalize(m))
    assert s.min() > 0.6 and s.max() < 1.25
    s_in = torch.linalg.svdvals(m)
    assert s_in.max() / s_in.min() > 5


def muon_step(scale, lr=0.1):
    """One Muon step (no momentum) from the same weights, with the gradient multiplied by `scale`."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(16, 8, 3, 3))
    start = w.detach().clone()
    w.grad = scale * torch.randn(16, 8, 3, 3)
    MuonSGD([{"params": [w], "muon": True}], lr=lr, momentum=0.0).step()
    return start * 16 ** 0.5 / start.norm(), w.detach()


def test_muon_step_is_an_orthogonal_matrix_times_lr_whatever_the_gradient_scale():
    held, after = muon_step(scale=1.0)
    s = torch.linalg.svdvals((held - after).reshape(16, -1) / 0.1)
    assert s.min() > 0.6 and s.max() < 1.25  # the step, from weights rescaled to norm sqrt(16)
    assert torch.allclose(muon_step(scale=1000.0)[1], after, atol=1e-5)


def test_sgd_groups_decay_and_use_nesterov_momentum():
    w = nn.Parameter(torch.ones(3))
    opt = MuonSGD([{"params": [w], "weight_decay": 0.5}], lr=0.1, momentum=0.9)
    for _ in range(2):
        w.grad = torch.ones(3)
        opt.step()
    # step 1: g = 1 + 0.5 * 1 = 1.5, buf = 1.5, update = 1.5 + 0.9 * 1.5; w = 1 - 0.1 * 2.85 = 0.715
    # step 2: g = 1 + 0.5 * 0.715, buf = 0.9 * 1.5 + g, update = g + 0.9 * buf
    g2 = 1 + 0.5 * 0.715
    assert w.detach() == pytest.approx(torch.full((3,), 0.715 - 0.1 * (g2 + 0.9 * (1.35 + g2))))


def test_a_group_of_several_tensors_steps_each_as_alone():
    """The group's tensors move together (foreach ops); each must get what a group of its own would give it."""
    torch.manual_seed(0)
    shapes = [(8, 3, 3, 3), (6, 8, 1, 1), (5,), (10, 6)]
    together = [nn.Parameter(torch.randn(s)) for s in shapes]
    alone = [nn.Parameter(p.detach().clone()) for p in together]
    opt = MuonSGD([{"params": together[:2], "muon": True}, {"params": together[2:], "weight_decay": 0.1}], lr=0.05,
                  momentum=0.9)
    opts = [MuonSGD([{"params": [q], "muon": True}], lr=0.05, momentum=0.9) for q in alone[:2]] + \
           [MuonSGD([{"params": [q], "weight_decay": 0.1}], lr=0.05, momentum=0.9) for q in alone[2:]]
    for _ in range(3):
        for p, q in zip(together, alone):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opt.step()
        for o in opts:
            o.step()
    for p, q in zip(together, alone):
        assert torch.allclose(p, q, atol=1e-6) and not torch.equal(p, torch.zeros_like(p))


def test_muon_groups_take_no_weight_decay_even_when_given_one():
    steps = []
    for decay in (0.0, 0.5):
        torch.manual_seed(0)
        w = nn.Parameter(torch.randn(16, 8, 3, 3))
        w.grad = torch.randn(16, 8, 3, 3)
        MuonSGD([{"params": [w], "muon": True, "weight_decay": decay}], lr=0.1, momentum=0.9).step()
        steps.append(w.detach())
    assert torch.equal(*steps)


@pytest.mark.parametrize("momentum, expected", [(0.95, (0.95, 0.85, 0.95)), (0.0, (0.0, 0.0, 0.0))])
def test_one_cycle_sets_each_groups_lr_and_the_momentum(momentum, expected):
    cfg = Config(momentum=momentum, epochs=1, warmup=0.5, lr=0.2, muon_lr=0.02)
    optimizer, scheduler = make_optimizer(cfg, small_net(), steps_per_epoch=10)
    seen = []
    for _ in range(10):  # step 0 is the start, step 4 the LR peak, step 9 the last
        seen.append([(g["lr"], g["momentum"]) for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert [lr for lr, _ in seen[4]] == pytest.approx([0.2, 0.2, 0.02])
    assert [lr for lr, _ in seen[0]] == pytest.approx([0.2 / 25, 0.2 / 25, 0.02 / 25])
    assert (seen[0][2][1], seen[4][2][1], seen[9][2][1]) == pytest.approx(expected, abs=1e-3)


def test_muon_lr_zero_leaves_plain_sgd():
    optimizer, _ = make_optimizer(Config(muon_lr=0.0), small_net(), steps_per_epoch=10)
    assert not any(g.get("muon") for g in optimizer.param_groups) and len(optimizer.param_groups) == 2


def test_the_lr_ends_at_lr_end_of_each_peak():
    for lr_end, final in ((Config.lr_end, (0.2 * 4e-6, 0.02 * 4e-6)), (0.1, (0.02, 0.002))):
        cfg = Config(epochs=1, warmup=0.5, lr=0.2, muon_lr=0.02, lr_end=lr_end)
        optimizer, scheduler = make_optimizer(cfg, small_net(), steps_per_epoch=11)
        for _ in range(10):
            optimizer.step()
            scheduler.step()
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([final[0], final[0], final[1]], rel=1e-9)


def test_adamw_trains_every_weight_with_decoupled_decay_on_conv_and_linear_weights_only():
    cfg = Config(optimizer="adamw", lr=0.02, weight_decay=0.01, epochs=1, warmup=0.5)
    optimizer, scheduler = make_optimizer(cfg, small_net(), steps_per_epoch=10)
    assert type(optimizer) is torch.optim.AdamW
    assert [(len(g["params"]), g["weight_decay"]) for g in optimizer.param_groups] == [(4, 0.01), (3, 0.0)]
    betas = [optimizer.param_groups[0]["betas"]]
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        betas.append(optimizer.param_groups[0]["betas"])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)  # the peak, no Muon group
    assert set(betas) == {(0.9, 0.999)}  # no momentum cycling
