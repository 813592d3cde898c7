"""Where a run's numbers go: each epoch's record to one place (the printed line, history.csv, curves.png and, with
--tensorboard, TensorBoard's event files), each training step's values to one hook, and the run's end; plus the
atomic write every run file goes through. A new logger is a field in config.py and a few lines in RunLog."""
import contextlib
import csv
import importlib.util
import json
import os
from dataclasses import asdict

import cv2

import plots
from config import UserError

FIGURES = ("confusion", "misclassified", "gradcam")  # the analysis PNGs a run ends with, shown in TensorBoard too


def write_atomic(path, write):
    """write(tmp_path), then rename over path: a crash, a kill or a full disk never leaves a half-written file."""
    tmp = path + ".tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:  # whatever stops the write (a bug and Ctrl-C too) leaves no temp file
        with contextlib.suppress(OSError):
            os.remove(tmp)
        # torch.save reports a failed write as a RuntimeError of its zip writer (inline_container.cc), not OSError
        if not (isinstance(e, OSError) or isinstance(e, RuntimeError) and ("inline_container" in str(e)
                                                                           or "StreamWriter" in str(e))):
            raise
        raise UserError(f"error: cannot write {path} ({_reason(e, path)}); the file it would replace is unchanged; "
                        "free some space or write elsewhere") from None


def _reason(error, path):
    """Why a write failed, in words: the OS's, or for torch's zip writer whether the disk is full."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    with contextlib.suppress(OSError):
        if os.statvfs(os.path.dirname(os.path.abspath(path))).f_bavail == 0:
            return "No space left on device"
    return str(error).splitlines()[0]


def write_json(obj, path):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
    write_atomic(path, write)


def write_history_csv(history, path):
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
    write_atomic(path, write)


def require(cfg):
    """Refuse the loggers cfg asks for that cannot run here, before the run writes anything."""
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UserError("error: --tensorboard needs the tensorboard package: pip install tensorboard "
                        "(or run without --tensorboard)")


class RunLog:
    """The loggers of one run. Every process prints (only rank 0's output is shown); only rank 0 writes files.

    TensorBoard's x axis is the optimizer step: per-step values at each step, an epoch's record at the step that
    ends it. A resumed run drops what the stopped one logged after the step it resumes from (purge_step), so a
    step is never logged twice.
    """

    def __init__(self, cfg, run_dir, test_name, rank, steps_done):
        self.cfg, self.run_dir, self.test_name, self.writes = cfg, run_dir, test_name, rank == 0
        self.tb = None
        if cfg.tensorboard and self.writes:
            from torch.utils.tensorboard import SummaryWriter  # optional package: imported only when asked for
            self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=steps_done + 1)

    def step(self, step, loss, lr):
        """After optimizer step `step` (1, 2, ...): its batch-mean training loss and the LR it used."""
        if self.tb:
            self.tb.add_scalar("step/train_loss", loss, step)
            self.tb.add_scalar("step/lr", lr, step)

    def epoch(self, record, best, history, steps_done):
        """A finished epoch's record (a history row); best: its val accuracy is the best so far."""
        print(f"epoch {record['epoch']:3d}/{self.cfg.epochs}  train loss {record['train_loss']:.4f} acc "
              f"{record['train_acc']:6.2f}%  {self.test_name} loss {record['test_loss']:.4f} acc "
              f"{record['test_acc']:6.2f}%  lr {record['lr']:.5f}  {record['seconds']:6.1f}s{'  *' if best else ''}",
              flush=True)
        if not self.writes:
            return
        write_history_csv(history, os.path.join(self.run_dir, "history.csv"))
        plots.plot_curves(history, os.path.join(self.run_dir, "curves.png"), self.test_name)  # to watch
        if self.tb:
            for key, value in record.items():
                self.tb.add_scalar(f"epoch/{key}", value, steps_done)
            self.tb.flush()  # an epoch is what a resume keeps: its events are on disk with it

    def end(self, summary):
        """The run's final figures (the PNGs it saved) and its config with the final metrics as hyperparameters."""
        if not self.tb:
            return
        for name in FIGURES:
            path = os.path.join(self.run_dir, f"{name}.png")
            if os.path.isfile(path):
                self.tb.add_image(f"final/{name}", cv2.imread(path)[:, :, ::-1].copy(), dataformats="HWC")
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in asdict(self.cfg).items()}
        metrics = {f"hparam/{k}": summary[k] for k in ("final_test_acc", "final_test_loss", "best_test_acc")}
        self.tb.add_hparams(hparams, metrics, run_name=".")

    def close(self):
        if self.tb:
            self.tb.close()
