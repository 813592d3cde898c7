"""Where the images come from (loader.py feeds them to a run).

Three sources, each decoded once into memory as uint8 (N, 32, 32, 3) RGB:
  - an ImageFolder-style directory: train/<class>/* and val/<class>/* or test/<class>/*
  - torchvision's CIFAR-10 in data_dir, downloaded when missing and the network is there
  - a tiny synthetic set for --dry-run
--val-split=N then holds out N of its training images, class-balanced and seeded, as the evaluation split.
"""
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import cv2
import numpy as np

from config import IMAGE_SIZE, UserError

# A file that does not decode gets our one line (read_image); OpenCV would print its own "[ERROR] can't read header"
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


@dataclass
class Split:
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    labels: np.ndarray  # (N,) int64


@dataclass
class Data:
    train: Split
    test: Split
    classes: tuple
    source: str  # human-readable origin, for the log
    test_name: str  # "val" or "test": what the evaluation split is
    note: str = ""  # a line for the log about what loading changed, e.g. images converted to RGB


def read_image(path):
    """(image as (H, W, 3) uint8 RGB, whether it had to be converted), judged by the file's bytes, not its name.

    Grayscale, RGBA and 16-bit images are converted, a camera's JPEG turned as its EXIF orientation says; a JPEG
    whose end marker is missing (a cut-off download or copy) is refused rather than decoded with grey filling in.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:  # a broken link, a folder named like an image, no permission
        raise ValueError(f"cannot read image {path} ({e.strerror})") from None
    if not data.size:
        raise ValueError(f"image {path} is empty (0 bytes)")
    jpeg = data[:3].tobytes() == b"\xff\xd8\xff"
    if jpeg and b"\xff\xd9" not in data[-32:].tobytes():
        raise ValueError(f"image {path} is truncated (its JPEG data ends early)")
    if jpeg and b"Exif\x00\x00" in data[:65536].tobytes():  # a camera's: COLOR turns it upright by its EXIF tag
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    else:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # UNCHANGED: channels and depth as stored
    if image is None:
        raise ValueError(f"cannot read image {path}")
    converted = image.dtype != np.uint8 or image.ndim == 2 or image.shape[2] != 3
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"image {path} has {image.dtype} pixels; save it with 8 or 16 bits per channel")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB), converted
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB), converted


def _visible(entries):
    """Directory entries minus hidden ones (.ipynb_checkpoints, .DS_Store, ...), sorted by name."""
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def image_files(folder):
    """Paths of the image files in folder (by extension, hidden ones skipped), sorted by name."""
    return [f.path for f in _visible(os.scandir(folder)) if f.name.lower().endswith(IMAGE_EXTENSIONS)]


def _read_folder_split(root, classes=None):
    """(Split, class names, how many images were converted) of root/<class>/*."""
    found = [d.name for d in _visible(os.scandir(root)) if d.is_dir()]
    if classes is None and len(found) < 2:  # one class trains to "100%" at loss 0 and learns nothing
        raise UserError(f"error: {root} has {len(found)} class folder{'s' * (len(found) != 1)} "
                        f"{found or ''}; a classifier needs at least two (train/<class>/*)")
    classes = classes or tuple(found)
    if tuple(found) != tuple(classes):
        raise UserError(f"error: {root} has classes {found}, but train/ has {list(classes)}; the splits must match")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = image_files(os.path.join(root, name))
        if not files:
            raise UserError(f"error: class folder {os.path.join(root, name)} has no images")
        paths += files
        labels += [label] * len(files)
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:  # OpenCV decodes without the GIL
        try:
            images, converted = zip(*pool.map(read_image, paths))
        except ValueError as e:
            raise UserError(f"error: {e}; remove or replace that file") from None
    shapes = {im.shape for im in images}
    if shapes != {(IMAGE_SIZE, IMAGE_SIZE, 3)}:
        raise UserError(f"error: {root} holds images of sizes {sorted(shapes)[:3]}; "
                        f"expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    return Split(np.stack(images), np.array(labels, dtype=np.int64)), classes, sum(converted)


def load_folder(root):
    """ImageFolder layout: train/<class>/*, and val/<class>/* (or test/<class>/*) for evaluation."""
    test_name = next((s for s in ("val", "test") if os.path.isdir(os.path.join(root, s))), None)
    if test_name is None:
        raise UserError(f"error: {root} has train/ but neither val/ nor test/; add an evaluation split")
    train, classes, converted = _read_folder_split(os.path.join(root, "train"))
    test, _, converted_test = _read_folder_split(os.path.join(root, test_name), classes)
    converted += converted_test
    notes = [f"{converted:,} grayscale, RGBA or 16-bit images were converted to 8-bit RGB"] if converted else []
    nested = sum(len(image_files(d.path)) for split in ("train", test_name) for c in classes
                 for d in _visible(os.scandir(os.path.join(root, split, c))) if d.is_dir())
    if nested:  # a class is the images directly in its folder
        notes.append(f"{nested:,} images in subfolders of class folders were not read; move them up to use them")
    twins = sorted({c for c in classes if sum(d.lower() == c.lower() for d in classes) > 1})
    if twins:  # on a case-insensitive disk these would be one folder: likely one class, typed two ways
        notes.append(f"class folders {', '.join(twins)} differ only in case and count as {len(twins)} classes; "
                     "merge them if they are one")
    return Data(train, test, classes, f"folder {root}", test_name, "; ".join(notes))


def outermost_missing(path):
    """The outermost folder on path that does not exist yet (what os.makedirs(path) creates first), or None."""
    path, missing = os.path.abspath(path), None
    while not os.path.exists(path):
        path, missing = os.path.dirname(path), path
    return missing


def looks_like_a_split(root):
    """Whether root is one split of an image folder (its subfolders hold images) rather than a data root."""
    with os.scandir(root) as entries:
        folders = [e.path for e in _visible(entries) if e.is_dir() and e.name != "cifar-10-batches-py"]
    return any(image_files(f) for f in folders[:20])


def load_cifar10(root, download):
    """torchvision's CIFAR-10 (50k train / 10k test), downloaded into root when missing."""
    from torchvision.datasets import CIFAR10

    created = outermost_missing(root)
    try:
        sets = [CIFAR10(root, train=t, download=download) for t in (True, False)]
    except (RuntimeError, OSError) as e:
        if created:  # the failed download made these folders: leave nothing behind
            shutil.rmtree(created, ignore_errors=True)
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"error: no CIFAR-10 in {root!r} and it could not be downloaded ({first_line}); "
                        "pass --data-dir=PATH to a local copy (torchvision's cifar-10-batches-py, "
                        "or a folder with train/ and val/ or test/ class subfolders)") from None
    train, test = (Split(s.data, np.array(s.targets, dtype=np.int64)) for s in sets)
    return Data(train, test, tuple(sets[0].classes), f"torchvision CIFAR-10 in {root}", "test")


def synthetic(n_train=64, n_test=32, seed=0):
    """Random images whose class shifts the colour a little: learnable, no files needed."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, len(CIFAR10_CLASSES), n)
        images = rng.integers(0, 200, (n, IMAGE_SIZE, IMAGE_SIZE, 3)) + 5 * labels[:, None, None, None]
        return Split(images.astype(np.uint8), labels.astype(np.int64))

    return Data(split(n_train), split(n_test), CIFAR10_CLASSES, "synthetic (dry run)", "test")


def hold_out(data, n, seed):
    """data whose evaluation split is n of its training images, n / classes of each class, chosen by seed alone.

    The split seed is not the run's seed, so every seed of an experiment is scored on the same images, and anyone
    with the same training images (in the same order) rebuilds the same split. The source's own val or test
    split is set aside unused.
    """
    labels, classes = data.train.labels, len(data.classes)
    per_class, left = divmod(n, classes)
    if left:
        raise UserError(f"error: --val-split={n} cannot hold out the same number of each of {classes} classes; "
                        f"pass a multiple of {classes}")
    counts = np.bincount(labels, minlength=classes)
    if per_class >= counts.min():
        raise UserError(f"error: --val-split={n} holds out {per_class} images per class, but class "
                        f"{data.classes[counts.argmin()]} has {counts.min():,} training images; pass a smaller N")
    rng = np.random.default_rng(seed)
    val = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(classes)]))
    train = np.setdiff1d(np.arange(len(labels)), val)
    return replace(data, train=Split(data.train.images[train], labels[train]),
                   test=Split(data.train.images[val], labels[val]), test_name="val",
                   source=f"{data.source}, {n:,} training images held out as val (split seed {seed}; its "
                          f"{data.test_name} split unused)")


def load_data(cfg):
    """The Data that cfg names: synthetic for a dry run, else a folder tree or torchvision's CIFAR-10 in data_dir;
    with --val-split, n of its training images held out as the evaluation split."""
    if cfg.dry_run:
        data = synthetic(seed=cfg.seed)
    elif os.path.exists(cfg.data_dir) and not os.path.isdir(cfg.data_dir):
        raise UserError(f"error: --data-dir={cfg.data_dir} is a file; pass the folder that holds the data")
    elif os.path.isdir(os.path.join(cfg.data_dir, "train")):
        data = load_folder(cfg.data_dir)
    elif os.path.isdir(cfg.data_dir) and looks_like_a_split(cfg.data_dir):  # not a cache to download CIFAR-10 into
        parent = os.path.dirname(os.path.abspath(cfg.data_dir))
        raise UserError(f"error: {cfg.data_dir} holds class folders of images, not train/ and val/; pass the folder "
                        f"above them (--data-dir={parent}) or arrange them as DIR/train/<class>/*, DIR/val/<class>/*")
    else:
        data = load_cifar10(cfg.data_dir, cfg.download)
    return hold_out(data, cfg.val_split, cfg.split_seed) if cfg.val_split else data
