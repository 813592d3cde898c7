import os
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

import engine
from config import Config, UserError
from conftest import make_image_folder
from data import Data, Split, hold_out, load_data, load_folder, synthetic
from loader import make_loader
from model import Net
import transforms as T

CPU = torch.device("cpu")
DEV_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                        "cifar10-dev")


def test_folder_dataset_loads_both_splits(tmp_path):
    data = load_folder(str(make_image_folder(tmp_path, per_class=(3, 2), classes=3)))
    assert data.classes == ("class0", "class1", "class2") and data.test_name == "val"
    assert data.train.images.shape == (9, 32, 32, 3) and data.train.images.dtype == np.uint8
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and len(data.test.labels) == 6
    bgr = cv2.imread(str(tmp_path / "train" / "class0" / "0.png"))
    assert np.array_equal(data.train.images[0], bgr[:, :, ::-1])  # stored as RGB


@pytest.mark.parametrize("break_it, words", [
    (lambda r: os.rename(r / "val" / "class2", r / "val" / "z"), "the splits must match"),
    (lambda r: [os.remove(r / "train" / "class1" / f) for f in os.listdir(r / "train" / "class1")], "has no images"),
    (lambda r: (r / "train" / "class0" / "0.png").write_bytes(b"junk"), "cannot read image"),
    (lambda r: cv2.imwrite(str(r / "train" / "class0" / "0.png"), np.zeros((40, 40, 3), np.uint8)), "expected 32x32"),
    (lambda r: os.rename(r / "val", r / "holdout"), "neither val/ nor test/"),
])
def test_bad_folders_are_one_line_errors(tmp_path, break_it, words):
    root = make_image_folder(tmp_path, per_class=(3, 2), classes=3)
    break_it(root)
    with pytest.raises(UserError, match=words) as e:
        load_folder(str(root))
    assert "\n" not in str(e.value)


def test_load_data_on_a_missing_folder_raises_a_user_error_in_process(tmp_path):
    with pytest.raises(UserError, match="--data-dir=PATH") as e:
        load_data(Config(data_dir=str(tmp_path / "missing"), download=False))
    assert str(e.value).startswith("error:") and "\n" not in str(e.value)


def numbered(per_class=(7, 5, 9)):
    """Data whose training image i is filled with the value i (so an image names its index), classes of uneven size."""
    labels = np.repeat(np.arange(len(per_class)), per_class)[np.random.default_rng(0).permutation(sum(per_class))]
    images = np.broadcast_to(np.arange(len(labels), dtype=np.uint8)[:, None, None, None], (len(labels), 32, 32, 3))
    return Data(Split(images.copy(), labels), Split(images[:2].copy(), labels[:2]), ("a", "b", "c"), "made", "test")


def test_val_split_holds_out_a_balanced_disjoint_seeded_share_of_train():
    data = numbered()
    split = hold_out(data, 12, seed=0)
    held, kept = split.test.images[:, 0, 0, 0].tolist(), split.train.images[:, 0, 0, 0].tolist()
    assert sorted(held + kept) == list(range(21)) and not set(held) & set(kept)  # disjoint, nothing lost
    assert np.bincount(split.test.labels).tolist() == [4, 4, 4]  # balanced, though the classes are not
    assert all(data.train.labels[i] == label for i, label in zip(held, split.test.labels))  # labels travel along
    assert split.test_name == "val" and "12 training images held out" in split.source
    again, other = hold_out(data, 12, seed=0), hold_out(data, 12, seed=1)
    assert np.array_equal(again.test.images, split.test.images) and np.array_equal(again.train.labels, split.train.labels)
    assert not np.array_equal(other.test.images, split.test.images)


@pytest.mark.parametrize("n, words", [(10, "multiple of 3"), (15, "class b has 5 training images")])
def test_val_split_that_cannot_be_balanced_is_one_line(n, words):
    with pytest.raises(UserError, match=words) as e:
        hold_out(numbered(), n, seed=0)
    assert "\n" not in str(e.value)


def test_val_split_from_the_command_line_keeps_its_split_apart_from_the_run_seed(tmp_path):
    folder = str(make_image_folder(tmp_path, per_class=(6, 2), classes=3))
    runs = [load_data(Config(data_dir=folder, val_split=6, seed=seed)) for seed in (0, 1)]
    assert [len(d.train.labels) for d in runs] == [12, 12] and np.bincount(runs[0].test.labels).tolist() == [2, 2, 2]
    assert np.array_equal(runs[0].test.images, runs[1].test.images)  # every seed is scored on the same images
    moved = load_data(Config(data_dir=folder, val_split=6, split_seed=1))
    assert not np.array_equal(moved.test.images, runs[0].test.images)


def test_augmentation_is_the_same_whatever_the_worker_count():
    data = synthetic(n_train=40)
    batches = []
    for workers in (0, 2):
        cfg = replace(Config(), workers=workers, batch_size=8)
        loader = make_loader(data.train, T.train_transforms(cfg), cfg, CPU, train=True)
        loader.sampler.set_epoch(3)
        batches.append([images for images, _ in loader])
    assert all((a == b).all() for a, b in zip(*batches))


@pytest.mark.skipif(not os.path.isdir(DEV_DATA), reason="shared CIFAR-10 dev images not present")
def test_real_cifar10_dev_data_learns_well_above_chance():
    data = load_folder(DEV_DATA)
    assert len(data.train.labels) == 45_000 and len(data.test.labels) == 5_000
    assert len(data.classes) == 10 and np.bincount(data.train.labels).tolist() == [4_500] * 10
    torch.manual_seed(0)
    subset = np.random.default_rng(0).permutation(45_000)[:3_000]
    train_split = replace(data.train, images=data.train.images[subset], labels=data.train.labels[subset])
    test_split = replace(data.test, images=data.test.images[::5], labels=data.test.labels[::5])
    cfg = replace(Config(), batch_size=64, workers=0)
    train_loader = make_loader(train_split, T.train_transforms(cfg), cfg, CPU, train=True)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    for epoch in range(2):
        train_loader.sampler.set_epoch(epoch)
        engine.train_one_epoch(model, train_loader, engine.TrainStep(optimizer))
    result = engine.evaluate(model, make_loader(test_split, T.test_transforms(), cfg, CPU, train=False))
    assert result["acc"] > 30  # chance is 10%
