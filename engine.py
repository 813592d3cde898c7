"""Training and evaluation loops and the metrics built on them.

Every function returns plain dicts or tensors; nothing here prints except the
progress bar, and the device always comes from the model's parameters.
"""
import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from transforms import cutmix


def autocast(device, enabled=True):
    """Mixed precision on CUDA: bf16 where the GPU has it, else fp16 (needs a GradScaler)."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype(device))


def amp_dtype(device):
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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


def backward_and_step(loss, optimizer, scaler=None):
    """Gradients of loss and one optimizer step; with an fp16 GradScaler, scaled to avoid underflow."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def train_one_epoch(model, loader, optimizer, scheduler=None, *, label_smoothing=0.0, cutmix_p=0.0,
                    num_classes=10, scaler=None, amp=True, channels_last=False, desc="train", progress=True,
                    should_stop=None, partial=None):
    """One pass over loader. Returns {'loss': mean per sample, 'acc': percent, 'lr': LR of the last step}.

    Loss and accuracy are summed per sample over the epoch and divided by the
    number of samples seen, over all processes under torchrun. Under CutMix a
    sample counts as correct when the prediction matches the label with the
    larger weight. When should_stop() turns true, the epoch stops after the
    current step and returns {'partial': running sums}; passing them back as
    `partial` (with the loader skipping the used batches) finishes the epoch.
    """
    device = next(model.parameters()).device
    model.train()
    total_loss, correct, seen, steps = partial or (0.0, 0, 0, 0)
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
               disable=None if progress else True)  # None: no bar when not a terminal
    for i, (images, labels) in enumerate(bar):
        step = steps + i
        images, labels = to_device(images, device, channels_last), labels.to(device, non_blocking=True)
        if cutmix_p > 0:
            images, targets = cutmix(images, labels, num_classes, cutmix_p)
            labels = targets.argmax(1)
        else:
            targets = labels
        with autocast(device, amp):
            logits = model(images)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss ({loss.item()}) at step {step}")
        lr = optimizer.param_groups[0]["lr"]  # the LR this step uses
        backward_and_step(loss, optimizer, scaler)
        if scheduler is not None:
            scheduler.step()
        n = labels.numel()
        total_loss += loss.item() * n  # loss is a batch mean
        correct += (logits.argmax(1) == labels).sum().item()
        seen += n
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{100 * correct / seen:.1f}%", lr=f"{lr:.4f}")
        if should_stop and i + 1 < len(loader) and should_stop():
            return {"partial": (total_loss, correct, seen, step + 1)}
    total_loss, correct, seen = all_reduce_sum([total_loss, correct, seen], device)
    return {"loss": total_loss / seen, "acc": 100 * correct / seen, "lr": lr}


@torch.no_grad()
def predict(model, loader, *, amp=True, channels_last=False, mirror=False):
    """Logits (N, C) float32 and labels (N,) for a whole split, on the CPU, in loader order.

    mirror=True: the logits of each image's left-right mirror, for flip test-time
    augmentation (the mean of the plain and mirror logits).
    """
    device = next(model.parameters()).device
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        images = to_device(images, device, channels_last)
        with autocast(device, amp):
            logits = model(images.flip(3) if mirror else images).float()
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


def misclassified(logits, labels, k=25):
    """Indices of up to k wrong predictions, the most confident mistakes first."""
    confidence, predicted = logits.softmax(1).max(1)
    wrong = (predicted != labels).nonzero().flatten()
    return wrong[confidence[wrong].argsort(descending=True)][:k]


def confusion_matrix(logits, labels, num_classes):
    """(C, C) counts: row = true class, column = predicted class."""
    index = labels * num_classes + logits.argmax(1)
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class_accuracy(confusion):
    """Percent correct per true class."""
    return 100 * confusion.diag() / confusion.sum(1).clamp(min=1)
