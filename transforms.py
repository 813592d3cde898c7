"""Augmentation: Albumentations pipelines per image, CutMix per batch.

Pipelines take uint8 HWC RGB images and return normalized float CHW tensors.
"""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from config import CIFAR10_MEAN, CIFAR10_STD, Config  # noqa: E402


def mean_fill(mean=CIFAR10_MEAN):
    """The dataset mean as a uint8 RGB colour, e.g. (125, 123, 114) for CIFAR-10."""
    return tuple(round(255 * m) for m in mean)


def train_transforms(cfg=None, mean=CIFAR10_MEAN, std=CIFAR10_STD):
    cfg = cfg or Config()
    return A.Compose([
        A.HorizontalFlip(p=cfg.flip_p),
        # Exactly ShiftScaleRotate(shift_limit, scale_limit, rotate_limit) as Albumentations 2.x
        # defines it, written as the Affine it wraps (ShiftScaleRotate itself warns as deprecated).
        A.Affine(
            translate_percent={"x": (-cfg.shift_limit, cfg.shift_limit), "y": (-cfg.shift_limit, cfg.shift_limit)},
            scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
            rotate=(-cfg.rotate_limit, cfg.rotate_limit),
            shear=(0, 0),
            interpolation=cv2.INTER_LINEAR,
            border_mode=cv2.BORDER_CONSTANT,
            fill=mean_fill(mean),  # uncovered corners get the mean colour, which normalizes to ~0
            rotate_method="largest_box",
            p=cfg.affine_p,
        ),
        A.CoarseDropout(
            num_holes_range=(1, 1),
            hole_height_range=(cfg.hole_size, cfg.hole_size),  # ints are pixels, floats fractions
            hole_width_range=(cfg.hole_size, cfg.hole_size),
            fill=mean_fill(mean),
            p=cfg.hole_p,
        ),
        A.Normalize(mean=mean, std=std),  # uint8 -> (x / 255 - mean) / std
        ToTensorV2(),  # HWC -> CHW
    ], seed=cfg.seed)


def test_transforms(cfg=None, mean=CIFAR10_MEAN, std=CIFAR10_STD):
    return A.Compose([A.Normalize(mean=mean, std=std), ToTensorV2()])


def cutmix(images, labels, num_classes, p):
    """CutMix a batch with probability p; labels become soft targets (B, num_classes) either way.

    A rectangle of each image is replaced by the same rectangle of its neighbour in
    the batch, and the label weights follow the pasted area (torchvision's CutMix).
    """
    if torch.rand(()).item() < p:
        return v2.CutMix(num_classes=num_classes)(images, labels)
    return images, torch.nn.functional.one_hot(labels, num_classes).to(images.dtype)
