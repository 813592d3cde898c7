"""Train Net (or DilatedNet: --model=dilated) on CIFAR-10: python train.py [--key=value ...];
python train.py --help lists every key.

Writes runs/<date-time>/ (or --out-dir): config.json, history.csv, best.pt, last.pt,
curves.png, misclassified.png, confusion.png and summary.json.
"""
import contextlib
import copy
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, replace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torchsummary import summary

import engine
import plots
from checkpoint import load_checkpoint, load_weights, write_atomic, write_history_csv, write_json
from config import CIFAR10_MEAN, CIFAR10_STD, IMAGE_SIZE, flag, parse_args, resolve_device
from data import load_data, make_loader, worker_count
from model import MODELS, architecture_rules, count_params, receptive_field
from optim import make_optimizer
from transforms import test_transforms, train_transforms


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_run_dir(cfg):
    if cfg.out_dir:
        path = cfg.out_dir
    else:
        path = os.path.join("runs", ("dry-run-" if cfg.dry_run else "") + time.strftime("%Y%m%d-%H%M%S"))
    if os.path.isdir(path) and os.listdir(path) and not cfg.overwrite:
        sys.exit(f"error: {path} already holds files; pick another --out-dir, --resume={path}, or --overwrite")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        sys.exit(f"error: cannot write to output dir {path} ({e.strerror}); pick another --out-dir")
    return path


def print_model_report(model, device):
    """torchsummary table, parameter count, receptive-field table and the assignment's rules."""
    probe = copy.deepcopy(model)  # torchsummary runs a train-mode batch, which would move BN statistics
    if device.type not in ("cpu", "cuda"):  # torchsummary knows only these two
        probe = probe.cpu()
    summary(probe, (3, IMAGE_SIZE, IMAGE_SIZE), device=next(probe.parameters()).device.type)
    print(f"trainable parameters: {count_params(model):,}")
    print(f"\n{'layer':24} {'k':>2} {'s':>2} {'d':>2} {'jump':>5} {'RF':>4}")
    for r in receptive_field(model):
        print(f"{r['layer']:24} {r['kernel']:>2} {r['stride']:>2} {r['dilation']:>2} {r['jump']:>5} {r['rf']:>4}")
    print(f"\n{'rule':36} {'value':>14}  result")
    for rule, value, ok in architecture_rules(model):
        print(f"{rule:36} {str(value):>14}  {'pass' if ok else 'FAIL'}")


def save_analysis(model, loader, data, run_dir, cfg):
    """Evaluate once on the test split; save the confusion matrix and misclassified grid.

    Returns {'loss', 'acc'} (plain single view, the headline) and 'flip_acc' (flip test-time augmentation).
    """
    logits, labels = engine.predict(model, loader, amp=cfg.amp, channels_last=cfg.channels_last)
    confusion = engine.confusion_matrix(logits, labels, len(data.classes))
    wrong = engine.misclassified(logits, labels, k=25)
    predicted = logits.argmax(1)
    plots.plot_confusion(confusion, data.classes, os.path.join(run_dir, "confusion.png"))
    plots.plot_misclassified(data.test.images[wrong.numpy()], labels[wrong].tolist(), predicted[wrong].tolist(),
                             data.classes, os.path.join(run_dir, "misclassified.png"), CIFAR10_MEAN, CIFAR10_STD)
    per_class = engine.per_class_accuracy(confusion)
    print("per-class accuracy: " + ", ".join(f"{c} {a:.1f}%" for c, a in zip(data.classes, per_class.tolist())))
    mirror_logits, _ = engine.predict(model, loader, amp=cfg.amp, channels_last=cfg.channels_last, mirror=True)
    flip_acc = engine.metrics((logits + mirror_logits) / 2, labels)["acc"]  # flip TTA: mean logits of image and mirror
    return dict(engine.metrics(logits, labels), flip_acc=flip_acc)


def init_distributed(device):
    """(rank, world size, device) under torchrun, which sets WORLD_SIZE; (0, 1, device) in a plain run.

    NCCL with one GPU per process on CUDA, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    if rank:
        sys.stdout = open(os.devnull, "w")  # only rank 0 prints
    return rank, world, device


def prepare(cfg, device, rank=0, world=1):
    """Runtime settings, data and the test loader (this rank's share), printing what was found."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    print(f"device: {device}, {torch.get_num_threads()} CPU threads, {worker_count(cfg, device)} data workers"
          + (f", {world} processes" if world > 1 else ""))
    data = load_data(cfg)
    print(f"data: {data.source}; train {len(data.train.labels):,} images, "
          f"{data.test_name} {len(data.test.labels):,} images, {len(data.classes)} classes")
    return data, make_loader(data.test, test_transforms(cfg), cfg, device, train=False, rank=rank, world=world)


def build_model(cfg, num_classes, device):
    model = MODELS[cfg.model](num_classes=num_classes, dropout=cfg.dropout)
    return model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)


# The optimizer and its schedule are built from these and restored from the checkpoint as they were, so a
# changed value would be ignored (or, for epochs and batch_size, break the schedule): refused on resume.
FIXED_ON_RESUME = ("epochs", "batch_size", "lr", "muon_lr", "warmup", "momentum", "weight_decay")


def same_model(cfg, ckpt):
    """A --model override on a checkpoint: name the flag to drop, not a load_state_dict size mismatch."""
    if cfg.model != ckpt["config"].model:
        sys.exit(f"error: {ckpt['path']} holds a --model={ckpt['config'].model} network; drop --model={cfg.model}")


def evaluate_checkpoint(argv, path):
    ckpt = load_checkpoint(path)
    cfg = parse_args(argv, base=replace(ckpt["config"], out_dir=""))  # never write into the run itself
    same_model(cfg, ckpt)
    device = resolve_device(cfg.device)
    data, test_loader = prepare(cfg, device)
    model = build_model(cfg, len(data.classes), device)
    load_weights(model, ckpt["model"])
    run_dir = cfg.out_dir or os.path.join(os.path.dirname(ckpt["path"]), "evaluate")
    os.makedirs(run_dir, exist_ok=True)
    result = save_analysis(model, test_loader, data, run_dir, cfg)
    print(f"{ckpt['path']} (epoch {ckpt['epoch']}): {data.test_name} loss {result['loss']:.4f} "
          f"acc {result['acc']:.2f}% (flip TTA {result['flip_acc']:.2f}%); plots in {run_dir}")
    return {"checkpoint": ckpt["path"], "epoch": ckpt["epoch"], "test_loss": result["loss"],
            "test_acc": result["acc"], "test_acc_flip_tta": result["flip_acc"], "out_dir": run_dir}


@contextlib.contextmanager
def stop_on_signals():
    """An Event that Ctrl-C or SIGTERM sets (a second Ctrl-C interrupts at once); old handlers come back after."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = parse_args(argv)
    if cfg.evaluate:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            sys.exit("error: --evaluate runs in one process; start it with python, not torchrun")
        return evaluate_checkpoint(argv, cfg.evaluate)
    ckpt = None
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume)
        cfg = replace(parse_args(argv, base=ckpt["config"]), resume=cfg.resume)
        for name in FIXED_ON_RESUME:
            if getattr(cfg, name) != getattr(ckpt["config"], name):
                sys.exit(f"error: the run was planned with {flag(name)}={getattr(ckpt['config'], name)} and its "
                         f"optimizer and LR schedule depend on that; resume without {flag(name)}, or start a new run")
        same_model(cfg, ckpt)
    if cfg.dry_run:  # tiny and quick, whatever the config says
        cfg = replace(cfg, epochs=min(cfg.epochs, 2), batch_size=16, workers=0)

    seed_everything(cfg.seed)
    rank, world, device = init_distributed(resolve_device(cfg.device))
    if world > 1 and cfg.sync_bn and device.type != "cuda":
        sys.exit("error: --sync-bn needs CUDA (PyTorch's SyncBatchNorm is GPU-only); leave it off on CPU")
    if cfg.batch_size % world:
        sys.exit(f"error: --batch-size={cfg.batch_size} is the global batch and must divide by the {world} processes")
    data, test_loader = prepare(cfg, device, rank, world)  # before anything is written: bad data leaves no trace
    run_dir = os.path.dirname(ckpt["path"]) if ckpt else new_run_dir(cfg) if rank == 0 else None
    if world > 1:
        box = [run_dir]
        dist.broadcast_object_list(box)  # every rank writes nothing, but must agree on where rank 0 does
        run_dir = box[0]
    train_loader = make_loader(data.train, train_transforms(cfg), cfg, device, train=True, rank=rank, world=world)
    model = build_model(cfg, len(data.classes), device)
    print_model_report(model, device)
    if world > 1 and cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state_dict keys as plain BatchNorm
    fast_model = torch.compile(model) if cfg.compile else model  # same weights; `model` is what gets saved
    train_model = DDP(fast_model, device_ids=[device] if device.type == "cuda" else None) if world > 1 else fast_model

    optimizer, scheduler, scaler = make_optimizer(cfg, model, len(train_loader), device)
    history, best_acc, best_epoch, start, partial = [], -1.0, 0, 1, None
    if ckpt:
        load_weights(model, ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        history, best_acc, best_epoch = ckpt["history"], ckpt["best_acc"], ckpt["best_epoch"]
        start, partial = ckpt["epoch"] + 1, ckpt.get("partial")
        print(f"resuming {ckpt['path']} at epoch {start}" + (f", step {partial['sums'][3] + 1}" if partial else ""))
    if rank == 0:
        write_json(asdict(cfg), os.path.join(run_dir, "config.json"))

    def save(epoch, is_best=False, **extra):
        state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                     scaler=scaler.state_dict() if scaler else None, epoch=epoch, history=history,
                     best_acc=best_acc, best_epoch=best_epoch, config=asdict(cfg), **extra)
        for name in ("last.pt", "best.pt") if is_best else ("last.pt",):
            write_atomic(os.path.join(run_dir, name), lambda tmp: torch.save(state, tmp))

    resume_hint = f"continue with: python train.py --resume={run_dir}"
    print(f"\ntraining {cfg.epochs} epochs, {len(train_loader)} steps each, batch {cfg.batch_size}; writing {run_dir}")
    with stop_on_signals() as stop:  # Ctrl-C or SIGTERM: finish the current step, save, exit
        for epoch in range(start, cfg.epochs + 1):
            t0 = time.perf_counter() - (partial.get("seconds", 0.0) if partial else 0.0)  # plus the time before a stop
            # Everything random in an epoch follows from (seed, epoch), or from the saved state when an
            # epoch continues, so a resumed run matches an uninterrupted one.
            if partial:
                torch.set_rng_state(partial["rng"])
                train_loader.sampler.set_epoch(epoch, skip=partial["sums"][3] * train_loader.batch_size)
            else:
                torch.manual_seed(cfg.seed * 100_003 + epoch)
                train_loader.sampler.set_epoch(epoch)
            try:
                train = engine.train_one_epoch(
                    train_model, train_loader, optimizer, scheduler, label_smoothing=cfg.label_smoothing,
                    cutmix_p=cfg.cutmix_p, num_classes=len(data.classes), scaler=scaler, amp=cfg.amp,
                    channels_last=cfg.channels_last, desc=f"epoch {epoch}/{cfg.epochs}", progress=rank == 0,
                    should_stop=stop.is_set, partial=partial and partial["sums"])
                partial = None
                if "partial" in train:
                    if rank == 0:
                        save(epoch - 1, partial=dict(sums=train["partial"], rng=torch.get_rng_state(),
                                                     seconds=time.perf_counter() - t0))
                    sys.exit(f"\nstopped in epoch {epoch} after step {train['partial'][3]}, saved in "
                             f"{run_dir}/last.pt; {resume_hint}")
                engine.average_buffers(model)
                test = engine.evaluate(fast_model, test_loader, amp=cfg.amp, channels_last=cfg.channels_last)
            except KeyboardInterrupt:  # a second Ctrl-C: leave now, last.pt keeps the last finished epoch
                sys.exit(f"\ninterrupted in epoch {epoch}; " + (f"{resume_hint} from epoch {history[-1]['epoch']}"
                                                               if history else "no epoch finished"))
            except FloatingPointError as e:
                sys.exit(f"error: epoch {epoch}: {e}; stopped. {run_dir}/last.pt holds the last good epoch "
                         f"({epoch - 1}); try a lower --lr")
            seconds = time.perf_counter() - t0
            history.append(dict(epoch=epoch, train_loss=train["loss"], train_acc=train["acc"],
                                test_loss=test["loss"], test_acc=test["acc"], lr=train["lr"], seconds=seconds))
            is_best = test["acc"] > best_acc
            if is_best:
                best_acc, best_epoch = test["acc"], epoch
            print(f"epoch {epoch:3d}/{cfg.epochs}  train loss {train['loss']:.4f} acc {train['acc']:6.2f}%  "
                  f"{data.test_name} loss {test['loss']:.4f} acc {test['acc']:6.2f}%  lr {train['lr']:.5f}  "
                  f"{seconds:6.1f}s{'  *' if is_best else ''}", flush=True)
            if rank == 0:
                save(epoch, is_best)
                write_history_csv(history, os.path.join(run_dir, "history.csv"))
            if stop.is_set() and epoch < cfg.epochs:
                sys.exit(f"\nstopped after epoch {epoch}, saved in {run_dir}/last.pt; {resume_hint}")

    if world > 1:
        dist.destroy_process_group()
    if rank:  # the other ranks' work ends with training; rank 0 evaluates the whole split and writes
        return dict(history=history, run_dir=run_dir)
    plots.plot_curves(history, os.path.join(run_dir, "curves.png"), data.test_name)
    if world > 1:  # test_loader held this rank's share only
        test_loader = make_loader(data.test, test_transforms(cfg), cfg, device, train=False)
    final = save_analysis(model, test_loader, data, run_dir, cfg)
    result = dict(params=count_params(model), receptive_field=receptive_field(model)[-1]["rf"],
                  best_test_acc=best_acc, best_epoch=best_epoch, final_test_acc=final["acc"],
                  final_test_loss=final["loss"], final_test_acc_flip_tta=final["flip_acc"], epochs=cfg.epochs,
                  train_seconds=sum(h["seconds"] for h in history), test_split=data.test_name,
                  data=data.source, device=str(device), processes=world, run_dir=run_dir, history=history)
    write_json(result, os.path.join(run_dir, "summary.json"))
    print(f"\nfinal {data.test_name} acc {final['acc']:.2f}% (best {best_acc:.2f}% at epoch {best_epoch}; "
          f"flip TTA {final['flip_acc']:.2f}%); "
          f"{result['train_seconds']:.0f}s of training; files in {run_dir}")
    return result


if __name__ == "__main__":
    main()
