"""Where a run's numbers go: TensorBoard's event files against history.csv, a resume that logs no step twice, the
missing package refused before anything is written, and only rank 0 writing."""
import csv
import importlib.util

import pytest

import logs
import train
from config import Config, UserError

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def events(run_dir):
    """The run's TensorBoard data as TensorBoard shows it (what a resumed run purged is gone)."""
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_holds_the_numbers_of_history_csv_and_the_final_figures(tmp_path):
    result = train.main(["--dry-run", "--tensorboard", f"--out-dir={tmp_path}"])
    history = list(csv.DictReader(open(tmp_path / "history.csv")))
    acc = events(tmp_path)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"):
        logged = [value for _, value in scalars(acc, f"epoch/{key}")]
        assert logged == pytest.approx([float(row[key]) for row in history], rel=1e-6, abs=1e-6), key
    steps = [step for step, _ in scalars(acc, "step/train_loss")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 2 * 4  # dry run: 4 steps per epoch
    assert [step for step, _ in scalars(acc, "epoch/test_acc")] == [4, 8]  # the step that ends each epoch
    assert set(acc.Tags()["images"]) == {"final/confusion", "final/misclassified", "final/gradcam"}
    assert scalars(acc, "hparam/final_test_acc")[0][1] == pytest.approx(result["final_test_acc"], rel=1e-6)


def test_a_resumed_run_logs_no_step_twice(tmp_path, monkeypatch):
    real = logs.RunLog.step

    def interrupt_at_step_6(self, step, loss, lr):  # inside epoch 2, after its first steps were logged
        real(self, step, loss, lr)
        if step == 6:
            raise KeyboardInterrupt

    monkeypatch.setattr(logs.RunLog, "step", interrupt_at_step_6)
    with pytest.raises(UserError, match="interrupted in epoch 2"):
        train.main(["--dry-run", "--tensorboard", f"--out-dir={tmp_path}"])
    monkeypatch.undo()
    train.main([f"--resume={tmp_path}"])
    acc = events(tmp_path)
    assert [step for step, _ in scalars(acc, "step/train_loss")] == list(range(1, 9))
    history = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert [value for _, value in scalars(acc, "epoch/test_acc")] == pytest.approx(
        [float(row["test_acc"]) for row in history], rel=1e-6)


def test_tensorboard_missing_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(UserError, match="pip install tensorboard") as e:
        train.main(["--dry-run", "--tensorboard", f"--out-dir={tmp_path / 'run'}"])
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


def test_only_rank_0_writes(tmp_path, capsys):
    record = dict(epoch=1, train_loss=1.0, train_acc=50.0, test_loss=1.0, test_acc=50.0, lr=0.1, seconds=1.0)
    log = logs.RunLog(Config(tensorboard=True), str(tmp_path), "val", rank=1, steps_done=0)
    log.step(1, 1.0, 0.1)
    log.epoch(record, True, [record], 1)
    log.end({})
    log.close()
    assert list(tmp_path.iterdir()) == [] and "epoch   1/15" in capsys.readouterr().out
