"""Train Net (or another --model) on CIFAR-10: python train.py [--key=value ...]; --help lists every key.

Writes runs/<date-time>/ (or --out-dir): config.json, history.csv, best.pt, last.pt, curves.png (after every
epoch), misclassified.png, gradcam.png, confusion.png, summary.json, and with --tensorboard tensorboard/.
"""
import contextlib
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from shlex import quote

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import engine
import logs
import report
from config import Config, UserError, describe_recipe, parse_args
from data import Data, load_data, outermost_missing
from loader import epoch_seed, make_loader, worker_count
from logs import write_json
from model import count_params, receptive_field
from runtime import host, init_distributed, runtime, seed_everything, sigterm_interrupts, stop_on_signals
from transforms import test_transforms, train_transforms


def prepare(cfg, device, world=1):
    """The run's Data, printing where it runs and what was found."""
    print(f"device: {device}, {torch.get_num_threads()} CPU threads, {worker_count(cfg, device)} data workers"
          + (f", {world} processes" if world > 1 else ""))
    data = load_data(cfg)
    print(f"data: {data.source}; train {len(data.train.labels):,} images, "
          f"{data.test_name} {len(data.test.labels):,} images, {len(data.classes)} classes")
    if data.note:
        print(f"note: {data.note}")
    return data


def eval_loader(data, cfg, device, rank=0, world=1):
    """The evaluation split in order, or this rank's share of it under torchrun."""
    return make_loader(data.test, test_transforms(), cfg, device, train=False, rank=rank, world=world)


def evaluate_checkpoint(argv, path):
    """Evaluate a checkpoint on the data's evaluation split: plots and summary.json in RUN/evaluate (or --out-dir)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("error: --evaluate runs in one process; start it with python, not torchrun")
    ckpt = checkpoint.load_checkpoint(path)
    cfg = checkpoint.with_overrides(ckpt, argv, out_dir="", overwrite=False)  # never write into the run itself
    device = runtime(cfg)
    data = prepare(cfg, device)
    model = engine.build_model(cfg, len(data.classes), device)
    checkpoint.load_weights(model, ckpt, data.classes)
    name = os.path.splitext(os.path.basename(ckpt["path"]))[0]
    default = os.path.join(os.path.dirname(ckpt["path"]), "evaluate" if name == "last" else f"evaluate-{name}")
    out_dir = cfg.out_dir or default
    created = outermost_missing(out_dir)
    checkpoint.make_out_dir(out_dir, cfg.overwrite, "")
    best = ckpt.get("best_epoch", ckpt["epoch"])
    print(f"evaluating {ckpt['path']} (epoch {ckpt['epoch']})" + (
        f"; the best val accuracy was at epoch {best}: evaluate {os.path.dirname(ckpt['path'])}/best.pt for that one"
        if name == "last" and best != ckpt["epoch"] else ""))
    try:
        with sigterm_interrupts():
            result = report.save_analysis(model, eval_loader(data, cfg, device), data, out_dir, cfg)
    except KeyboardInterrupt:  # half the plots must not block the rerun
        if created:
            shutil.rmtree(created, ignore_errors=True)
        kept = f"{out_dir} is removed" if created else f"{out_dir} keeps what it held and any plots written"
        raise UserError(f"\ninterrupted; {kept}; rerun: python train.py --evaluate={quote(path)}") from None
    summary = {"checkpoint": ckpt["path"], "epoch": ckpt["epoch"], "test_split": data.test_name,
               "test_loss": result["loss"], "test_acc": result["acc"], "test_acc_flip_tta": result["flip_acc"],
               "test_acc_flip_shift_tta": result["flip_shift_acc"],
               "data": data.source, "out_dir": out_dir}
    write_json(summary, os.path.join(out_dir, "summary.json"))
    print(f"{data.test_name} loss {result['loss']:.4f} acc {result['acc']:.2f}% (flip TTA {result['flip_acc']:.2f}%, "
          f"flip + shift {result['flip_shift_acc']:.2f}%); "
          f"plots and summary.json in {out_dir}")
    return summary


@dataclass
class Run:
    """What the epoch loop works on: built once by main, its progress updated every epoch."""
    cfg: Config
    data: Data
    model: torch.nn.Module  # the plain model: what is saved, evaluated at the end and analysed
    train_model: torch.nn.Module  # the same weights, compiled and/or DDP-wrapped
    eval_model: torch.nn.Module  # the same weights, compiled or not
    step: engine.TrainStep
    train_loader: torch.utils.data.DataLoader
    test_loader: torch.utils.data.DataLoader
    run_dir: str
    rank: int
    progress: checkpoint.Progress
    log: logs.RunLog  # where each epoch's record and each step's values go


def start_run(cfg, ckpt, data, device, rank, world):
    """The Run of this config: loaders, model and training step, and its dir (made, nothing written in it yet).

    ckpt: the checkpoint to continue (cfg.resume) or whose weights start this run (cfg.init_from), or None.
    """
    train_loader = make_loader(data.train, train_transforms(cfg), cfg, device, train=True, rank=rank, world=world)
    model = engine.build_model(cfg, len(data.classes), device)
    report.print_model_report(model, device)
    if world > 1 and cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state_dict keys as plain BatchNorm
    eval_model = torch.compile(model) if cfg.compile else model  # same weights; `model` is what gets saved
    train_model = DDP(eval_model, device_ids=[device] if device.type == "cuda" else None) if world > 1 else eval_model
    step = engine.make_step(cfg, model, len(train_loader), len(data.classes))
    progress = checkpoint.Progress()
    if cfg.resume:
        progress = checkpoint.restore(ckpt, model, step, data.classes)
        print(f"resuming {ckpt['path']} at epoch {progress.epoch + 1}"
              + (f", step {progress.position.step + 1}" if progress.position else ""))
    elif ckpt:
        checkpoint.load_weights(model, ckpt, data.classes)
        print(f"starting from the weights of {ckpt['path']} (epoch {ckpt['epoch']}), new optimizer and schedule")
    # Made last: weights that do not fit (other classes, another --model) leave no empty folder behind.
    run_dir = os.path.dirname(ckpt["path"]) if cfg.resume else checkpoint.new_run_dir(cfg) if rank == 0 else None
    if world > 1:
        box = [run_dir]
        dist.broadcast_object_list(box)  # every rank writes nothing, but must agree on where rank 0 does
        run_dir = box[0]
    return Run(cfg, data, model, train_model, eval_model, step, train_loader, eval_loader(data, cfg, device, rank, world),
               run_dir, rank, progress, logs.RunLog(cfg, run_dir, data.test_name, rank, step.steps_done))


def held(epoch):
    """What last.pt holds after `epoch` finished epochs, in words."""
    return f"the end of epoch {epoch}" if epoch else "the initial weights"


@contextlib.contextmanager
def epoch_faults(run, epoch):
    """A second Ctrl-C, or a loss or weights turned non-finite, inside epoch `epoch`: one line that says what
    last.pt holds and what to do."""
    try:
        yield
    except KeyboardInterrupt:  # a second Ctrl-C: leave now, last.pt keeps the last finished epoch
        raise UserError(f"\ninterrupted in epoch {epoch}; {run.run_dir}/last.pt holds {held(run.progress.epoch)}; "
                        f"continue with: python train.py --resume={quote(run.run_dir)}") from None
    except FloatingPointError as e:
        # Extreme dropout scales the features it keeps by 1 / (1 - p): huge logits, whatever the LR
        remedy = "a --dropout below 0.5" if run.cfg.dropout > 0.5 else "a lower --lr"
        raise UserError(f"error: epoch {epoch}: {e}; stopped. {run.run_dir}/last.pt holds "
                        f"{held(run.progress.epoch)}; try {remedy}") from None


def train_epoch(run, epoch, stop):
    """Train epoch `epoch`, or its rest after a stop inside it. A stop inside it saves where it got and raises."""
    cfg, progress = run.cfg, run.progress
    # Everything random in an epoch follows from (seed, epoch), or from the saved state when an
    # epoch continues, so a resumed run matches an uninterrupted one.
    if progress.position:
        torch.set_rng_state(progress.position.rng)
        run.train_loader.sampler.set_epoch(epoch, skip=progress.position.step * run.train_loader.batch_size)
    else:
        torch.manual_seed(epoch_seed(cfg.seed, epoch))
        run.train_loader.sampler.set_epoch(epoch)
    train = engine.train_one_epoch(run.train_model, run.train_loader, run.step, position=progress.position,
                                   should_stop=stop.is_set, on_step=run.log.step,
                                   desc=f"epoch {epoch}/{cfg.epochs}" if run.rank == 0 else None)
    chance = math.log(len(run.data.classes))  # the loss of a uniform guess
    if train["loss"] > 10 * chance:
        raise FloatingPointError(f"the training loss diverged ({train['loss']:.4g} per sample, over 10 times "
                                 f"the {chance:.2f} of a uniform guess)")
    progress.position = train["position"]
    if progress.position:
        if run.rank == 0:
            checkpoint.save(run)
        raise UserError(f"\nstopped in epoch {epoch} after step {progress.position.step}, saved in "
                        f"{run.run_dir}/last.pt; continue with: python train.py --resume={quote(run.run_dir)}")
    return train


def evaluate_epoch(run):
    """The epoch's evaluation of the weights the run is judged by (engine.final_model), with its seconds."""
    t0 = time.perf_counter()
    judged = engine.final_model(run.model, run.step)
    for model in {run.model, judged}:
        engine.average_buffers(model)
    runner = run.eval_model if judged is run.model else judged  # the compiled graph runs the model's own weights
    test = engine.evaluate(runner, run.test_loader, amp=run.cfg.amp, channels_last=run.cfg.channels_last)
    if not math.isfinite(test["loss"]):
        raise FloatingPointError(f"non-finite {run.data.test_name} loss ({test['loss']})")
    if not all(t.isfinite().all() for t in run.model.state_dict().values() if t.is_floating_point()):
        raise FloatingPointError("non-finite weights after the epoch")
    return dict(test, seconds=time.perf_counter() - t0)


def run_epoch(run, epoch, stop):
    """Train, evaluate, log and save epoch `epoch`. Raises UserError, after saving what can be continued, when a
    signal stops the run or the loss, the val loss or the weights turn non-finite."""
    with epoch_faults(run, epoch):
        train = train_epoch(run, epoch, stop)
        test = evaluate_epoch(run)
    progress = run.progress
    progress.history.append(dict(epoch=epoch, train_loss=train["loss"], train_acc=train["acc"],
                                 test_loss=test["loss"], test_acc=test["acc"], lr=train["lr"],
                                 seconds=train["seconds"] + test["seconds"]))
    best = test["acc"] > progress.best_acc
    if best:
        progress.best_acc, progress.best_epoch = test["acc"], epoch
    run.log.epoch(progress.history[-1], best, progress.history, run.step.steps_done)
    if run.rank == 0:
        checkpoint.save(run, best)
    if stop.is_set() and epoch < run.cfg.epochs:
        raise UserError(f"\nstopped after epoch {epoch}, saved in {run.run_dir}/last.pt; continue with: "
                        f"python train.py --resume={quote(run.run_dir)}")


def finish(run, device, world):
    """The final evaluation on the whole split with its plots, and summary.json (rank 0)."""
    cfg, progress, data = run.cfg, run.progress, run.data
    whole = eval_loader(data, cfg, device) if world > 1 else run.test_loader  # run.test_loader: this rank's share
    final = report.save_analysis(engine.final_model(run.model, run.step), whole, data, run.run_dir, cfg)
    result = dict(params=count_params(run.model), receptive_field=receptive_field(run.model)[-1]["rf"],
                  best_test_acc=progress.best_acc, best_epoch=progress.best_epoch, final_test_acc=final["acc"],
                  final_test_loss=final["loss"], final_test_acc_flip_tta=final["flip_acc"],
                  final_test_acc_flip_shift_tta=final["flip_shift_acc"], epochs=cfg.epochs,
                  train_seconds=sum(h["seconds"] for h in progress.history), test_split=data.test_name,
                  data=data.source, device=str(device), host=host(device), processes=world, run_dir=run.run_dir,
                  history=progress.history)
    write_json(result, os.path.join(run.run_dir, "summary.json"))
    run.log.end(result)
    print(f"\nfinal {data.test_name} acc {final['acc']:.2f}% (best {progress.best_acc:.2f}% at epoch "
          f"{progress.best_epoch}; flip TTA {final['flip_acc']:.2f}%, flip + shift {final['flip_shift_acc']:.2f}%); "
          f"{result['train_seconds']:.0f}s of training; files in {run.run_dir}")
    return result


def train_and_analyse(run, device, world):
    """Write the run's first files, train every epoch left, then (rank 0) the final analysis."""
    cfg = run.cfg
    if run.rank == 0:
        write_json(asdict(cfg), os.path.join(run.run_dir, "config.json"))
        if not cfg.resume:  # last.pt before the first step: even a kill in epoch 1 leaves a run to resume
            checkpoint.save(run)
    print(f"\n{describe_recipe(cfg)}")
    print(f"training {cfg.epochs} epochs, {len(run.train_loader)} steps each, batch {cfg.batch_size}; "
          f"writing {run.run_dir}")
    with stop_on_signals() as stop:  # Ctrl-C or SIGTERM: finish the current step, save, exit
        for epoch in range(run.progress.epoch + 1, cfg.epochs + 1):
            run_epoch(run, epoch, stop)
    if world > 1:
        dist.destroy_process_group()
    if run.rank:  # the other ranks' work ends with training; rank 0 evaluates the whole split and writes
        return dict(history=run.progress.history, run_dir=run.run_dir)
    try:
        with sigterm_interrupts():
            return finish(run, device, world)
    except KeyboardInterrupt:
        raise UserError(f"\ninterrupted in the final analysis; training finished and {run.run_dir}/last.pt holds "
                        f"it; redo the analysis with: python train.py --evaluate={quote(run.run_dir)}") from None


def main(argv=None):
    """A whole run: parse, then evaluate, or start or resume, train every epoch, and analyse the result.

    PyTorch's thread count comes back as it was, so a notebook's next run starts as this one did."""
    threads = torch.get_num_threads()
    try:
        return train_or_evaluate(sys.argv[1:] if argv is None else list(argv))
    finally:
        torch.set_num_threads(threads)


def train_or_evaluate(argv):
    cfg = parse_args(argv)
    logs.require(cfg)
    if cfg.evaluate:
        return evaluate_checkpoint(argv, cfg.evaluate)
    cfg, ckpt = checkpoint.resume(cfg.resume, argv) if cfg.resume else (cfg, None)
    if cfg.init_from:
        ckpt = checkpoint.load_checkpoint(cfg.init_from)
    if cfg.dry_run:  # tiny and quick, whatever the config says
        cfg = replace(cfg, epochs=min(cfg.epochs, 2), batch_size=16, workers=0)

    seed_everything(cfg.seed)
    rank, world, device = init_distributed(cfg, runtime(cfg))
    data = prepare(cfg, device, world)  # before anything is written: bad data leaves no trace
    run = start_run(cfg, ckpt, data, device, rank, world)
    with checkpoint.hold(run.run_dir) if rank == 0 else contextlib.nullcontext():  # one live run per run dir
        with contextlib.closing(run.log):
            return train_and_analyse(run, device, world)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # the one line on stderr, exit code 1; under torchrun every process meets the same
        sys.exit(str(e) if os.environ.get("RANK", "0") == "0" else 1)  # refusal, and rank 0 says it once
