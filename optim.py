"""The optimizer and its schedule: Muon on the conv filters, Nesterov SGD on the rest (or AdamW), one-cycle LR.

Muon (Keller Jordan, 2024) replaces each conv's momentum by the nearest
orthogonal matrix, so every direction of the filter bank moves at the same
rate, whatever the gradient's scale. Every conv here is followed by BatchNorm,
which makes the output blind to the filters' scale; so Muon holds each filter
bank at a fixed norm and its learning rate is an angle: the step per update as
a fraction of the weights' norm. Why it is the default: docs/experiments.md,
Optimizer.
"""
import torch


def orthogonalize(m, steps=5):
    """About U V^T of m = U S V^T (singular values pushed towards 1), by a quintic Newton-Schulz iteration.

    The coefficients trade exactness for speed: after 5 steps every singular
    value above 0.0015 of m's Frobenius norm lies in [0.68, 1.20] (smaller ones
    grow, but less); an update direction needs no more.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = m / (m.norm() + 1e-7)  # Frobenius norm >= spectral norm: singular values start <= 1
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.T
    for _ in range(steps):  # x <- a x + (b G + c G^2) x with G = x x^T, as two fused multiply-adds
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class MuonSGD(torch.optim.Optimizer):
    """Nesterov momentum for every group; groups with muon=True then orthogonalize the step (Muon).

    A Muon group's weights are rescaled to norm sqrt(out_channels) (filters of
    norm 1 on average) before each step, and weight decay is not applied to them:
    with the norm held, decay would have nothing to do.
    """

    def __init__(self, groups, lr, momentum):
        super().__init__(groups, dict(lr=lr, momentum=momentum, weight_decay=0.0, muon=False))

    @torch.no_grad()
    def step(self, closure=None):
        # A group's tensors move together (torch._foreach_*): on a GPU each op is a kernel launch, and one per
        # tensor would make the launches, not the maths, the cost of a step.
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"] and not group["muon"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
            updates = torch._foreach_add(grads, bufs, alpha=group["momentum"])  # Nesterov (plain SGD at momentum 0)
            if group["muon"]:
                updates = [muon_update(p, u) for p, u in zip(params, updates)]
            torch._foreach_add_(params, updates, alpha=-group["lr"])


def muon_update(p, update):
    """Muon's step for filter bank p from its momentum update; p is first rescaled to norm sqrt(out_channels)."""
    p.mul_(len(p) ** 0.5 / p.norm())
    m = update.reshape(len(p), -1)  # (out, in * k * k)
    # A tall (out > in) orthogonal factor has rows of norm sqrt(in/out) on average; scale them to 1.
    return orthogonalize(m).mul_(max(1.0, m.size(0) / m.size(1)) ** 0.5).view_as(p)


def is_filter_bank(p):
    """Full and pointwise conv weights: (out, in, k, k) with in > 1 or k == 1. Depthwise (C, 1, k, k) are not."""
    return p.dim() == 4 and (p.shape[1] > 1 or p.shape[2] == 1)


def param_groups(model, weight_decay, muon=True):
    """SGD with weight decay on conv/linear weights, SGD without on BatchNorm and biases, Muon on the filter banks."""
    params = [p for p in model.parameters() if p.requires_grad]
    to_muon = lambda p: muon and is_filter_bank(p)  # noqa: E731
    groups = [{"params": [p for p in params if p.dim() > 1 and not to_muon(p)], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
    return groups + ([{"params": [p for p in params if to_muon(p)], "muon": True}] if muon else [])


def fade(done, total, decay):
    """What is left of a fading quantity after `done` of `total` steps (or epochs): 1 at the start, 1 - decay at
    `total`, linear in between. Every quantity of the recipe that fades over a run follows it, so a new one (or
    a ramp, 1 - fade) needs no schedule object of its own."""
    return 1 - decay * (done / max(total, 1))


def make_optimizer(cfg, model, steps_per_epoch):
    """The optimizer of cfg.optimizer and its one-cycle schedule, stepped once per batch.

    sgd: MuonSGD (no Muon group when cfg.muon_lr is 0). adamw: AdamW on every
    weight, betas (0.9, 0.999), decoupled weight decay on the conv and linear
    weights only (xvel/cifar10-tiniest's optimizer). Any torch.optim.lr_scheduler
    can take OneCycleLR's place here: nothing else reads the scheduler's internals.

    One-cycle: each group's LR goes from its peak/25 up to the peak over the
    first cfg.warmup of the steps, then down to cfg.lr_end of the peak along a
    cosine. Under sgd it also sets the momentum on every step: cfg.momentum at
    both ends, 0.1 lower (never below 0) at the LR peak, so a high LR comes with
    less inertia.
    """
    sgd = cfg.optimizer == "sgd"
    groups = param_groups(model, cfg.weight_decay, muon=sgd and cfg.muon_lr > 0)
    optimizer = MuonSGD(groups, lr=cfg.lr, momentum=cfg.momentum) if sgd else torch.optim.AdamW(groups, lr=cfg.lr)
    peaks = [cfg.muon_lr if g.get("muon") else cfg.lr for g in groups]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=peaks, total_steps=cfg.epochs * steps_per_epoch, pct_start=cfg.warmup,
        div_factor=25, final_div_factor=1 / (25 * cfg.lr_end), cycle_momentum=sgd and cfg.momentum > 0,
        base_momentum=max(cfg.momentum - 0.1, 0.0), max_momentum=cfg.momentum)
    return optimizer, scheduler
