import os

import cv2
import numpy as np
import pytest
import torch

import transforms
from config import Config
from loader import make_loader


def make_image_folder(root, per_class=(40, 8), classes=10, size=32):
    """ImageFolder tree: train/ and val/ with `classes` folders of PNGs whose colour shifts with the class."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c in range(classes):
            os.makedirs(root / split / f"class{c}")
            for i in range(n):
                image = rng.integers(0, 200, (size, size, 3)) + 5 * c
                cv2.imwrite(str(root / split / f"class{c}" / f"{i}.png"), image.astype(np.uint8))
    return root


def eval_loader(split, batch_size):
    """Evaluation batches of a Split in order, on the CPU, as the pipeline makes them."""
    return make_loader(split, transforms.test_transforms(), Config(batch_size=batch_size), torch.device("cpu"),
                       train=False)


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    """10 classes, 40 training and 8 validation images each: epochs of about a second on a CPU."""
    return make_image_folder(tmp_path_factory.mktemp("data"))


def change_epoch(monkeypatch, epoch, change):
    """Make train.main's `epoch`-th call of engine.train_one_epoch run change(model, kwargs) first.

    change may alter the model or the keyword arguments, or raise. monkeypatch.undo() restores the real one.
    """
    import train

    real = train.engine.train_one_epoch
    calls = []

    def changed(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            change(model, kwargs)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(train.engine, "train_one_epoch", changed)


def interrupted_run(monkeypatch, out, epoch, *argv):
    """train.main(["--dry-run", --out-dir=out, *argv]) stopped by a second Ctrl-C inside `epoch`; returns its
    one-line message. Undoes the test's monkeypatches after, so the real loop runs again."""
    import train
    from config import UserError

    def interrupt(model, kwargs):
        raise KeyboardInterrupt

    change_epoch(monkeypatch, epoch, interrupt)
    with pytest.raises(UserError, match=f"interrupted in epoch {epoch}") as e:
        train.main(["--dry-run", f"--out-dir={out}", *argv])
    monkeypatch.undo()
    return str(e.value)
