"""Classify your own images, with the shipped weights or a checkpoint of train.py:
    python predict.py PATH [PATH ...]                     (the weights in pretrained/)
    python predict.py RUN_DIR_OR_CHECKPOINT PATH [PATH ...] [--csv=predictions.csv] [--device=auto] [--batch-size=256]

A PATH is an image or a folder of images (read by their bytes, like the training data; images
that are not 32x32 are resized). A first argument that is a run dir (it holds last.pt) or a .pt
file is the checkpoint. Prints the top-3 classes with their probabilities per image and writes a
CSV: path, top-1 class, its probability, the top 3.
"""
import argparse
import csv
import os
import sys

import numpy as np
import torch

import checkpoint
import engine
from config import UserError
from data import image_files, read_image
from logs import write_atomic
from runtime import resolve_device, sigterm_interrupts
from transforms import fit, test_transforms


def image_paths(paths):
    """Every image path the arguments name: files as given, folders' image files (by extension) sorted."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += image_files(path)
        elif os.path.exists(path):
            found.append(path)
        else:
            raise UserError(f"error: no file or folder {path}")
    if not found:
        raise UserError(f"error: no images in {', '.join(paths)}")
    return found


def read_images(paths):
    """(image paths, uint8 (N, 32, 32, 3) RGB) for files and folders of images, resized to 32x32 where needed."""
    found = image_paths(paths)
    images = []
    for path in found:
        try:
            image, _ = read_image(path)
        except ValueError as e:
            raise UserError(f"error: {e}; pass images only") from None
        images.append(fit(image))
    return found, np.stack(images)


def is_checkpoint(path):
    """Whether path names a checkpoint of train.py rather than images: a .pt path, or a run dir with last.pt."""
    return path.endswith(".pt") or os.path.isfile(os.path.join(path, "last.pt"))


@torch.no_grad()
def probabilities(model, images, batch_size=256):
    """Class probabilities (N, C) on the CPU for uint8 (N, H, W, 3) images, normalized as in training."""
    device = next(model.parameters()).device
    channels_last = next(model.parameters()).is_contiguous(memory_format=torch.channels_last)
    batches = [engine.to_device(test_transforms()(images[i:i + batch_size]), device, channels_last)
               for i in range(0, len(images), batch_size)]
    return torch.cat([model(x).float().softmax(1).cpu() for x in batches])


def main(argv=None):
    parser = argparse.ArgumentParser(description="Classify images with the shipped weights or a checkpoint of "
                                     "train.py.")
    parser.add_argument("paths", nargs="+", metavar="[CHECKPOINT] PATH",
                        help="images, or folders of images; first, optionally, a run dir (its last.pt) or a .pt "
                             "file written by train.py (without one: the shipped weights in pretrained/)")
    parser.add_argument("--csv", default="predictions.csv", help="where to write the predictions")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.batch_size < 1:
        raise UserError(f"error: --batch-size={args.batch_size} is invalid; it must be at least 1")
    path = args.paths.pop(0) if is_checkpoint(args.paths[0]) else None
    if not args.paths:
        raise UserError(f"error: no images to classify; pass them after the checkpoint: python predict.py {path} "
                        "my_images/")
    model, classes = checkpoint.load_model(path, resolve_device(args.device))
    print(f"classifying with {shown(path)}" if path else
          f"classifying with the shipped weights ({checkpoint.PRETRAINED_ABOUT}; pretrained/README.md)")
    paths, images = read_images(args.paths)
    top_p, top_i = probabilities(model, images, args.batch_size).topk(min(3, len(classes)), dim=1)
    rows = []
    for path, p, i in zip(paths, top_p.tolist(), top_i.tolist()):
        top = [(classes[k], round(q, 4)) for k, q in zip(i, p)]
        rows.append({"path": path, "class": top[0][0], "probability": top[0][1],
                     "top3": " ".join(f"{c}:{q:.4f}" for c, q in top)})
        print(f"{shown(path)}: " + ", ".join(f"{c} {100 * q:.1f}%" for c, q in top))
    write_atomic(args.csv, lambda tmp: _write_csv(rows, tmp))
    print(f"wrote {args.csv} ({len(rows)} images)")
    return rows


def shown(path):
    """path as printable text: bytes of a file name that are not UTF-8 appear as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _write_csv(rows, path):
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:  # file names' own bytes
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    try:
        with sigterm_interrupts():
            main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: write_atomic left no half-written CSV
        sys.exit("\ninterrupted; no predictions written (an earlier CSV is unchanged)")
    except UserError as e:
        sys.exit(str(e))  # the one line on stderr, exit code 1
