"""Several trainings at once on one machine, sized to a time budget: one small net leaves a GPU mostly idle.

python sweep.py --out=DIR [--budget=540] [--common="OPTIONS"] "OPTIONS" "OPTIONS" ...

Each quoted OPTIONS is one train.py run (e.g. "--epochs=200 --seed=1"); --common options go to every run.
The sweep first trains every run for two epochs, all at once as they will run, to measure an epoch's
seconds under that sharing (the second's: the first also pays for start-up); a run whose epochs cannot
finish inside the budget then gets as many as fit (sweep.json keeps both numbers). Then all runs train
at once, each in its own process and DIR/runs/rN, and their config.json, summary.json and history.csv
are gathered into DIR/results/rN with DIR/sweep.json. Past the budget every run still going is stopped
(SIGTERM: it saves and exits) and gathered as it is.
"""
import argparse
import csv
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from config import Config, UserError, parse_args
from runtime import sigterm_interrupts

SAFETY = 0.9  # share of the time left that the sized runs may plan to use: epochs vary, and runs must end
# Epochs of the timing probe. On a GPU the first epoch also pays for cuDNN's autotuning and the workers' start
# (15-30 s against 5-10 s for a later one on an H200), so the second is the one that measures the rate.
PROBE_EPOCHS = 2


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"error: {message} (see python sweep.py --help)")


def fit_epochs(requested, epoch_seconds, seconds_left, overhead):
    """The epochs of a run: `requested`, or fewer when they would not end inside seconds_left (at least 1)."""
    room = SAFETY * seconds_left - overhead
    return max(1, min(requested, math.floor(room / epoch_seconds)))


def with_epochs(options, epochs):
    """options with any --epochs setting replaced by --epochs=epochs."""
    kept, skip = [], False
    for o in options:
        if skip:
            skip = False
        elif o == "--epochs":
            skip = True  # its value is the next word
        elif not o.startswith("--epochs="):
            kept.append(o)
    return kept + [f"--epochs={epochs}"]


def launch(options, out_dir, workers):
    """A train.py process with these options writing to out_dir; its output goes to out_dir.log."""
    command = [sys.executable, "train.py", *options, f"--out-dir={out_dir}", "--overwrite"]
    if not any(o.startswith("--workers") for o in options):
        command.append(f"--workers={workers}")
    with open(out_dir + ".log", "w") as log:  # the child keeps its own handle on it
        # A session of its own: a Ctrl-C at the terminal reaches the sweep alone, which passes one SIGTERM on
        # (a second signal would make a run leave at once, without saving where it got).
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)))


def wait_all(processes, deadline):
    """Wait for every process; at the deadline, SIGTERM those still running (they save and stop) and wait.

    Ctrl-C or SIGTERM to the sweep stops them the same way before it raises: no run is left behind, orphaned."""
    try:
        while any(p.poll() is None for p in processes) and time.monotonic() <= deadline:
            time.sleep(1)
    finally:
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in processes:
            p.wait()


def run_all(runs, out, stage, workers, deadline):
    """Start every run of {name: options} at once in out/stage/name; wait for all; wall seconds."""
    t0 = time.monotonic()
    processes = []
    for name, options in runs.items():
        os.makedirs(os.path.join(out, stage), exist_ok=True)
        processes.append(launch(options, os.path.join(out, stage, name), workers))
    wait_all(processes, deadline)
    return time.monotonic() - t0


def epoch_seconds(run_dir):
    """Seconds of a probe's last epoch (a steady one) in its run dir's history.csv; None before PROBE_EPOCHS."""
    try:
        with open(os.path.join(run_dir, "history.csv")) as f:
            epochs = list(csv.DictReader(f))
    except OSError:
        return None
    return float(epochs[-1]["seconds"]) if len(epochs) >= PROBE_EPOCHS else None


def main(argv=None):
    parser = OneLineParser(description=__doc__.splitlines()[0], usage=__doc__.splitlines()[2])
    parser.add_argument("--out", required=True, help="folder for the runs, their logs and the gathered results")
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole sweep, probe included")
    parser.add_argument("--common", default="", help="train.py options for every run")
    args, run_options = parser.parse_known_args(argv)  # each other word is one run's options, quoted
    if not run_options:
        raise UserError("error: no runs; give each run's train.py options as one quoted word, e.g. \"--seed=1\"")
    args.out = os.path.abspath(args.out)
    start = time.monotonic()
    deadline = start + args.budget
    common = shlex.split(args.common)
    runs = {f"r{i}": common + shlex.split(options) for i, options in enumerate(run_options)}
    configs = {name: parse_args(options) for name, options in runs.items()}  # bad options: refused before any run
    workers = max(1, (os.cpu_count() or 1) // len(runs))  # the data workers share the machine's cores

    probe = {name: with_epochs(options, PROBE_EPOCHS) for name, options in runs.items()}
    probe_wall = run_all(probe, args.out, "probe", workers, deadline)
    seconds = [epoch_seconds(os.path.join(args.out, "probe", name)) for name in runs]
    if None in seconds:
        raise UserError(f"error: a probe run failed; see the logs in {os.path.join(args.out, 'probe')}")
    overhead = probe_wall - PROBE_EPOCHS * max(seconds)  # start-up, first-epoch warm-up, final analysis
    left = deadline - time.monotonic()
    planned = {name: fit_epochs(configs[name].epochs, s, left, overhead) for name, s in zip(runs, seconds)}
    sized = {name: with_epochs(options, planned[name]) for name, options in runs.items()}
    run_all(sized, args.out, "runs", workers, deadline)

    rows = []
    for (name, options), s in zip(runs.items(), seconds):
        kept = os.path.join(args.out, "results", name)
        os.makedirs(kept, exist_ok=True)
        for file in ("config.json", "summary.json", "history.csv"):
            source = os.path.join(args.out, "runs", name, file)
            if os.path.exists(source):
                shutil.copy(source, kept)
        summary = {}
        if os.path.exists(os.path.join(kept, "summary.json")):
            with open(os.path.join(kept, "summary.json")) as f:
                summary = json.load(f)
        rows.append(dict(name=name, options=" ".join(options), epochs_requested=configs[name].epochs,
                         epochs_planned=planned[name], probe_epoch_seconds=s,
                         final_acc=summary.get("final_test_acc"), best_acc=summary.get("best_test_acc"),
                         flip_tta_acc=summary.get("final_test_acc_flip_tta"), finished=bool(summary)))
    with open(os.path.join(args.out, "sweep.json"), "w") as f:
        json.dump(dict(budget=args.budget, seconds=time.monotonic() - start, workers_per_run=workers,
                       default_epochs=Config().epochs, runs=rows), f, indent=2)
    print(f"{'run':4} {'epochs':>11} {'s/epoch':>8} {'final':>7} {'best':>7}  options")
    for r in rows:
        acc = lambda v: f"{v:7.2f}" if v is not None else "      -"  # noqa: E731
        print(f"{r['name']:4} {r['epochs_planned']:>5} of {r['epochs_requested']:<3} {r['probe_epoch_seconds']:8.1f} "
              f"{acc(r['final_acc'])} {acc(r['best_acc'])}  {r['options']}")
    return rows


if __name__ == "__main__":
    try:
        with sigterm_interrupts():
            main()
    except KeyboardInterrupt:
        sys.exit("\ninterrupted; every run was stopped and saved where it got: continue one with python train.py "
                 "--resume=OUT/runs/rN (or OUT/probe/rN), or rerun the sweep into a new --out")
    except UserError as e:
        sys.exit(str(e))
