"""Run files: the run dir (made, locked) and the checkpoint format (what is saved, what is restored,
what a resume refuses)."""
import contextlib
import fcntl
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from shlex import quote

import torch

from config import MODELS, Config, UserError, flag, parse_args
from data import outermost_missing
from engine import Position, build_model, final_model
from logs import write_atomic

# The weights that ship with the repository, and what they are (pretrained/README.md has their record).
PRETRAINED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained", "fast_net.pt")
PRETRAINED_MODEL = "fast"  # FastNet's: no run of today's Net on the official split has been made yet
PRETRAINED_ABOUT = ("FastNet, the default net when it was trained, on CIFAR-10's 50,000 official training images; "
                    "87.51% on its 10,000 test images")

# The optimizer, its schedule and the weight average are built from these and restored from the checkpoint as
# they were, so a changed value would be ignored (or, for epochs and batch_size, break the schedule): refused on
# resume.
FIXED_ON_RESUME = ("epochs", "batch_size", "optimizer", "lr", "lr_end", "muon_lr", "warmup", "momentum", "weight_decay",
                   "ema")


@dataclass
class Progress:
    """What a run has done so far, besides its weights and optimizer state."""
    history: list = field(default_factory=list)  # one dict per finished epoch, epochs 1, 2, ...
    best_acc: float = -1.0
    best_epoch: int = 0
    position: Position = None  # how far the next epoch got, when a stop came inside it

    @property
    def epoch(self):
        """The last finished epoch (0 before the first)."""
        return len(self.history)


def unused_dir(path):
    """path, or path-2, path-3, ...: the first that did not exist, made here (atomically: two runs started in the
    same second get two folders)."""
    for i in range(1, 1000):
        name = path if i == 1 else f"{path}-{i}"
        try:
            os.makedirs(name)
            return name
        except FileExistsError:
            continue
        except OSError:  # cannot be made: make_out_dir says why
            return name
    return path


def make_out_dir(path, overwrite, instead):
    """Create path for this run's files; refused when it already holds files (unless overwrite) or cannot be
    written, and then no folder it created is left behind. `instead`: what the refusal suggests."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"error: output dir {path} is a file; pick a folder as --out-dir")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise UserError(f"error: {path} already holds files; pick another --out-dir, {instead}or --overwrite")
    created = outermost_missing(path)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise UserError(f"error: cannot write to output dir {path} ({e.strerror}); pick another --out-dir") from None
    return path


def holds_real_run(path):
    """Whether path holds files of a run that trained on real data (a checkpoint, or a config.json that is not a
    dry run's)."""
    if not os.path.isdir(path):
        return False
    try:
        with open(os.path.join(path, "config.json")) as f:
            return not json.load(f).get("dry_run", False)
    except FileNotFoundError:
        return os.path.exists(os.path.join(path, "last.pt"))
    except (OSError, ValueError, AttributeError):  # unreadable or not a Config's: assume it matters
        return True


def new_run_dir(cfg):
    """The folder of a new run: --out-dir, or a new runs/<date-time>; refused when a dry run aims at a real run."""
    path = cfg.out_dir or unused_dir(os.path.join("runs", ("dry-run-" if cfg.dry_run else "") +
                                                  time.strftime("%Y%m%d-%H%M%S")))
    if cfg.dry_run and holds_real_run(path):  # even with --overwrite
        raise UserError(f"error: {path} holds a real run; a dry run never writes over one: pick another --out-dir")
    return make_out_dir(path, cfg.overwrite, f"--resume={quote(path)}, ")


@contextlib.contextmanager
def hold(run_dir):
    """Lock run_dir while the block runs: a second run or resume into it is refused meanwhile.

    The lock is the OS's (flock) on RUN/.lock: it goes with the block, or with the process however it ends.
    """
    with open(os.path.join(run_dir, ".lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"error: {run_dir} is in use by another run; wait for it to end, or pick another "
                            "--out-dir") from None
        yield


def save(run, best=False):
    """last.pt (and best.pt when best) in run.run_dir: weights, optimizer, schedule, scaler, progress, config and
    class names of a train.Run.

    "model" holds the weights the run evaluates (final_model): with a weight average, the average, which is
    what --evaluate, --init-from and predict.py read; the trained weights then go in "trained" to resume from.
    """
    final = final_model(run.model, run.step)
    state = dict(model=final.state_dict(), optimizer=run.step.optimizer.state_dict(),
                 scheduler=run.step.scheduler.state_dict(), scaler=run.step.scaler.state_dict(),
                 steps_done=run.step.steps_done, epoch=run.progress.epoch, history=run.progress.history,
                 best_acc=run.progress.best_acc, best_epoch=run.progress.best_epoch, classes=list(run.data.classes),
                 config=asdict(run.cfg),
                 position=asdict(run.progress.position) if run.progress.position else None)
    if final is not run.model:
        state.update(trained=run.model.state_dict(), ema_steps=int(run.step.ema.n_averaged))
    for name in ("last.pt", "best.pt") if best else ("last.pt",):
        write_atomic(os.path.join(run.run_dir, name), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path):
    """A checkpoint dict (its "config" as a Config) from a run dir's last.pt or a .pt file; UserError if unusable."""
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    if not os.path.isfile(path):
        raise UserError(f"error: no checkpoint at {path}; pass a run dir or a .pt file written by train.py")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # never runs pickled code
    except Exception as e:  # truncated, foreign or not a torch file at all
        raise UserError(f"error: cannot read checkpoint {path} ({type(e).__name__}); "
                        "it is damaged or not from train.py") from None
    if not isinstance(ckpt, dict) or not {"model", "config", "epoch"} <= ckpt.keys():
        raise UserError(f"error: {path} is not a train.py checkpoint (no model/config/epoch entries)")
    ckpt["path"] = path
    ckpt["config"] = Config(**_known(Config, ckpt["config"]))
    return ckpt


def load_pretrained():
    """The shipped weights as a checkpoint dict of FastNet (config, classes, epoch, path)."""
    saved = torch.load(PRETRAINED, map_location="cpu", weights_only=True)
    config = Config(model=PRETRAINED_MODEL)
    return dict(saved, config=config, epoch=config.epochs, path=PRETRAINED)


def _known(cls, saved):
    """The entries of a saved dict that dataclass cls has: fields added since the checkpoint take their defaults,
    fields it no longer has are dropped."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in saved.items() if k in names}


def with_overrides(ckpt, argv, fixed=(), **base):
    """The checkpoint's config (with `base` replaced) under argv's overrides.

    A different --model, or a changed value of a field in `fixed`, is refused with one line.
    """
    saved = ckpt["config"]
    cfg = parse_args(argv, base=replace(saved, **base))
    if cfg.dry_run and not saved.dry_run:  # made-up data must never train or score a real run's weights
        raise UserError(f"error: {ckpt['path']} is a real run's; a dry run never reads or writes one: drop --dry-run")
    if cfg.model != saved.model:  # name the flag to drop, not a load_state_dict size mismatch
        raise UserError(f"error: {ckpt['path']} holds a --model={saved.model} network; drop --model={cfg.model}")
    for name in fixed:
        if getattr(cfg, name) != getattr(saved, name):
            raise UserError(f"error: the run was planned with {flag(name)}={getattr(saved, name)} and its "
                            f"optimizer and LR schedule depend on that; resume without {flag(name)}, "
                            "or start a new run")
    return cfg


def resume(path, argv):
    """(config, checkpoint) to continue the run at path: its config under argv's overrides, minus the refused;
    refused too when the run has nothing left to continue."""
    ckpt = load_checkpoint(path)
    cfg, run_dir = with_overrides(ckpt, argv, FIXED_ON_RESUME), os.path.dirname(ckpt["path"])
    if ckpt["epoch"] == cfg.epochs and not os.path.exists(os.path.join(run_dir, "summary.json")):
        raise UserError(f"error: {run_dir} finished training, so nothing is left to resume, but its final analysis "
                        f"was cut short (no summary.json); for it: python train.py --evaluate={quote(run_dir)}")
    if ckpt["epoch"] == cfg.epochs:
        raise UserError(f"error: {ckpt['path']} finished all {cfg.epochs} epochs; nothing to resume (to train on, "
                        f"start a new run from its weights: --init-from={quote(path)} --epochs=N)")
    if cfg.out_dir != ckpt["config"].out_dir and os.path.realpath(cfg.out_dir) != os.path.realpath(run_dir):
        raise UserError(f"error: --resume continues in {run_dir}; drop --out-dir (to train from its weights "
                        f"elsewhere: --init-from={quote(path)} --out-dir={quote(cfg.out_dir)})")
    return replace(cfg, resume=path), ckpt


def load_weights(model, ckpt, classes):
    """ckpt's weights into model; refused with one line when its classes or its network differ from these."""
    saved = ckpt.get("classes")
    if saved is not None and tuple(saved) != tuple(classes):
        raise UserError(f"error: {ckpt['path']} was trained on {_names(saved)} but this data has "
                        f"{_names(classes)}; use data with the same classes")
    kind = ckpt["config"].model
    if kind in MODELS and type(model) is not MODELS[kind]:  # Net and DilatedNet have the same weights' shapes
        raise UserError(f"error: {ckpt['path']} holds a --model={kind} network, not a {type(model).__name__}; "
                        f"pass --model={kind}")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        kind = next((name for name, net in MODELS.items() if net().state_dict().keys() == ckpt["model"].keys()), None)
        if kind and not isinstance(model, MODELS[kind]):
            raise UserError(f"error: {ckpt['path']} holds a --model={kind} network, not a {type(model).__name__}; "
                            f"pass --model={kind}") from None
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"error: checkpoint does not fit this model ({first}); "
                        "use the config it was trained with") from None


def load_model(path, device):
    """(model in eval mode on device, class names) from a run dir or a checkpoint of train.py; from the shipped
    weights (pretrained/fast_net.pt) when path is None."""
    ckpt = load_checkpoint(path) if path else load_pretrained()
    # Checkpoints from before class names were saved: number the classes (the last tensor is the output layer's)
    classes = ckpt.get("classes") or [str(i) for i in range(next(reversed(ckpt["model"].values())).shape[0])]
    model = build_model(ckpt["config"], len(classes), device)
    load_weights(model, ckpt, classes)
    return model.eval(), classes


def _names(classes):
    """'3 classes (a, b, c)', or '10 classes (airplane, automobile, bird, ...)'."""
    return f"{len(classes)} classes ({', '.join(classes[:3])}{', ...' if len(classes) > 3 else ''})"


def restore(ckpt, model, step, classes):
    """Load a checkpoint into the model and the TrainStep (its weight average too); returns its Progress."""
    averaged = "trained" in ckpt  # then "model" holds the average (FIXED_ON_RESUME keeps step.ema on)
    load_weights(step.ema.module if averaged else model, ckpt, classes)
    if averaged:
        step.ema.n_averaged.fill_(ckpt["ema_steps"])
        model.load_state_dict(ckpt["trained"])
    try:
        step.optimizer.load_state_dict(ckpt["optimizer"])
    except ValueError as e:  # other parameter groups: a checkpoint of an older train.py
        raise UserError(f"error: {ckpt['path']}'s optimizer state does not fit this optimizer ({e}); "
                        "start a new run") from None
    step.scheduler.load_state_dict(ckpt["scheduler"])
    step.steps_done = ckpt.get("steps_done", ckpt["scheduler"].get("last_epoch", 0))  # older files: the LR's count
    if ckpt["scaler"]:  # empty when it ran without fp16 loss scaling: start afresh
        step.scaler.load_state_dict(ckpt["scaler"])
    position = Position(**_known(Position, ckpt["position"])) if ckpt.get("position") else None
    return Progress(ckpt["history"], ckpt["best_acc"], ckpt["best_epoch"], position)
