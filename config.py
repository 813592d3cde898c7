"""Every knob of a run: one dataclass with a commented default per field.

Edit the defaults here, or override any field on the command line:
    python train.py --epochs=30 --lr=0.05      (or: --epochs 30)
An unknown key or a value of the wrong type is a one-line error.
"""
import argparse
import inspect
import math
import os
import re
import sys
import typing
from dataclasses import asdict, dataclass, fields, replace

from baselines import SeedNet, TiniestNet
from candidates import FastDilatedNet, MixNet3, MixNet16, MixNetD, MixNetDeep, MixNetW, XvelNet
from model import DilatedNet, FastNet, Net

# The names --model takes. "seed" and "tiniest" break the assignment's rules: baselines to measure against;
# from "mix3" on, the designs measured against Net and DilatedNet (docs/experiments.md).
MODELS = {"net": Net, "fast": FastNet, "dilated": DilatedNet, "seed": SeedNet, "tiniest": TiniestNet,
          "mix3": MixNet3, "mix16": MixNet16, "mixd": MixNetD, "mixw": MixNetW, "mixdeep": MixNetDeep,
          "xvel": XvelNet, "fastdilated": FastDilatedNet}

IMAGE_SIZE = 32  # pixels, height and width: what every data source must hold and the models are built for


class UserError(Exception):
    """A call that cannot go on, with a one-line message that says what to do.

    Library code raises it; a notebook can catch it. Only the entry points
    (train.py and benchmark.py run as scripts) turn it into that line on stderr
    and exit code 1.
    """


def recipe(epochs, model="net"):
    """What depends on the run's length: the values of the Config fields left None, for `epochs` epochs of `model`.

    A longer run fits the training set further, so it gets more augmentation: the
    shift grows linearly from its 15-epoch value to its 30-epoch one and stays
    there, the longest schedule it was measured at (docs/experiments.md,
    "Regularization against schedule length"), except in the DilatedNets, which
    fit more slowly per epoch and keep the 15-epoch shift: at 40 epochs the larger
    one cost FastDilatedNet accuracy (docs/experiments.md, "DilatedNet long runs").
    """
    stride_free = model in ("dilated", "fastdilated")
    t = 0.0 if stride_free else min(max((epochs - 15) / 15, 0.0), 1.0)  # 0 up to 15 epochs, 1 from 30
    return dict(translate=round(2 + t * (4 - 2)))


def describe_recipe(cfg):
    """The run's regularization in one line: 'recipe for 30 epochs: shift 4 px, affine/hole p 0.25 fading to 0, ...'."""
    def fading(p, decay):
        return f"p {p:g}" + (f" fading to {p * (1 - decay):g}" if decay and p else "")

    spatial = (f"affine/hole {fading(cfg.affine_p, cfg.aug_decay)}" if cfg.affine_p == cfg.hole_p else
               f"affine {fading(cfg.affine_p, cfg.aug_decay)}, hole {fading(cfg.hole_p, cfg.aug_decay)}")
    extras = [f"{name} p {p:g}" for name, p in (("sharpen", cfg.sharpen_p), ("colour jitter", cfg.jitter_p)) if p]
    extras += [f"mixup up to {cfg.mixup:g} from mid-run"] if cfg.mixup else []
    return (f"recipe for {cfg.epochs} epochs: shift {cfg.translate} px, {spatial}, "
            f"CutMix {fading(cfg.cutmix_p, cfg.cutmix_decay)}" + "".join(", " + e for e in extras))


@dataclass
class Config:
    # data
    data_dir: str = "data"  # CIFAR-10 download/cache dir, or an ImageFolder root with train/ and val/ or test/
    download: bool = True  # download CIFAR-10 into data_dir when it is not there (needs network)
    val_split: int = 0  # hold out this many training images, as many per class, as the val split (0: the source's val/test)
    split_seed: int = 0  # which images --val-split holds out (apart from --seed: all seeds share one val split)
    workers: int = -1  # DataLoader processes (0: main process; -1: auto, on CPU 0 for <= 2 cores else 2, on CUDA one per core up to 16)
    # optimisation
    epochs: int = 15  # passes over the training split
    batch_size: int = 128  # images per optimizer step (the global batch under torchrun)
    optimizer: str = "sgd"  # sgd: Nesterov SGD, with Muon on the filter banks (muon_lr); adamw: AdamW on every weight
    lr: float = 0.2  # peak learning rate of the one-cycle schedule (under sgd: BatchNorm, biases, depthwise and linear weights)
    lr_end: float = 4e-6  # the LR at the last step, as a fraction of the peak (one-cycle's 1/25 x 1/10,000: ~0)
    warmup: float = 0.2  # fraction of all steps spent warming the LR up from lr/25 to lr
    momentum: float = 0.95  # sgd's Nesterov momentum (SGD and Muon) at the start and end; one-cycle lowers it by 0.1 while the LR peaks
    weight_decay: float = 5e-4  # on conv/linear weights (sgd: L2, adamw: decoupled); BatchNorm, biases, Muon's filters get none
    muon_lr: float = 0.03  # sgd's Muon on full and pointwise conv filters: peak step as a fraction of their norm (0: off)
    label_smoothing: float = 0.1  # cross-entropy target smoothing for training (evaluation uses plain CE)
    ema: float = 0.0  # decay per step of a weight average (EMA) evaluated, saved and analysed instead (0: off)
    # model
    model: str = "net"  # net (Net), fast (FastNet: more per CPU minute), dilated (DilatedNet: no stride); mix3/mix16/mixd/mixw/mixdeep/xvel, fastdilated (measured against Net, DilatedNet); seed, tiniest (baselines)
    dropout: float = 0.0  # dropout before the classifier
    # augmentation (Albumentations, per image, uint8). Every random regularizer fades to none by the end, so the
    # low-LR end of the schedule, where the net settles, sees clean whole images (docs/experiments.md, "CutMix",
    # "Augmentation decay"). None: the value recipe(epochs, model) gives a run of this length
    translate: int | None = None  # random shift by up to this many pixels: reflect-pad, then random 32x32 crop (0: off)
    flip_p: float = 0.5  # probability of a horizontal flip
    shift_limit: float = 0.0625  # max shift as a fraction of the image side
    scale_limit: float = 0.1  # max relative zoom in or out
    rotate_limit: float = 15.0  # max rotation in degrees
    affine_p: float = 0.25  # probability of the shift/scale/rotate transform (0.25 beat 0.5)
    hole_size: int = 16  # CoarseDropout: side of the single square hole, in pixels (filled with the dataset mean)
    hole_p: float = 0.25  # probability of the hole
    sharpen_p: float = 0.0  # probability of sharpening (Albumentations' Sharpen, up to xvel's strength)
    jitter_p: float = 0.0  # probability of colour jitter (brightness, contrast x 0.9-1.1, saturation x 0.5-1.5, hue +-0.05)
    aug_decay: float = 1.0  # fraction of affine_p and hole_p shed linearly over the epochs (1: none in the last)
    cutmix_p: float = 0.2  # probability that a training batch is CutMixed (0: off)
    cutmix_decay: float = 1.0  # fraction of cutmix_p shed linearly over the run (1: none at the end)
    mixup: float = 0.0  # batches not CutMixed are mixed up, each image's partner weighted up to this, rising to it by mid-run
    # run
    seed: int = 0  # seeds weights, data order and augmentation
    device: str = "auto"  # auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); ignored on CPU
    channels_last: bool = True  # NHWC memory layout for the model and its inputs
    compile: bool = False  # torch.compile the model (slow first epoch, faster after; CUDA mainly)
    sync_bn: bool = False  # under torchrun on CUDA: BatchNorm statistics over the global batch, not per process
    threads: int = 0  # CPU threads for PyTorch's math (0: PyTorch's default, one per core)
    out_dir: str = ""  # where this run writes its files; empty: runs/<date-time>
    overwrite: bool = False  # allow out_dir to be a directory that already holds files
    resume: str = ""  # run dir or checkpoint to continue from
    init_from: str = ""  # run dir or checkpoint whose weights start a new run (new optimizer and schedule)
    evaluate: str = ""  # run dir or checkpoint to evaluate on the data's evaluation split, val/ or test/ (no training)
    tensorboard: bool = False  # also log to RUN/tensorboard/ (needs pip install tensorboard; view: tensorboard --logdir runs)
    dry_run: bool = False  # whole program on a tiny synthetic dataset, a few steps, no data needed

    def __post_init__(self):
        """Fill the fields left None from recipe(epochs, model): Config(epochs=60) gets 60 epochs' shift."""
        for name, value in recipe(self.epochs, self.model).items():
            if getattr(self, name) is None:
                setattr(self, name, value)


PATHS = ("data_dir", "out_dir", "resume", "init_from", "evaluate")  # the fields that name files or folders


def _comments():
    """Field name -> its trailing comment in the Config source, for --help."""
    pattern = re.compile(r"^\s+(\w+): [^#]*#\s*(.*)$")
    return {m[1]: m[2] for m in map(pattern.match, inspect.getsource(Config).splitlines()) if m}


def _parse_bool(text):
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


_parse_bool.__name__ = "bool"  # so argparse says "invalid bool value"


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):
        """A field left None shows where its value comes from, and the value at the default 15 epochs."""
        default_run = recipe(Config.epochs)
        if action.default is None and action.dest in default_run:
            return f"{action.help} (default: recipe(epochs, model) in config.py; {default_run[action.dest]} at " \
                   f"{Config.epochs} epochs)"
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, no usage block: the message already names the key."""
        raise UserError(f"error: {message} (see python train.py --help)")


def _value_type(annotation):
    """The type a field's text parses to: int for `int` and for `int | None` (a field recipe() fills)."""
    kinds = [t for t in typing.get_args(annotation) if t is not type(None)]
    return kinds[0] if kinds else annotation


def flag(name):
    """The command-line spelling of a Config field: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def parse_args(argv=None, base=None):
    """Config from command-line overrides such as ['--epochs=30', '--lr', '0.05'].

    Fields not given keep their value in `base`; without one, their defaults, where those
    left None follow recipe(epochs, model) of the epochs and model given.
    """
    defaults = asdict(base) if base else {f.name: f.default for f in fields(Config)}
    help_text = _comments()
    parser = _Parser(description="Train a small CNN on CIFAR-10. Every option is a Config field.", allow_abbrev=False,
                     formatter_class=_Help)
    for f in fields(Config):
        if f.type is bool:  # `--dry-run` alone means true; `--amp=false` turns a default off
            parser.add_argument(flag(f.name), type=_parse_bool, nargs="?", const=True, default=defaults[f.name],
                                help=help_text[f.name], metavar="BOOL")
        else:
            kind = _value_type(f.type)
            parser.add_argument(flag(f.name), type=kind, default=defaults[f.name], help=help_text[f.name],
                                metavar=kind.__name__.upper())
    argv = sys.argv[1:] if argv is None else list(argv)
    # Accept --data_dir as well as --data-dir.
    argv = [re.sub(r"^--(\w+)", lambda m: flag(m[1]), a) for a in argv]
    cfg = Config(**vars(parser.parse_args(argv)))
    # The shell leaves ~ alone after "--key=": --data-dir=~/cifar would name a folder called "~"
    cfg = replace(cfg, **{name: os.path.expanduser(getattr(cfg, name)) for name in PATHS})
    check(cfg)
    return cfg


def check(cfg):
    """Raise UserError naming the first field whose value cannot work."""
    rules = [(f.name, math.isfinite(getattr(cfg, f.name)), "a finite number") for f in fields(Config)
             if _value_type(f.type) is float] + [
        ("data_dir", cfg.data_dir != "", "a folder"),
        ("epochs", cfg.epochs >= 1, "at least 1"),
        ("batch_size", cfg.batch_size >= 1, "at least 1"),
        ("val_split", cfg.val_split >= 0, "0 (the source's own split) or a number of images"),
        ("workers", cfg.workers >= -1, "0 or more, or -1 for auto"),
        ("threads", cfg.threads >= 0, "0 or more"),
        ("optimizer", cfg.optimizer in ("sgd", "adamw"), "sgd or adamw"),
        ("lr", cfg.lr > 0, "positive"),
        ("lr_end", 0 < cfg.lr_end <= 1, "a fraction of the peak LR in (0, 1]"),
        ("warmup", 0 < cfg.warmup < 1, "between 0 and 1, exclusive"),
        ("momentum", 0 <= cfg.momentum < 1, "in [0, 1)"),
        ("weight_decay", cfg.weight_decay >= 0, "0 or more"),
        ("muon_lr", cfg.muon_lr >= 0, "0 (off) or more"),
        ("label_smoothing", 0 <= cfg.label_smoothing < 1, "in [0, 1)"),
        ("ema", 0 <= cfg.ema < 1, "0 (off) or a decay in (0, 1)"),
        ("model", cfg.model in MODELS, " or ".join(MODELS)),
        ("dropout", 0 <= cfg.dropout < 1, "in [0, 1)"),
        ("translate", 0 <= cfg.translate <= IMAGE_SIZE // 2, f"between 0 (off) and {IMAGE_SIZE // 2} pixels"),
        ("shift_limit", 0 <= cfg.shift_limit <= 1, "in [0, 1]"),
        ("scale_limit", 0 <= cfg.scale_limit < 1, "in [0, 1)"),
        ("rotate_limit", 0 <= cfg.rotate_limit <= 180, "in [0, 180] degrees"),
        ("hole_size", 1 <= cfg.hole_size <= IMAGE_SIZE, f"between 1 and the image side, {IMAGE_SIZE}"),
        ("aug_decay", 0 <= cfg.aug_decay <= 1, "in [0, 1]"),
        ("cutmix_decay", 0 <= cfg.cutmix_decay <= 1, "in [0, 1]"),
        ("mixup", 0 <= cfg.mixup <= 0.5, "in [0 (off), 0.5]: beyond half the partner would be the image"),
        ("seed", 0 <= cfg.seed < 2**32, "between 0 and 2**32 - 1"),
    ] + [(p, 0 <= getattr(cfg, p) <= 1, "a probability in [0, 1]")
         for p in ("flip_p", "affine_p", "hole_p", "sharpen_p", "jitter_p", "cutmix_p")]
    for name, ok, expected in rules:
        if not ok:
            raise UserError(f"error: {flag(name)}={getattr(cfg, name)} is invalid; it must be {expected}")
    given = [flag(name) for name in ("resume", "evaluate", "init_from") if getattr(cfg, name)]
    if len(given) > 1:
        raise UserError(f"error: {' and '.join(given)} do not combine: continue a run, evaluate one, or start "
                        "one from another's weights")
