import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from config import Config
import transforms as T
from transforms import CIFAR10_MEAN, CIFAR10_STD

ONLY_HOLE = replace(Config(), translate=0, flip_p=0.0, affine_p=0.0, hole_p=1.0)


def normalized(value):
    """What a uint8 RGB colour becomes after Normalize: (3,) tensor."""
    return (torch.tensor(value, dtype=torch.float32) / 255 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)


def test_building_and_running_the_pipelines_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images = np.zeros((2, 32, 32, 3), np.uint8)
        T.train_transforms(Config())(images)
        T.test_transforms()(images)


def test_one_16x16_hole_filled_with_the_dataset_mean():
    transform = T.train_transforms(ONLY_HOLE)
    fill = normalized(T.mean_fill())
    for out in transform(np.full((20, 32, 32, 3), 255, np.uint8)):  # (3, 32, 32) each
        hole = torch.isclose(out, fill[:, None, None], atol=1e-4).all(0)
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert hole.sum() == 16 * 16
        assert rows.max() - rows.min() + 1 == 16 and cols.max() - cols.min() + 1 == 16
        assert torch.allclose(out[:, ~hole], normalized((255, 255, 255))[:, None], atol=1e-4)


def test_aug_decay_fades_the_affine_and_the_hole_to_none_in_the_last_epoch():
    transform = T.train_transforms(replace(ONLY_HOLE, affine_p=1.0, epochs=5, aug_decay=1.0))
    images = np.full((50, 32, 32, 3), 255, np.uint8)
    changed = {}
    for epoch in (1, 3, 5):  # train.py counts epochs from 1
        transform.set_epoch(epoch)
        changed[epoch] = (~torch.isclose(transform(images), normalized((255, 255, 255))[:, None, None],
                                         atol=1e-4)).flatten(1).any(1).sum().item()
    assert changed[1] == 50 and 10 < changed[3] < 50 and changed[5] == 0  # p: 1, then 1 - 0.5 for each, then 0


@pytest.mark.parametrize("epochs, expected", [
    (1, [0.25]),  # a one-epoch run (a dry run) applies them in full
    (2, [0.25, 0.0]),
    (15, [0.25 * (1 - i / 14) for i in range(15)]),  # 0.25, 0.232, ..., 0.018, 0
])
def test_affine_and_hole_probabilities_per_epoch(epochs, expected):
    transform = T.train_transforms(replace(Config(), epochs=epochs, affine_p=0.25, hole_p=0.25, aug_decay=1.0))
    for epoch, p in enumerate(expected, start=1):
        transform.set_epoch(epoch)
        assert [t.p for t, _ in transform.fading] == pytest.approx([p, p], abs=1e-12), epoch


def test_half_decay_ends_at_half_the_probability():
    transform = T.train_transforms(replace(Config(), epochs=4, affine_p=0.5, hole_p=0.5, aug_decay=0.5))
    transform.set_epoch(4)
    assert [t.p for t, _ in transform.fading] == pytest.approx([0.25, 0.25])


def test_mean_fill_is_the_uint8_dataset_mean():
    assert T.mean_fill() == (125, 123, 114)


def test_hole_size_follows_config():
    out = T.train_transforms(replace(ONLY_HOLE, hole_size=8))(np.full((1, 32, 32, 3), 255, np.uint8))[0]
    assert torch.isclose(out, normalized(T.mean_fill())[:, None, None], atol=1e-4).all(0).sum() == 64


def test_horizontal_flip():
    cfg = replace(Config(), translate=0, flip_p=1.0, affine_p=0.0, hole_p=0.0)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    flipped = T.train_transforms(cfg)(images)
    expected = T.test_transforms()(images[:, :, ::-1].copy())
    assert torch.allclose(flipped, expected)


def test_test_transform_normalizes_exactly_in_channels_last_layout():
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    out = T.test_transforms()(images)
    expected = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(CIFAR10_MEAN)[:, None, None]) \
        / torch.tensor(CIFAR10_STD)[:, None, None]
    assert out.dtype == torch.float32 and out.shape == (4, 3, 32, 32)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, expected, atol=1e-5)


def test_batch_normalize_equals_albumentations_per_image():
    import albumentations as A
    from albumentations.pytorch import ToTensorV2
    images = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    per_image = A.Compose([A.Normalize(mean=CIFAR10_MEAN, std=CIFAR10_STD), ToTensorV2()])
    expected = torch.stack([per_image(image=image)["image"] for image in images])
    assert torch.equal(T.test_transforms()(images), expected)


def test_affine_moves_pixels_and_keeps_shape():
    cfg = replace(Config(), translate=0, flip_p=0.0, affine_p=1.0, hole_p=0.0)
    images = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    out = T.train_transforms(cfg)(images)
    assert out.shape == (2, 3, 32, 32)
    assert not torch.allclose(out, T.test_transforms()(images))


def test_cutmix_soft_labels_match_the_pasted_area():
    torch.manual_seed(0)
    images = torch.stack([torch.zeros(3, 32, 32), torch.ones(3, 32, 32)])  # class 0 all 0s, class 1 all 1s
    labels = torch.tensor([0, 1])
    mixed, targets = T.mix(images, labels, num_classes=10, cutmix_p=1.0, mixup=0.5)  # CutMix wins
    assert targets.shape == (2, 10)
    assert torch.allclose(targets.sum(1), torch.ones(2))
    for i in range(2):
        pasted = (mixed[i, 0] != images[i, 0]).float().mean()  # share of pixels from the other image
        assert torch.isclose(targets[i, labels[i]], 1 - pasted, atol=1e-6)


def test_cutmix_off_gives_one_hot():
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([3, 1, 4, 1])
    mixed, targets = T.mix(images, labels, num_classes=10, cutmix_p=0.0)
    assert torch.equal(mixed, images)
    assert torch.equal(targets.argmax(1), labels) and torch.equal(targets.sum(1), torch.ones(4))


def test_mixup_blends_each_image_and_its_label_with_its_neighbour_by_at_most_the_bound():
    torch.manual_seed(0)
    images = torch.arange(8.0)[:, None, None, None].expand(8, 3, 32, 32)  # image i is all i
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    mixed, targets = T.mix(images, labels, num_classes=10, cutmix_p=0.0, mixup=0.3)
    share = targets[torch.arange(8), labels.roll(1)]  # the weight of the neighbour's label
    assert torch.allclose(targets.sum(1), torch.ones(8)) and (share > 0).all() and (share <= 0.3).all()
    assert torch.allclose(targets[torch.arange(8), labels], 1 - share)
    expected = (1 - share) * images[:, 0, 0, 0] + share * images.roll(1, 0)[:, 0, 0, 0]  # pixels too
    assert torch.allclose(mixed, expected.view(8, 1, 1, 1).expand(8, 3, 32, 32))


def test_sharpen_and_jitter_join_the_pipeline_only_when_asked_for():
    plain = replace(Config(), translate=0, flip_p=0.0, affine_p=0.0, hole_p=0.0)
    images = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    assert torch.equal(T.train_transforms(plain)(images), T.test_transforms()(images))
    assert len(T.train_transforms(plain).per_image.transforms) == 3  # the flip, the Affine, the hole (p 0): no more
    for field in ("sharpen_p", "jitter_p"):
        changed = T.train_transforms(replace(plain, **{field: 1.0}))(images)
        assert not torch.allclose(changed, T.test_transforms()(images)), field


def test_translate_shifts_by_at_most_its_pixels_with_reflected_borders():
    cfg = replace(Config(), translate=2, flip_p=0.0, affine_p=0.0, hole_p=0.0)
    transform, plain = T.train_transforms(cfg), T.test_transforms()
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    padded = plain(np.pad(image, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect"))[0]  # (3, 36, 36)
    shifts = set()
    for _ in range(40):
        out = transform(image)[0]
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.allclose(out, padded[:, dy:dy + 32, dx:dx + 32], atol=1e-5)]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 5  # the offsets vary from image to image
