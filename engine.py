"""The model on its device, the training step, the training and evaluation loops, and metrics.

Every function returns plain dicts, dataclasses or tensors; nothing here prints
except the progress bar, and the device always comes from the model's parameters.
Mixed precision lives here alone: autocast for the forward pass, and the loss
scaler that fp16 needs.
"""
import contextlib
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from config import MODELS, UserError
from optim import fade, make_optimizer
from transforms import mix


def build_model(cfg, num_classes, device):
    """cfg.model's network on the device, in the memory layout cfg asks for."""
    model = MODELS[cfg.model](num_classes=num_classes, dropout=cfg.dropout)
    return model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)


def amp_dtype(device):
    """bf16 where the GPU has it, else fp16 (which needs loss scaling)."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device, enabled=True):
    """Mixed precision on CUDA (amp_dtype); full precision elsewhere."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype(device))


def all_reduce_sum(values, device):
    """Sums a list of numbers over all torchrun processes (unchanged in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def average_buffers(model):
    """Under torchrun, average BatchNorm running statistics over the processes.

    DDP keeps the weights in step but each process updates these buffers from
    its own batches; averaging them makes every rank hold, and evaluate, the
    same model as the checkpoint rank 0 saves.
    """
    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer /= dist.get_world_size()


def to_device(x, device, channels_last):
    x = x.to(device, non_blocking=True)
    if x.dim() != 4:
        return x
    # Batches arrive channels_last in memory (no copy when the model wants that); NCHW models get a copy.
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@dataclass
class TrainStep:
    """One training step of the recipe: built once per run (make_step), called on every batch.

    The loss is cross-entropy with label smoothing, on CutMixed soft targets with
    probability cutmix_p, falling by the fraction cutmix_decay of it over the
    run's total_steps (fade); a batch not CutMixed is mixed up when mixup > 0,
    the partner's weight up to a bound that rises from 0 to mixup by mid-run.
    The scaler is enabled only for fp16 autocast; disabled, it passes the loss
    and the optimizer step through unchanged. An ema, when given,
    averages the weights and BatchNorm statistics after every step.
    """
    optimizer: torch.optim.Optimizer
    scheduler: object = None  # stepped after every optimizer step, or None
    label_smoothing: float = 0.0
    cutmix_p: float = 0.0
    cutmix_decay: float = 0.0
    mixup: float = 0.0  # the partner's largest weight in mixup, reached at mid-run (0: off)
    num_classes: int = 10
    amp: bool = False  # autocast on CUDA
    channels_last: bool = False  # the layout batches are given to the model in
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cuda", enabled=False))
    ema: AveragedModel = None  # the running average of the model, or None
    total_steps: int = 0  # optimizer steps the whole run takes, what fading quantities count against (0: no fading)
    steps_done: int = 0  # optimizer steps taken so far (a resumed run restores it)

    def __call__(self, model, images, labels):
        """Forward, backward and update on one batch (on the model's device). Returns (loss, logits, labels):
        the batch-mean loss and, under CutMix, each sample's label of larger weight."""
        device = next(model.parameters()).device
        images, labels = to_device(images, device, self.channels_last), labels.to(device, non_blocking=True)
        targets = labels
        if self.cutmix_p > 0 or self.mixup > 0:
            images, targets = mix(images, labels, self.num_classes, self.cutmix_prob(), self.mixup_bound())
            labels = targets.argmax(1)
        with autocast(device, self.amp):
            logits = model(images)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss ({loss.item()})")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        self.steps_done += 1
        if self.ema is not None:
            self.ema.update_parameters(model)
        return loss, logits, labels

    def cutmix_prob(self):
        """This step's CutMix probability: cutmix_p, less cutmix_decay of it in proportion to the steps taken."""
        if not self.total_steps:
            return self.cutmix_p
        return self.cutmix_p * fade(self.steps_done, self.total_steps, self.cutmix_decay)

    def mixup_bound(self):
        """This step's largest mixup weight: mixup, times the share of the first half of the run done so far."""
        if not self.total_steps:
            return self.mixup
        return self.mixup * min(2 * self.steps_done / self.total_steps, 1.0)


def make_step(cfg, model, steps_per_epoch, num_classes):
    """The TrainStep of cfg's recipe for this model: optimizer, LR schedule, loss, mixed precision."""
    device = next(model.parameters()).device
    total = cfg.epochs * steps_per_epoch
    if float(cfg.warmup * total) - 1 == 0:  # OneCycleLR would divide by its warm-up length minus one step
        raise UserError(f"error: --warmup={cfg.warmup} of {total} steps is exactly one warm-up step, which the "
                        "one-cycle schedule cannot take; pick another --warmup")
    optimizer, scheduler = make_optimizer(cfg, model, steps_per_epoch)
    fp16 = cfg.amp and device.type == "cuda" and amp_dtype(device) == torch.float16
    # BatchNorm statistics are averaged too (use_buffers): the average gets the statistics of its own weights'
    # era, not those of the last step's.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    return TrainStep(optimizer, scheduler, cfg.label_smoothing, cfg.cutmix_p, cfg.cutmix_decay, cfg.mixup, num_classes,
                     cfg.amp, cfg.channels_last, torch.amp.GradScaler("cuda", enabled=fp16), ema, total_steps=total)


def final_model(model, step):
    """The weights a run evaluates, saves as its model and analyses: step's average once it has taken a step,
    else the trained model itself."""
    return step.ema.module if step.ema is not None and step.ema.n_averaged > 0 else model


@dataclass
class Position:
    """How far a stopped training epoch got: enough to finish it later as if it had never stopped."""
    step: int = 0  # batches done
    loss_sum: float = 0.0  # per-sample losses summed over those batches
    correct: int = 0
    seen: int = 0  # samples
    seconds: float = 0.0  # time the epoch has taken so far
    rng: torch.Tensor = None  # torch's RNG state at the stop (dropout, CutMix)


def train_one_epoch(model, loader, step, position=None, should_stop=None, on_step=None, desc="train"):
    """One pass over loader, or its rest after `position`, one step(model, images, labels) per batch.

    Returns {'loss': mean per sample, 'acc': percent, 'lr': LR of the last step,
    'seconds': time spent on the epoch, 'position': None}. Loss and accuracy are
    over every sample of the epoch (of all processes under torchrun). When
    should_stop() turns true before the last batch, the epoch stops after the
    current step and 'position' says where; the figures then cover the samples
    seen so far. Pass it back (with the loader skipping the used batches) to
    finish the epoch. on_step(steps done, batch-mean loss, LR used), when given,
    hears of every step. desc=None: no progress bar.
    """
    model.train()
    done = position or Position()
    loss_sum, correct, seen, t0 = done.loss_sum, done.correct, done.seen, time.perf_counter() - done.seconds
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
               disable=None if desc else True)  # None: no bar when not a terminal
    stopped = False
    for i, (images, labels) in enumerate(bar):
        lr = step.optimizer.param_groups[0]["lr"]  # the LR this step uses
        try:
            loss, logits, labels = step(model, images, labels)
        except FloatingPointError as e:
            raise FloatingPointError(f"{e} at step {done.step + i}") from None
        n, loss = labels.numel(), loss.item()
        loss_sum += loss * n  # loss is a batch mean
        correct += (logits.argmax(1) == labels).sum().item()
        seen += n
        if on_step is not None:
            on_step(step.steps_done, loss, lr)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}%", lr=f"{lr:.4f}")
        stopped = should_stop is not None and i + 1 < len(loader) and should_stop()
        if stopped:
            break
    seconds = time.perf_counter() - t0
    if stopped:
        position = Position(done.step + i + 1, loss_sum, correct, seen, seconds, torch.get_rng_state())
    else:
        position = None
        loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen], next(model.parameters()).device)
    return {"loss": loss_sum / seen, "acc": 100 * correct / seen, "lr": lr, "seconds": seconds, "position": position}


@torch.no_grad()
def predict(model, loader, *, amp=True, channels_last=False, view=None):
    """Logits (N, C) float32 and labels (N,) for a whole split, on the CPU, in loader order.

    view: a function of an image batch (mirror, shift) whose output the model
    sees instead, for test-time augmentation.
    """
    device = next(model.parameters()).device
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        images = to_device(images, device, channels_last)
        with autocast(device, amp):
            logits = model(view(images) if view else images).float()
        all_logits.append(logits.cpu())
        all_labels.append(labels)
    return torch.cat(all_logits), torch.cat(all_labels)


def metrics(logits, labels, device=None):
    """{'loss': mean cross-entropy per sample, 'acc': percent correct} over all samples given.

    Under torchrun, pass the device: the sums are then taken over every process's share.
    """
    loss = F.cross_entropy(logits, labels, reduction="sum").item()
    correct = (logits.argmax(1) == labels).sum().item()
    loss, correct, n = all_reduce_sum([loss, correct, len(labels)], device) if device else (loss, correct, len(labels))
    return {"loss": loss / n, "acc": 100 * correct / n}


def evaluate(model, loader, **kwargs):
    """Loss and accuracy over the loader's whole split, all processes' shares together under torchrun."""
    return metrics(*predict(model, loader, **kwargs), device=next(model.parameters()).device)
