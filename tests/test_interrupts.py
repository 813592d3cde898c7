"""Ctrl-C and SIGTERM outside the epoch loop (issue 49): every phase of every entry point ends in one line that
says what was kept and how to go on, and leaves nothing partial that blocks a rerun."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import report
import sweep
import train
from config import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STOPS = {"ctrl-c": lambda: (_ for _ in ()).throw(KeyboardInterrupt),
         "sigterm": lambda: signal.raise_signal(signal.SIGTERM)}  # the handler of the phase turns it into the same


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    return train.main(["--dry-run", f"--out-dir={out}"])["run_dir"]


def stop_inside(monkeypatch, stop):
    """Make report.save_analysis write one plot, then be stopped."""
    def partial(model, loader, data, out_dir, cfg):
        open(os.path.join(out_dir, "confusion.png"), "wb").write(b"half")
        STOPS[stop]()
        time.sleep(5)  # a signal raised in this thread arrives before the sleep ends

    monkeypatch.setattr(report, "save_analysis", partial)


@pytest.mark.parametrize("stop", STOPS)
def test_a_stopped_evaluation_leaves_nothing_that_blocks_the_rerun(finished, monkeypatch, stop):
    stop_inside(monkeypatch, stop)
    words = f"interrupted; .*evaluate is removed; rerun: python train.py --evaluate={finished}"
    with pytest.raises(UserError, match=words):
        train.main([f"--evaluate={finished}"])
    assert not os.path.exists(os.path.join(finished, "evaluate"))
    monkeypatch.undo()
    assert train.main([f"--evaluate={finished}"])["epoch"] == 2
    shutil.rmtree(os.path.join(finished, "evaluate"))  # the next stop starts from a run without one


@pytest.mark.parametrize("stop", STOPS)
def test_a_stopped_final_analysis_keeps_the_run_and_resume_names_evaluate(tmp_path, monkeypatch, stop):
    stop_inside(monkeypatch, stop)
    with pytest.raises(UserError, match=f"interrupted in the final analysis.*--evaluate={tmp_path}"):
        train.main(["--dry-run", f"--out-dir={tmp_path}"])
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 2
    words = f"cut short \\(no summary.json\\); for it: python train.py --evaluate={tmp_path}"
    with pytest.raises(UserError, match=words):
        train.main([f"--resume={tmp_path}"])


def stopped_as_a_script(script, patch, *args):
    """Run `script` as __main__ in a new Python whose `patch` (module.function) sends the process a SIGTERM."""
    module, function = patch.rsplit(".", 1)
    code = (f"import os, runpy, signal, sys, time, {module}\n"
            f"def stop(*a, **k):\n    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(30)\n"
            f"{module}.{function} = stop\n"
            f"sys.argv = [{script!r}, *{list(args)!r}]\n"
            f"runpy.run_path({script!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script, patch, args, words", [
    ("predict.py", "checkpoint.load_model", ["images/"], "interrupted; no predictions written"),
    ("benchmark.py", "runtime.runtime", ["--dry-run"], "interrupted; nothing written"),
    ("sweep.py", "config.parse_args", ["--out=x", "--seed=1"], "interrupted; every run was stopped and saved"),
])
def test_sigterm_to_predict_benchmark_or_sweep_is_one_line(script, patch, args, words):
    proc = stopped_as_a_script(script, patch, *args)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and words in proc.stderr, proc.stderr


def test_a_stopped_sweep_stops_its_runs_with_one_sigterm_each(monkeypatch):
    runs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]

    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep.time, "sleep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep.wait_all(runs, deadline=time.monotonic() + 60)
    assert [p.returncode for p in runs] == [-signal.SIGTERM] * 2  # none left running on its own
