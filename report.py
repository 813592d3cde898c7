"""What a run reports about its model: the summary table, receptive field and rules before training, and the
evaluation with its plots (confusion matrix, misclassified images, Grad-CAM) after it."""
import copy
import os

import torch
import torch.nn.functional as F
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
    confusion = confusion_matrix(logits, labels, len(data.classes))
    wrong = misclassified(logits, labels, k=25)
    predicted = logits.argmax(1)
    plots.plot_confusion(confusion, data.classes, os.path.join(run_dir, "confusion.png"))
    images, true, guessed = data.test.images[wrong.numpy()], labels[wrong].tolist(), predicted[wrong].tolist()
    plots.plot_misclassified(images, true, guessed, data.classes, os.path.join(run_dir, "misclassified.png"),
                             CIFAR10_MEAN, CIFAR10_STD)
    heat = gradcam(model, test_transforms()(images), predicted[wrong]) if len(wrong) else None
    if heat is not None:
        plots.plot_misclassified(images, true, guessed, data.classes, os.path.join(run_dir, "gradcam.png"),
                                 CIFAR10_MEAN, CIFAR10_STD, heat)
    per_class = per_class_accuracy(confusion)
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
        return (seen(move) + seen(lambda x: mirror(move(x)))) / 2

    flip = (plain + seen(mirror)) / 2
    shifted = (pair(lambda x: shift(x, -1, -1)) + pair(lambda x: shift(x, 1, 1))) / 2
    return flip, (flip + shifted) / 2


def mirror(images):
    """(N, C, H, W) images flipped left-right."""
    return images.flip(3)


def shift(images, dy, dx):
    """(N, C, H, W) images moved dy pixels down and dx right (negative: up, left), the edge reflected into the gap."""
    pad, (h, w) = max(abs(dy), abs(dx)), images.shape[-2:]
    padded = F.pad(images, (pad,) * 4, mode="reflect")
    return padded[..., pad - dy:pad - dy + h, pad - dx:pad - dx + w]


def gradcam(model, images, targets, min_size=8):
    """Grad-CAM maps (N, H, W) in [0, 1], at the images' size: where the model's features raise each target logit.

    Taken at the output of the last top-level block of the model (c3 in Net) whose map is at least min_size
    pixels a side: each channel weighted by the mean gradient of the target logit over the map, summed,
    negatives cut (Selvaraju et al., 2017), upsampled bilinearly and scaled to a maximum of 1 per image.
    None when no block gives such a map.
    """
    device = next(model.parameters()).device
    outputs = []
    hooks = [block.register_forward_hook(lambda m, i, o: outputs.append(o)) for block in model.children()]
    try:
        with torch.enable_grad():
            logits = model.eval()(images.to(device))
            maps = [o for o in outputs if o.dim() == 4 and min(o.shape[2:]) >= min_size]
            if not maps:
                return None
            grad, = torch.autograd.grad(logits.gather(1, targets.to(device)[:, None]).sum(), maps[-1])
    finally:
        for hook in hooks:
            hook.remove()
    cam = F.relu((grad.mean((2, 3), keepdim=True) * maps[-1]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    return (cam / cam.flatten(1).max(1).values.clamp(min=1e-12)[:, None, None]).detach().cpu()


def misclassified(logits, labels, k=25):
    """Indices of up to k wrong predictions, the most confident mistakes first."""
    confidence, predicted = logits.softmax(1).max(1)
    wrong = (predicted != labels).nonzero().flatten()
    return wrong[confidence[wrong].argsort(descending=True)][:k]


def confusion_matrix(logits, labels, num_classes):
    """(C, C) counts: row = true class, column = predicted class."""
    index = labels * num_classes + logits.argmax(1)
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class_accuracy(confusion):
    """Percent correct per true class."""
    return 100 * confusion.diag() / confusion.sum(1).clamp(min=1)
