"""Figures of a run, saved as PNG. They take results (history, images, labels), never a model.

Headless-safe: without a display matplotlib renders off-screen; a figure is
shown on screen only in an interactive session (e.g. a notebook).
"""
import os

import matplotlib.pyplot as plt
import numpy as np
import torch


def _finish(fig, path):
    fig.savefig(path + ".tmp", dpi=120, bbox_inches="tight", format="png")
    os.replace(path + ".tmp", path)  # a kill while saving leaves the previous figure, not half of this one
    if plt.isinteractive():
        plt.show()
    else:
        plt.close(fig)


def plot_curves(history, path, test_name="test"):
    """Loss and accuracy per epoch, train and test; history is a list of per-epoch dicts."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, unit in ((axes[0], "loss", "cross-entropy per sample"), (axes[1], "acc", "accuracy (%)")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"test_{key}"] for h in history], "o-", label=test_name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("Loss (train includes label smoothing)")
    axes[1].set_title("Accuracy")
    _finish(fig, path)


def to_display(image, mean, std):
    """An image as HWC floats in [0, 1]: uint8 HWC as stored, or a normalized CHW tensor de-normalized."""
    if isinstance(image, torch.Tensor) and image.is_floating_point():
        image = image.cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
        return image.permute(1, 2, 0).clamp(0, 1).numpy()
    return np.asarray(image, dtype=np.float32) / 255


def plot_images(images, titles, path, heat=None, suptitle="", mean=None, std=None, ncols=5):
    """A grid of images with a title each; heat: optional (N, H, W) maps in [0, 1] drawn over them.

    images: uint8 HWC as stored, or normalized CHW tensors (then pass the mean and std they were normalized with).
    """
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2 * ncols, 2.2 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_display(images[i], mean, std), interpolation="nearest")
            if heat is not None:
                ax.imshow(np.asarray(heat[i]), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
            ax.set_title(titles[i], fontsize=9)
    fig.suptitle(suptitle)
    _finish(fig, path)


def plot_misclassified(images, true, predicted, classes, path, mean, std, heat=None):
    """A grid of images titled 'true -> predicted' (with Grad-CAM maps of the predicted class when heat is given)."""
    titles = [f"{classes[t]}\n-> {classes[p]}" for t, p in zip(true, predicted)]
    what = "Grad-CAM of the predicted class" if heat is not None else "most confident first"
    plot_images(images, titles, path, heat, f"Misclassified (true -> predicted), {what}", mean, std)


def plot_confusion(confusion, classes, path):
    """Confusion matrix as counts, rows = true class."""
    confusion = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (r, c), count in np.ndenumerate(confusion):
        ax.text(c, r, count, ha="center", va="center", fontsize=7,
                color="white" if count > confusion.max() / 2 else "black")
    ax.set_title(f"Confusion matrix ({confusion.trace() / confusion.sum():.1%} correct)")
    _finish(fig, path)
