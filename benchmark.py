"""Where an epoch's seconds go, and how two settings compare on this machine:
python benchmark.py [--against="OPTIONS"] [--steps=N] [--repeats=N] [--epochs=N] [--json=PATH] [train.py options]

Measures, for the config that the train.py options give (default: the default Net and recipe),
images per second of
  data      the training DataLoader alone (uint8 images in memory -> augmented, normalized batches)
  train     one training step on a ready batch on the device (forward, backward, optimizer)
  eval      inference on a ready batch on the device
  epoch     whole training epochs (loader + steps), as train.py runs them (--epochs of them; 0: none)
with the seconds one pass over the split takes at that rate (the test split for eval, the training split for
the rest), the arithmetic rate that means (GFLOP/s: 2 FLOPs per multiply-add, a training step counted as 3x
the forward pass), peak memory, and the warm-up seconds of the first steps (torch.compile's compiling).

--against="--compile=false --batch-size=256" times a second setting, those options on top of the first,
side by side: every stage of both settings is measured in turn, A B A B ..., so a machine that speeds up or
slows down during the run affects both alike, and the table ends with the ratio of their epoch times.

Warm-up steps are not timed, CUDA is synchronized before every clock read, and each figure is the median of
--repeats rounds (epochs: of --epochs rounds).
"""
import argparse
import json
import resource
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch

import engine
from config import Config, UserError, parse_args
from data import load_data, synthetic
from loader import make_loader, worker_count
from model import multiply_adds
from runtime import host, runtime, sigterm_interrupts
from transforms import train_transforms


def clock(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class Setting:
    """One configuration under test, built once: its loader, training step, model and a ready batch."""
    name: str
    cfg: Config
    loader: torch.utils.data.DataLoader
    model: torch.nn.Module  # compiled when cfg.compile
    step: engine.TrainStep
    batch: tuple
    macs: int  # multiply-adds per image, forward, of this setting's model
    data_iter: object = None  # the running iterator of `loader` for the data stage


def build(name, cfg, data, device, args):
    """A Setting; its TrainStep's schedule is sized from the steps the benchmark takes at this setting's batch
    size (warm-up, rounds, epochs), so the LR never runs out while timing."""
    loader = make_loader(data.train, train_transforms(cfg), cfg, device, train=True)
    plain = engine.build_model(cfg, len(data.classes), device)
    images, labels = next(iter(make_loader(data.train, train_transforms(cfg), replace(cfg, workers=0), device,
                                           train=True)))
    batch = (engine.to_device(images, device, cfg.channels_last), labels.to(device))
    steps = 3 + args.steps * args.repeats + args.epochs * len(loader)
    step = engine.make_step(cfg, plain, steps, len(data.classes))
    return Setting(name, cfg, loader, torch.compile(plain) if cfg.compile else plain, step, batch,
                   multiply_adds(plain))


def stages(s, device, steps):
    """(stage name, function that runs one timed round, images it processes) for a Setting."""
    images, labels = s.batch

    def data():
        for _ in range(steps):
            next(s.data_iter)

    def train():
        s.model.train()
        for _ in range(steps):
            s.step(s.model, images, labels)

    @torch.no_grad()
    def evaluate():
        s.model.eval()
        for _ in range(steps):
            with engine.autocast(device, s.step.amp):
                s.model(images)

    n = steps * len(images)
    return [("data", data, steps * s.loader.batch_size), ("train", train, n), ("eval", evaluate, n)]


def warm_up(s, device):
    """Seconds of three training and three inference steps (allocator, cuDNN autotuning, torch.compile)."""
    s.data_iter = iter(s.loader)
    next(s.data_iter)  # starts the workers
    t0 = clock(device)
    for name, run, _ in stages(s, device, 3):
        if name != "data":
            run()
    return clock(device) - t0


def measure(settings, device, args):
    """{setting: {stage: images/s}}, every stage of every setting timed in turn, round after round."""
    samples = {s.name: {} for s in settings}
    for _ in range(args.repeats):
        for s in settings:
            for name, run, images in stages(s, device, args.steps):
                t0 = clock(device)
                run()
                samples[s.name].setdefault(name, []).append(images / (clock(device) - t0))
    for _ in range(args.epochs):
        for s in settings:
            t0 = clock(device)
            engine.train_one_epoch(s.model, s.loader, s.step, desc=None)
            samples[s.name].setdefault("epoch", []).append(len(s.loader) * s.loader.batch_size / (clock(device) - t0))
    return {name: {stage: statistics.median(v) for stage, v in by_stage.items()} for name, by_stage in samples.items()}


def main(argv=None):
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--against", default=None, help="train.py options of a second setting, timed side by side")
    own.add_argument("--steps", type=int, default=20, help="timed steps per round")
    own.add_argument("--repeats", type=int, default=3, help="rounds of the data, train and eval stages")
    own.add_argument("--epochs", type=int, default=1, help="rounds of a whole training epoch (0: none)")
    own.add_argument("--json", default="benchmark.json", help="where to write the results")
    args, rest = own.parse_known_args(sys.argv[1:] if argv is None else argv)
    if min(args.steps, args.repeats) < 1 or args.epochs < 0:
        raise UserError("error: --steps and --repeats must be at least 1, --epochs at least 0")
    cfg = parse_args(rest)
    configs = {"A": cfg}
    if args.against is not None:
        configs["B"] = parse_args(rest + shlex.split(args.against))
    device = runtime(cfg)
    # --dry-run needs no data: a CIFAR-10-sized synthetic training split
    data = synthetic(n_train=45_000, n_test=10_000, seed=cfg.seed) if cfg.dry_run else load_data(cfg)
    settings = [build(name, c, data, device, args) for name, c in configs.items()]
    warm = {s.name: warm_up(s, device) for s in settings}
    rates = measure(settings, device, args)
    if device.type == "cuda":
        peak = {"peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    else:  # ru_maxrss is KiB on Linux: the whole process (every setting), data included
        peak = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    sizes = {"data": len(data.train.labels), "train": len(data.train.labels), "eval": len(data.test.labels),
             "epoch": len(data.train.labels)}
    result = dict(device=str(device), **host(device), steps=args.steps, repeats=args.repeats,
                  epochs=args.epochs, data=data.source if not cfg.dry_run else "synthetic 45,000",
                  **peak, settings={})
    for s in settings:
        r = rates[s.name]
        flops = {"train": 6 * s.macs, "eval": 2 * s.macs, "epoch": 6 * s.macs}  # training: forward + 2x backward
        result["settings"][s.name] = dict(
            options=" ".join(rest + (shlex.split(args.against) if s.name == "B" else [])),
            workers=worker_count(s.cfg, device), batch_size=s.cfg.batch_size, mmacs_per_image=s.macs / 1e6,
            warmup_seconds=warm[s.name],
            images_per_s=r, seconds_per_pass={k: sizes[k] / v for k, v in r.items()},
            gflops={k: flops[k] * v / 1e9 for k, v in r.items() if k in flops}, config=asdict(s.cfg))
    if "B" in rates and "epoch" in rates["A"]:
        result["epoch_time_ratio_a_over_b"] = rates["B"]["epoch"] / rates["A"]["epoch"]
    print_table(result)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.json}")
    return result


def print_table(result):
    print(f"\n{result['gpu'] or result['cpu']} ({result['cores']} cores: {' '.join(result['cpu_features']) or 'no AVX2'}), "
          f"{result['threads']} threads, torch {result['torch']}")
    for name, s in result["settings"].items():
        print(f"\n{name}: {s['options'] or 'the defaults'} (batch {s['batch_size']}, {s['workers']} workers, "
              f"{s['mmacs_per_image']:.1f} MMACs per image forward; warm-up {s['warmup_seconds']:.1f} s)")
        print(f"{'stage':8} {'images/s':>10} {'s/pass':>8} {'GFLOP/s':>8}")
        for stage, rate in s["images_per_s"].items():
            gflops = s["gflops"].get(stage)
            print(f"{stage:8} {rate:10.0f} {s['seconds_per_pass'][stage]:8.1f} "
                  f"{'' if gflops is None else f'{gflops:8.1f}'}")
    for name, mib in result.items():
        if name.startswith("peak_"):
            print(f"{name}: {mib:.0f}")
    if "epoch_time_ratio_a_over_b" in result:
        print(f"\nepoch time A / B: {result['epoch_time_ratio_a_over_b']:.3f}")


if __name__ == "__main__":
    try:
        with sigterm_interrupts():
            main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the timings are written only at the end
        sys.exit("\ninterrupted; nothing written (an earlier benchmark.json is unchanged)")
    except UserError as e:
        sys.exit(str(e))  # the one line on stderr, exit code 1
