"""Export a trained net to ONNX, for onnxruntime and small devices:
    python export.py [RUN_DIR_OR_CHECKPOINT] [--out=model.onnx] [--overwrite]

Without a checkpoint it exports the shipped weights (pretrained/). The ONNX model takes what predict.py
classifies: uint8 RGB images of shape (N, 32, 32, 3) (resize larger ones first), and returns the logits
(N, classes); the scaling, the CIFAR-10 normalization and the NHWC-to-NCHW move are inside it, and each
BatchNorm that follows a conv is folded into it. The class names go into the model's metadata ("classes").
When onnxruntime is installed, the export is checked against PyTorch on random images.
"""
import argparse
import copy
import importlib.util
import os
import sys

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import checkpoint
from config import IMAGE_SIZE, UserError
from logs import write_atomic
from transforms import CIFAR10_MEAN, CIFAR10_STD

TOLERANCE = 1e-4  # largest difference of a logit between onnxruntime and PyTorch that passes the check


def fold_batchnorm(module):
    """module with every BatchNorm that follows a conv inside an nn.Sequential folded into that conv (in place).

    In eval mode BatchNorm is a fixed per-channel scale and shift, which the conv's weights and bias absorb: the
    same logits, one op fewer per layer. A BatchNorm after anything else (MixNet's, after its concatenated
    branches) stays, as ONNX's BatchNormalization.
    """
    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                module[i], module[i + 1] = fuse_conv_bn_eval(module[i], module[i + 1]), nn.Identity()
    return module


class Deployable(nn.Module):
    """A copy of a net in eval mode, BatchNorm folded into its convs, taking uint8 (N, H, W, 3) RGB images."""

    def __init__(self, net):
        super().__init__()
        self.net = fold_batchnorm(copy.deepcopy(net).eval())
        self.register_buffer("mean", 255 * torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", 255 * torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))

    def forward(self, images):  # (N, 32, 32, 3) uint8
        x = images.permute(0, 3, 1, 2).float()  # (N, 3, 32, 32), 0-255
        return self.net((x - self.mean) / self.std)  # (N, classes)


def require():
    """Refuse in one line, before anything is read or written, when the exporter's packages are missing."""
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"error: export.py needs {' and '.join(missing)}: pip install onnx onnxscript onnxruntime")


def export(model, classes, path):
    """Write model (a net, as built) as ONNX to path, atomically; returns the Deployable it exported."""
    deployable = Deployable(model.cpu()).eval()
    example = torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)

    def write(tmp):
        program = torch.onnx.export(deployable, (example,), input_names=["images"], output_names=["logits"],
                                    dynamic_shapes={"images": {0: batch}}, external_data=False, verbose=False)
        program.model.metadata_props["classes"] = ",".join(classes)  # onnx_ir's dict of metadata
        program.save(tmp)

    write_atomic(path, write)
    return deployable


def check(deployable, path, n=64):
    """The largest |logit difference| between onnxruntime running path and PyTorch on n random images."""
    import onnxruntime
    images = np.random.default_rng(0).integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    ours = session.run(["logits"], {"images": images})[0]
    with torch.no_grad():
        theirs = deployable(torch.from_numpy(images)).numpy()
    return float(np.abs(ours - theirs).max())


def main(argv=None):
    parser = argparse.ArgumentParser(description="Export a checkpoint of train.py (or the shipped weights) to ONNX.")
    parser.add_argument("checkpoint", nargs="?", help="a run dir (its last.pt) or a .pt file written by train.py; "
                                                      "without one: the shipped weights in pretrained/")
    parser.add_argument("--out", default="model.onnx", help="where to write the ONNX model")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    require()
    if os.path.exists(args.out) and not args.overwrite:
        raise UserError(f"error: {args.out} exists; pick another --out, or --overwrite")
    model, classes = checkpoint.load_model(args.checkpoint, torch.device("cpu"))
    deployable = export(model, classes, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes): uint8 RGB (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) "
          f"-> logits (N, {len(classes)}); classes {', '.join(classes)}")
    try:
        diff = check(deployable, args.out)
    except ImportError:
        print("onnxruntime is not installed: the export is unchecked (pip install onnxruntime)")
        return args.out
    if diff > TOLERANCE:
        raise UserError(f"error: onnxruntime's logits differ from PyTorch's by up to {diff:.2g} (over {TOLERANCE}); "
                        f"{args.out} is wrong, please report it")
    print(f"checked with onnxruntime: logits within {diff:.1e} of PyTorch's")
    return args.out


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(str(e))
