"""Augmentation: Albumentations per image, Normalize and CutMix per batch.

A pipeline takes a batch of uint8 HWC RGB images, (B, H, W, 3), and returns a
normalized float tensor (B, 3, H, W).
"""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from config import IMAGE_SIZE  # noqa: E402
from optim import fade  # noqa: E402


# CIFAR-10 training-set statistics per RGB channel, on the 0-1 scale, for Normalize. The std is
# the dataset's pixel std, not the often-copied (0.2023, 0.1994, 0.2010), which
# is an average of per-image stds.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def mean_fill(mean=CIFAR10_MEAN):
    """The dataset mean as a uint8 RGB colour, e.g. (125, 123, 114) for CIFAR-10."""
    return tuple(round(255 * m) for m in mean)


class Pipeline:
    """Random augmentations image by image (uint8), then Normalize once on the stacked batch.

    Albumentations' `images=` path normalizes a whole batch in one vectorized call,
    far cheaper per image than Normalize + ToTensorV2 image by image, and the
    result is the same to the last bit (docs/experiments.md, CPU speed). On a 2-core
    CPU the augmentation shares the cores with the model, so every microsecond counts.
    """

    def __init__(self, per_image, mean, std, fading=(), fade=None):
        self.per_image = per_image  # A.Compose on one uint8 image, or None
        self.normalize = A.Compose([A.Normalize(mean=mean, std=std)])  # uint8 -> (x / 255 - mean) / std
        self.fading = [(t, t.p) for t in fading]  # transforms of per_image whose probability follows fade(epoch)
        self.fade = fade

    def set_epoch(self, epoch):
        """Scale the fading transforms' probabilities by fade(epoch), epochs counted from 1 as train.py does; a
        pipeline never told applies them in full."""
        for t, p in self.fading:
            t.p = p * self.fade(epoch)

    def set_random_state(self, np_rng, py_rng):
        if self.per_image is not None:
            self.per_image.set_random_state(np_rng, py_rng)

    def __call__(self, images):  # (B, H, W, 3) uint8
        if self.per_image is not None:
            images = np.stack([self.per_image(image=image)["image"] for image in images])
        x = self.normalize(images=images)["images"]  # (B, H, W, 3) float32
        return torch.from_numpy(x).permute(0, 3, 1, 2)  # (B, 3, H, W), channels_last in memory


def train_transforms(cfg, mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """The training augmentation of a Config (its translate, flip_p, shift/scale/rotate, sharpen_p, jitter_p, hole,
    aug_decay, epochs and seed fields)."""
    # A shift of a few pixels on every image; reflected borders add no flat edges that the Affine's fill would.
    pad = IMAGE_SIZE + 2 * cfg.translate
    translate = [A.PadIfNeeded(pad, pad, border_mode=cv2.BORDER_REFLECT_101),
                 A.RandomCrop(IMAGE_SIZE, IMAGE_SIZE)] if cfg.translate > 0 else []
    # Exactly ShiftScaleRotate(shift_limit, scale_limit, rotate_limit) as Albumentations 2.x
    # defines it, written as the Affine it wraps (ShiftScaleRotate itself warns as deprecated).
    affine = A.Affine(
        translate_percent={"x": (-cfg.shift_limit, cfg.shift_limit), "y": (-cfg.shift_limit, cfg.shift_limit)},
        scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
        rotate=(-cfg.rotate_limit, cfg.rotate_limit),
        shear=(0, 0),
        interpolation=cv2.INTER_LINEAR,
        border_mode=cv2.BORDER_CONSTANT,
        fill=mean_fill(mean),  # uncovered corners get the mean colour, which normalizes to ~0
        rotate_method="largest_box",
        p=cfg.affine_p,
    )
    hole = A.CoarseDropout(
        num_holes_range=(1, 1),
        hole_height_range=(cfg.hole_size, cfg.hole_size),  # ints are pixels, floats fractions
        hole_width_range=(cfg.hole_size, cfg.hole_size),
        fill=mean_fill(mean),
        p=cfg.hole_p,
    )
    # xvel's sharpening, as Sharpen's kernel: alpha 0.092 adds 0.74 x (pixel - its 8 neighbours' mean), as kornia's
    # RandomSharpness at 2.2 does. Either joins the pipeline only when asked for, so default runs draw as before.
    sharpen = A.Sharpen(alpha=(0.0, 0.092), lightness=(1.0, 1.0), p=cfg.sharpen_p)
    jitter = A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.5, hue=0.05, p=cfg.jitter_p)
    colour = [t for t in (sharpen, jitter) if t.p > 0]
    per_image = A.Compose([*translate, A.HorizontalFlip(p=cfg.flip_p), affine, *colour, hole], seed=cfg.seed)

    def aug_fade(epoch):  # the share of affine_p and hole_p that epoch 1..epochs applies: all in the first, 1 - decay
        return fade(epoch - 1, cfg.epochs - 1, cfg.aug_decay)  # in the last (a one-epoch run applies them in full)

    return Pipeline(per_image, mean, std, fading=(affine, hole), fade=aug_fade)


def fit(image):
    """A uint8 (H, W, 3) RGB image at the 32x32 the nets take (area-resized when it is not)."""
    if image.shape[:2] == (IMAGE_SIZE, IMAGE_SIZE):
        return image
    return cv2.resize(image, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)


def test_transforms(mean=CIFAR10_MEAN, std=CIFAR10_STD):
    return Pipeline(None, mean, std)


def mix(images, labels, num_classes, cutmix_p, mixup=0.0):
    """CutMix a batch with probability cutmix_p, else mix it up when mixup > 0; labels become soft targets
    (B, num_classes) either way.

    CutMix: a rectangle of each image is replaced by the same rectangle of its
    neighbour in the batch, and the label weights follow the pasted area
    (torchvision's CutMix). Mixup: each image is blended with its neighbour,
    the neighbour weighted uniformly in [0, mixup] per image, and so are the labels
    (xvel/cifar10-tiniest's mixup).
    """
    if torch.rand(()).item() < cutmix_p:
        return v2.CutMix(num_classes=num_classes)(images, labels)
    targets = torch.nn.functional.one_hot(labels, num_classes).to(images.dtype)
    if mixup > 0:
        share = torch.rand(len(images), device=images.device) * mixup  # (B,) the neighbour's weight
        images = torch.lerp(images, images.roll(1, 0), share.view(-1, 1, 1, 1).to(images.dtype))
        targets = torch.lerp(targets, targets.roll(1, 0), share[:, None].to(targets.dtype))
    return images, targets
