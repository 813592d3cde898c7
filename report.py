"""What a run reports about its model: the summary table, receptive field and rules before training, and the
evaluation with its plots (confusion matrix, misclassified images, Grad-CAM) after it."""
import copy
import os

from torchsummary import summary

import engine
import plots
from config import IMAGE_SIZE
from model import architecture_rules, count_params, receptive_field
from transforms import CIFAR10_MEAN, CIFAR10_STD, test_transforms


def print_model_report(model, device):
    """torchsummary table, parameter count, receptive-field table and the assignment's rules."""
    probe = copy.deepcopy(model)  # torchsummary runs a train-mode batch, which would move BN statistics
    if device.type not in ("cpu", "cuda"):  # torchsummary knows only these two
        probe = probe.cpu()
    summary(probe, (3, IMAGE_SIZE, IMAGE_SIZE), device=next(probe.parameters()).device.type)
    print(f"trainable parameters: {count_params(model):,}")
    print(f"\n{'layer':24} {'k':>2} {'s':>2} {'d':>2} {'jump':>5} {'RF':>4}")
    for r in receptive_field(model):
        print(f"{r['layer']:24} {r['kernel']:>2} {r['stride']:>2} {r['dilation']:>2} {r['jump']:>5} {r['rf']:>4}")
    print(f"\n{'rule':36} {'value':>14}  result")
    for rule, value, ok in architecture_rules(model):
        print(f"{rule:36} {str(value):>14}  {'pass' if ok else 'FAIL'}")


def save_analysis(model, loader, data, run_dir, cfg):
    """Evaluate once on the test split; save the confusion matrix and the misclassified grid, plain and with
    Grad-CAM maps.

    Returns {'loss', 'acc'} (plain single view, the headline), 'flip_acc' and 'flip_shift_acc' (test-time
    augmentation: tta_logits).
    """
    logits, labels = engine.predict(model, loader, amp=cfg.amp, channels_last=cfg.channels_last)
    confusion = engine.confusion_matrix(logits, labels, len(data.classes))
    wrong = engine.misclassified(logits, labels, k=25)
    predicted = logits.argmax(1)
    plots.plot_confusion(confusion, data.classes, os.path.join(run_dir, "confusion.png"))
    images, true, guessed = data.test.images[wrong.numpy()], labels[wrong].tolist(), predicted[wrong].tolist()
    plots.plot_misclassified(images, true, guessed, data.classes, os.path.join(run_dir, "misclassified.png"),
                             CIFAR10_MEAN, CIFAR10_STD)
    heat = engine.gradcam(model, test_transforms()(images), predicted[wrong]) if len(wrong) else None
    if heat is not None:
        plots.plot_misclassified(images, true, guessed, data.classes, os.path.join(run_dir, "gradcam.png"),
                                 CIFAR10_MEAN, CIFAR10_STD, heat)
    per_class = engine.per_class_accuracy(confusion)
    print("per-class accuracy: " + ", ".join(f"{c} {a:.1f}%" for c, a in zip(data.classes, per_class.tolist())))
    flip, flip_shift = tta_logits(model, loader, cfg, logits)
    return dict(engine.metrics(logits, labels), flip_acc=engine.metrics(flip, labels)["acc"],
                flip_shift_acc=engine.metrics(flip_shift, labels)["acc"])


def tta_logits(model, loader, cfg, plain):
    """Test-time augmentation, given the plain logits: (flip TTA, flip + shift TTA) logits.

    Flip TTA averages the logits of each image and its mirror. Flip + shift TTA
    also averages that pair moved one pixel up-left and one down-right, the pair
    in place weighing half: the shifts the net saw in training, kept small so
    that no view loses much of the image.
    """
    def seen(view):  # the logits of every image as the view shows it
        return engine.predict(model, loader, amp=cfg.amp, channels_last=cfg.channels_last, view=view)[0]

    def pair(move):  # mean logits of the moved image and its mirror
        return (seen(move) + seen(lambda x: engine.mirror(move(x)))) / 2

    flip = (plain + seen(engine.mirror)) / 2
    shifted = (pair(lambda x: engine.shift(x, -1, -1)) + pair(lambda x: engine.shift(x, 1, 1))) / 2
    return flip, (flip + shifted) / 2
