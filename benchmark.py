"""Where an epoch's seconds go: python benchmark.py [--steps=N] [--repeats=N] [--full-epoch=false] [--json=PATH]
[any train.py option, e.g. --device=cuda --batch-size=512 --workers=4].

Measures, for the default Net and config, images per second of
  data      the training DataLoader alone (uint8 images in memory -> augmented, normalized batches)
  train     one optimizer step on a ready batch on the device (forward + backward + SGD)
  eval      inference on a ready batch on the device
  epoch     a real training epoch (loader + steps), as train.py runs it
and the seconds one pass over the split takes at that rate (the test split
for eval, the training split for the rest), plus peak memory. Warm-up steps are not timed, CUDA is synchronized before
every clock read, and each figure is the median of --repeats runs.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, replace

import torch

import engine
from config import UserError, parse_args, runtime
from data import load_data, make_loader, synthetic, worker_count
from transforms import train_transforms


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def clock(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def median_rate(run, images, repeats, device):
    """Median images/s of `run()` over repeats; run() processes `images` images."""
    rates = []
    for _ in range(repeats):
        t0 = clock(device)
        run()
        rates.append(images / (clock(device) - t0))
    return statistics.median(rates)


def data_rate(loader, steps, repeats, device):
    it = iter(loader)
    next(it)  # warm-up: starts the workers

    def run():
        for _ in range(steps):
            next(it)
    return median_rate(run, steps * loader.batch_size, repeats, device)


def step_rates(model, step, batch, args, device):
    """Images/s of train.py's own training step (an engine.TrainStep) and of inference, on one ready batch."""
    images, labels = batch

    @torch.no_grad()
    def eval_step():
        with engine.autocast(device, step.amp):
            model(images)

    rates = {}
    for name, run, mode in (("train", lambda: step(model, images, labels), model.train),
                            ("eval", eval_step, model.eval)):
        mode()
        for _ in range(3):  # warm-up: allocator, cuDNN autotuning, torch.compile
            run()
        rates[name] = median_rate(lambda: [run() for _ in range(args.steps)], args.steps * len(images),
                                  args.repeats, device)
    return rates


def main(argv=None):
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    own.add_argument("--repeats", type=int, default=3, help="repeats; the median is reported")
    own.add_argument("--full-epoch", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    own.add_argument("--json", default="benchmark.json", help="where to write the results")
    args, rest = own.parse_known_args(sys.argv[1:] if argv is None else argv)
    cfg = parse_args(rest)
    device = runtime(cfg)
    # --dry-run needs no data: a CIFAR-10-sized synthetic training split
    data = synthetic(n_train=45_000, n_test=10_000, seed=cfg.seed) if cfg.dry_run else load_data(cfg)
    loader = make_loader(data.train, train_transforms(cfg), cfg, device, train=True)
    model = engine.build_model(cfg, len(data.classes), device)
    fast_model = torch.compile(model) if cfg.compile else model
    images, labels = next(iter(make_loader(data.train, train_transforms(cfg), replace(cfg, workers=0), device,
                                           train=True)))
    batch = (engine.to_device(images, device, cfg.channels_last), labels.to(device))

    rates = {"data": data_rate(loader, args.steps, args.repeats, device)}
    timed_step = engine.make_step(cfg, model, 3 + args.steps * args.repeats, len(data.classes))
    rates.update(step_rates(fast_model, timed_step, batch, args, device))
    if args.full_epoch:
        step = engine.make_step(cfg, model, len(loader), len(data.classes))
        t0 = clock(device)
        engine.train_one_epoch(fast_model, loader, step, desc=None)
        epoch_seconds = clock(device) - t0
        rates["epoch"] = len(loader) * cfg.batch_size / epoch_seconds
    if device.type == "cuda":
        peak = {"peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    else:  # ru_maxrss is KiB on Linux: the whole process, data included
        peak = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    sizes = {name: len(data.test.labels) if name == "eval" else len(data.train.labels) for name in rates}
    print(f"\n{'stage':8} {'images/s':>10} {'s/pass':>8}   (train {sizes['train']:,} and test {len(data.test.labels):,}"
          f" images, batch {cfg.batch_size}, {torch.get_num_threads()} threads, {worker_count(cfg, device)} workers)")
    for name, rate in rates.items():
        print(f"{name:8} {rate:10.0f} {sizes[name] / rate:8.1f}")
    for name, mib in peak.items():
        print(f"{name}: {mib:.0f}")
    result = dict(device=str(device), gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                  cpu=f"{cpu_name()}, {os.cpu_count()} cores", threads=torch.get_num_threads(),
                  workers=worker_count(cfg, device), batch_size=cfg.batch_size, steps=args.steps, repeats=args.repeats,
                  torch=torch.__version__, data=data.source if not cfg.dry_run else "synthetic 45,000",
                  images_per_s=rates, seconds_per_pass={k: sizes[k] / v for k, v in rates.items()},
                  **peak, config=asdict(cfg))
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(str(e))  # the one line on stderr, exit code 1
