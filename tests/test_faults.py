"""Runs that survive faults and bad input: kills, signals, NaNs, damaged or mismatched checkpoints."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from config import UserError
from conftest import change_epoch, make_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_RUN = ["--epochs=3", "--batch-size=32", "--workers=0", "--lr=0.05"]


@pytest.fixture(scope="module")
def uninterrupted(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    return train.main([f"--data-dir={folder}", f"--out-dir={out}", *SMALL_RUN])


def start(folder, out, *extra):
    """train.py in a process group of its own (its data workers join it), as a shell or a batch system starts it."""
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), f"--data-dir={folder}",
                             f"--out-dir={out}", *SMALL_RUN, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_for_epoch(out, epoch, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "last.pt").exists() and torch.load(out / "last.pt", weights_only=True)["epoch"] >= epoch:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise TimeoutError


def same_run(a, b):
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in a["history"]] == \
           [{k: v for k, v in h.items() if k != "seconds"} for h in b["history"]]
    wa = torch.load(os.path.join(a["run_dir"], "last.pt"), weights_only=True)["model"]
    wb = torch.load(os.path.join(b["run_dir"], "last.pt"), weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_kill_9_then_resume_equals_an_uninterrupted_run(folder, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    proc = start(folder, out)
    wait_for_epoch(out, 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = torch.load(out / "last.pt", weights_only=True)["epoch"]  # readable whenever the kill landed
    assert finished in (1, 2)
    resumed = train.main([f"--resume={out}"])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    same_run(resumed, uninterrupted)


def test_sigterm_saves_after_the_current_step_and_resume_equals_an_uninterrupted_run(folder, uninterrupted,
                                                                                      tmp_path):
    out = tmp_path / "terminated"
    proc = start(folder, out)
    wait_for_epoch(out, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "stopped " in stderr and f"python train.py --resume={out}" in stderr and "Traceback" not in stderr
    resumed = train.main([f"--resume={out}"])
    same_run(resumed, uninterrupted)


def test_sigterm_to_the_whole_process_group_still_saves_and_resumes_exactly(folder, uninterrupted, tmp_path):
    """`timeout`, `kill -- -PGID` and batch systems (Slurm) signal the data workers too; the run must still save."""
    out = tmp_path / "group"
    proc = start(folder, out, "--workers=2")
    wait_for_epoch(out, 1, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert "stopped " in stderr and "Traceback" not in stderr and "killed by signal" not in stderr
    resumed = train.main([f"--resume={out}", "--workers=0"])
    same_run(resumed, uninterrupted)


def test_stop_mid_epoch_saves_the_step_and_resumes_exactly(folder, uninterrupted, tmp_path, monkeypatch):
    """The stop flag (what Ctrl-C and SIGTERM set) raised after step 3 of epoch 2, in-process."""
    out = tmp_path / "stopped"

    def stop_after_3_steps(model, kwargs):
        steps = iter(range(100))
        kwargs["should_stop"] = lambda: next(steps) == 2

    change_epoch(monkeypatch, 2, stop_after_3_steps)
    with pytest.raises(UserError, match="stopped in epoch 2 after step 3"):
        train.main([f"--data-dir={folder}", f"--out-dir={out}", *SMALL_RUN])
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["position"]["step"] == 3 and ckpt["position"]["seconds"] > 0
    ckpt["position"]["seconds"] = 1000.0  # the epoch's time before the stop counts in its seconds
    torch.save(ckpt, out / "last.pt")
    monkeypatch.undo()
    resumed = train.main([f"--resume={out}"])
    same_run(resumed, uninterrupted)
    assert resumed["history"][1]["seconds"] >= 1000.0


def test_same_seed_same_history_and_weights(folder, uninterrupted, tmp_path):
    again = train.main([f"--data-dir={folder}", f"--out-dir={tmp_path / 'again'}", *SMALL_RUN])
    same_run(again, uninterrupted)


def test_non_finite_loss_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "nan"

    def poison(model, kwargs):
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))

    change_epoch(monkeypatch, 2, poison)
    with pytest.raises(UserError, match=r"epoch 2: non-finite training loss \(nan\) at step 0") as e:
        train.main(["--dry-run", f"--out-dir={out}"])
    assert "\n" not in str(e.value)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_evaluating_on_data_with_other_classes_is_refused_naming_them(uninterrupted, tmp_path):
    three_classes = make_image_folder(tmp_path, per_class=(1, 1), classes=3)
    with pytest.raises(UserError, match=r"trained on 10 classes \(class0, class1, class2, \.\.\.\) but this data "
                                        r"has 3 classes \(class0, class1, class2\)") as e:
        train.main([f"--evaluate={uninterrupted['run_dir']}", f"--data-dir={three_classes}"])
    assert "\n" not in str(e.value)


def test_resume_with_a_different_model_shape_is_refused(uninterrupted, tmp_path):
    ckpt = torch.load(os.path.join(uninterrupted["run_dir"], "last.pt"), weights_only=True)
    del ckpt["classes"]  # no class names to compare: the weights' shapes still refuse it
    ckpt["epoch"], ckpt["history"] = 2, ckpt["history"][:2]  # a run with an epoch left to resume
    torch.save(ckpt, tmp_path / "last.pt")
    three_classes = make_image_folder(tmp_path / "data", per_class=(1, 1), classes=3)
    with pytest.raises(UserError, match="does not fit this model") as e:
        train.main([f"--resume={tmp_path}", f"--data-dir={three_classes}"])
    assert "\n" not in str(e.value)


def test_truncated_checkpoint_is_refused(uninterrupted, tmp_path):
    data = open(os.path.join(uninterrupted["run_dir"], "last.pt"), "rb").read()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])
    for argv in ([f"--resume={tmp_path}"], [f"--evaluate={tmp_path / 'last.pt'}"]):
        with pytest.raises(UserError, match="cannot read checkpoint"):
            train.main(argv)


def test_foreign_checkpoint_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a train.py checkpoint"):
        train.main([f"--evaluate={tmp_path / 'other.pt'}"])


def test_changing_epochs_on_resume_is_refused(uninterrupted):
    with pytest.raises(UserError, match="planned with --epochs=3"):
        train.main([f"--resume={uninterrupted['run_dir']}", "--epochs=5"])


@pytest.mark.parametrize("flag, planned", [("--muon-lr=0", "--muon-lr=0.03"), ("--lr=0.1", "--lr=0.05"),
                                           ("--batch-size=16", "--batch-size=32")])
def test_changing_the_optimizer_on_resume_is_refused(uninterrupted, flag, planned):
    with pytest.raises(UserError, match=f"planned with {planned} and its optimizer") as e:
        train.main([f"--resume={uninterrupted['run_dir']}", flag])
    assert "\n" not in str(e.value)


def test_unwritable_output_dir_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot write to output dir"):
        train.main(["--dry-run", f"--out-dir={tmp_path / 'file' / 'run'}"])


def test_overwrite_allows_an_existing_run_dir(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    train.main(["--dry-run", f"--out-dir={tmp_path}", "--overwrite"])
    assert (tmp_path / "summary.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_without_cuda():
    with pytest.raises(UserError, match="no CUDA GPU"):
        train.main(["--dry-run", "--device=cuda"])


def test_empty_data_dir_offline_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="--data-dir=PATH") as e:
        train.main([f"--data-dir={tmp_path}", "--download=false", f"--out-dir={tmp_path / 'run'}"])
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()
