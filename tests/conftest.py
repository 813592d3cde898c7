import os

import cv2
import numpy as np
import pytest


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


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    """10 classes, 40 training and 8 validation images each: epochs of about a second on a CPU."""
    return make_image_folder(tmp_path_factory.mktemp("data"))
