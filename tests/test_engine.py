import math

import numpy as np
import pytest
import torch
from torch import nn

import engine
import report
from conftest import eval_loader
from data import Split
from model import Net


class FixedLogits(nn.Module):
    """Returns preset logits for the i-th, (i+1)-th, ... image it is shown: a model with known predictions."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.seen = logits, 0
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        out = self.logits[self.seen:self.seen + len(x)]
        self.seen += len(x)
        return out


def blank(n):
    """n black images labelled 0, 1, ..., 9, 0, 1, ..."""
    return Split(np.zeros((n, 32, 32, 3), np.uint8), np.arange(n) % 10)


def test_evaluate_averages_over_every_sample():
    torch.manual_seed(0)
    n = 10
    logits = torch.randn(n, 10)
    logits[:7, :] = 0
    logits[torch.arange(7), torch.arange(7)] = 5.0  # first 7 right, last 3 arbitrary
    labels = torch.arange(n) % 10
    expected_acc = 100 * (logits.argmax(1) == labels).sum().item() / n
    expected_loss = sum(-torch.log_softmax(logits[i], 0)[labels[i]].item() for i in range(n)) / n
    result = engine.evaluate(FixedLogits(logits), eval_loader(blank(n), batch_size=4))  # last batch: 2 images
    assert math.isclose(result["acc"], expected_acc)
    assert math.isclose(result["loss"], expected_loss, rel_tol=1e-5)


def test_predict_returns_all_logits_and_labels_in_order():
    logits = torch.randn(9, 10)
    out, labels = engine.predict(FixedLogits(logits), eval_loader(blank(9), batch_size=4))
    assert torch.equal(out, logits) and torch.equal(labels, torch.arange(9) % 10)


def test_predict_with_a_view_gives_the_logits_of_each_viewed_image():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), np.arange(6))
    batches = eval_loader(split, batch_size=4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))  # not mirror-symmetric
    x = torch.cat([images for images, _ in batches])
    plain, _ = engine.predict(model, batches)
    mirror, labels = engine.predict(model, batches, view=report.mirror)
    with torch.no_grad():
        assert torch.allclose(mirror, model(x.flip(3)), atol=1e-5)
    assert not torch.allclose(mirror, plain, atol=1e-3) and labels.tolist() == list(range(6))


def test_shift_moves_the_pixels_and_reflects_the_edge_into_the_gap():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    down_right = report.shift(x, 1, 2)
    assert down_right.shape == x.shape
    assert torch.equal(down_right[..., 1:, 2:], x[..., :-1, :-2])  # every pixel one down, two right
    assert torch.equal(down_right[..., 0, 2:], x[..., 1, :-2])  # the top row: row 1 reflected over row 0
    assert torch.equal(down_right[..., 1:, 1], x[..., :-1, 1])  # the left columns: 2 and 1 reflected over 0
    assert torch.equal(report.shift(x, -1, -1)[..., :-1, :-1], x[..., 1:, 1:])
    assert torch.equal(report.shift(x, 0, 0), x)


def test_confusion_matrix_and_per_class_accuracy():
    labels = torch.tensor([0, 0, 1, 1, 2])
    logits = nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 0]), 3).float()
    cm = report.confusion_matrix(logits, labels, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report.per_class_accuracy(cm).tolist() == [50.0, 100.0, 0.0]


def test_misclassified_most_confident_first():
    labels = torch.tensor([0, 1, 2, 3])
    logits = torch.tensor([[9.0, 0, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 8.0], [0, 0, 0, 1.0]])
    assert report.misclassified(logits, labels).tolist() == [2, 1]


def test_net_overfits_a_small_batch():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 32))
    batches = eval_loader(split, batch_size=32)
    model = Net(dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = engine.train_one_epoch(model, batches, engine.TrainStep(optimizer))
    for _ in range(40):
        last = engine.train_one_epoch(model, batches, engine.TrainStep(optimizer))
    assert last["loss"] < 0.1 * first["loss"]
    assert engine.evaluate(model, batches)["acc"] == 100.0


def test_train_loss_is_mean_per_sample():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    batches = eval_loader(blank(10), batch_size=4)  # 4, 4 and 2 images: a mean over batches would be off
    before = [p.detach().clone() for p in model.parameters()]
    result = engine.train_one_epoch(model, batches, engine.TrainStep(torch.optim.SGD(model.parameters(), lr=0.0)))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert math.isclose(result["loss"], engine.evaluate(model, batches)["loss"], rel_tol=1e-5)


def test_the_weight_average_is_an_ema_of_every_step_s_weights_and_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9),
                                              use_buffers=True)
    step = engine.TrainStep(optimizer, ema=ema)
    assert engine.final_model(model, step) is model  # nothing averaged yet
    expected = None
    for _ in range(3):
        step(model, torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
        now = [t.detach().clone() for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
        expected = now if expected is None else [0.9 * e + 0.1 * t for e, t in zip(expected, now)]
    final = engine.final_model(model, step)
    assert final is ema.module and int(ema.n_averaged) == 3
    averaged = [t for t in [*final.parameters(), *final.buffers()] if t.is_floating_point()]
    assert all(torch.allclose(a, e, atol=1e-6) for a, e in zip(averaged, expected))
    assert not torch.allclose(averaged[0], now[0])  # the average lags the weights


def test_cutmix_probability_falls_by_the_decay_over_the_run_s_steps():
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    falling = engine.TrainStep(optimizer, None, cutmix_p=0.2, cutmix_decay=0.5, total_steps=10)  # no LR schedule
    steady = engine.TrainStep(optimizer, None, cutmix_p=0.2, total_steps=10)
    seen = []
    for _ in range(10):
        seen.append((falling.cutmix_prob(), steady.cutmix_prob()))
        falling.steps_done += 1
    assert seen[0] == (0.2, 0.2) and math.isclose(seen[5][0], 0.15) and math.isclose(seen[9][0], 0.2 * (1 - 0.45))
    assert all(s == 0.2 for _, s in seen)


def test_the_mixup_bound_rises_to_its_value_by_mid_run_and_stays():
    step = engine.TrainStep(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), None, mixup=0.5, total_steps=10)
    seen = []
    for _ in range(10):
        seen.append(step.mixup_bound())
        step.steps_done += 1
    assert seen[:6] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5]) and seen[6:] == [0.5] * 4


def test_fp16_loss_scaling_path_trains():
    """The CUDA fp16 path (GradScaler) run on the CPU: same step, loss goes down."""
    torch.manual_seed(0)
    model = Net(dropout=0.0)
    batches = eval_loader(blank(16), batch_size=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    losses = [engine.train_one_epoch(model, batches, engine.TrainStep(optimizer, scaler=scaler))["loss"] for _ in range(5)]
    assert losses[-1] < losses[0] and scaler.get_scale() > 0


def test_net_runs_under_bf16_autocast():
    model = Net().eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert engine.metrics(out.float(), torch.zeros(2, dtype=torch.long))["loss"] > 0


class _RedDetector(nn.Module):
    """Blocks c1..c4 that pass the red and green channels through; logit k is the mean of channel k."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.c1.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])[:, :, None, None])
        self.c2, self.c3, self.c4 = nn.Identity(), nn.Identity(), nn.Identity()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.head(self.c4(self.c3(self.c2(self.c1(x)))))


def test_gradcam_peaks_where_the_target_logit_looks():
    images = torch.zeros(2, 3, 32, 32)
    images[:, 0, 2:10, 2:10] = 1.0  # red square top left: what logit 0 depends on
    images[:, 1, 20:28, 20:28] = 1.0  # green square bottom right: logit 1's
    cam = report.gradcam(_RedDetector(), images, torch.tensor([0, 1]))
    assert cam.shape == (2, 32, 32) and cam.max() == pytest.approx(1.0)
    for i, (rows, cols) in enumerate(((slice(2, 10), slice(2, 10)), (slice(20, 28), slice(20, 28)))):
        inside = cam[i, rows, cols]
        assert inside.min() > 0.9 and cam[i].sum() - inside.sum() < 0.1 * inside.sum()


def test_gradcam_needs_a_feature_map():
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    assert report.gradcam(flat, torch.zeros(1, 3, 32, 32), torch.tensor([0])) is None
