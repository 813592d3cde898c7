"""torch.hub entry points:

    net = torch.hub.load("path/to/this/clone", "fast_net", source="local", pretrained=True)  # or "OWNER/REPO"
    prep = torch.hub.load("path/to/this/clone", "preprocess", source="local")
    probs = net(prep(images)).softmax(1)   # images: uint8 RGB, (H, W, 3) or (N, H, W, 3), or PIL images

The pretrained net comes in eval mode with the normalization its weights were trained with in `preprocess`, so
the two cannot disagree. The shipped weights are FastNet's; "net" builds today's Net, untrained.
"""
import numpy as _np

import baselines as _baselines
import checkpoint as _checkpoint
import model as _model
from config import UserError as _UserError
from transforms import fit as _fit, test_transforms as _test_transforms

# Imported names start with "_" so that torch.hub's listing of entry points shows only the ones below.

dependencies = ["torch", "numpy", "cv2", "albumentations", "tqdm"]

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def net(pretrained=False, **kwargs):
    """Net (191,490 parameters), untrained: no weights of it ship yet (pretrained=True says so)."""
    if pretrained:
        raise _UserError("error: no weights of Net ship yet; fast_net(pretrained=True) loads the shipped weights, "
                         "FastNet's (pretrained/README.md)")
    return _model.Net(**kwargs)


def fast_net(pretrained=False, **kwargs):
    """FastNet (199,706 parameters). pretrained=True: the shipped weights, 87.51% on CIFAR-10's 10,000 test images
    (pretrained/README.md), in eval mode; their classes are hubconf.CLASSES."""
    model = _model.FastNet(**kwargs)
    if pretrained:
        saved = _checkpoint.load_pretrained()
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        if tuple(saved["classes"]) != CLASSES or shapes != {k: v.shape for k, v in saved["model"].items()}:
            raise _UserError("error: the shipped weights are those of a default FastNet on CIFAR-10's 10 classes; "
                            "drop the keyword arguments or pretrained=True")
        model.load_state_dict(saved["model"])
        model.eval()
    return model


def dilated_net(**kwargs):
    """DilatedNet (Net with no stride anywhere), untrained."""
    return _model.DilatedNet(**kwargs)


def seed_net(**kwargs):
    """SeedNet, the assignment's reference network, untrained."""
    return _baselines.SeedNet(**kwargs)


def preprocess():
    """A function from uint8 RGB images (one (H, W, 3) array or PIL image, or a list or (N, H, W, 3) array of
    them) to the normalized float batch (N, 3, 32, 32) the nets take: resized to 32x32 where needed, then
    scaled and normalized exactly as in training."""
    normalize = _test_transforms()

    def prepare(images):
        if not isinstance(images, (list, tuple)) and _np.asarray(images).ndim == 3:
            images = [images]
        arrays = [_np.asarray(image.convert("RGB") if hasattr(image, "convert") else image) for image in images]
        if any(a.dtype != _np.uint8 or a.ndim != 3 or a.shape[2] != 3 for a in arrays):
            raise _UserError("error: preprocess takes uint8 RGB images of shape (H, W, 3); convert yours first")
        return normalize(_np.stack([_fit(a) for a in arrays]))

    return prepare
