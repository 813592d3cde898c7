import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import report
import train
from config import Config, UserError
from data import Data, Split
from model import Net
import transforms as T
from conftest import change_epoch, eval_loader, interrupted_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = ["config.json", "history.csv", "best.pt", "last.pt", "curves.png", "misclassified.png",
             "gradcam.png", "confusion.png", "summary.json"]


def comparable(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dry") / "run"
    return out, train.main(["--dry-run", f"--out-dir={out}"])


def test_dry_run_writes_every_artifact(dry_run):
    out, result = dry_run
    for name in ARTIFACTS:
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    for key in ("params", "receptive_field", "best_test_acc", "best_epoch", "final_test_acc",
                "final_test_acc_flip_tta", "epochs", "train_seconds", "history"):
        assert key in summary, key
    assert 0 <= summary["final_test_acc_flip_tta"] <= 100
    assert summary["host"]["cpu"] and summary["host"]["threads"] >= 1 and summary["host"]["torch"] == torch.__version__
    assert summary["params"] < 200_000 and summary["receptive_field"] > 44
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert set(summary["history"][0]) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
                                          "seconds"}
    assert all(0 <= h["test_acc"] <= 100 for h in summary["history"])
    assert summary["best_test_acc"] == max(h["test_acc"] for h in summary["history"])
    assert (out / "history.csv").read_text().splitlines()[0] == \
        "epoch,train_loss,train_acc,test_loss,test_acc,lr,seconds"
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and not os.path.exists(out / "last.pt.tmp")


def test_resume_continues_a_stopped_run_exactly(dry_run, tmp_path, monkeypatch):
    _, full = dry_run
    out = tmp_path / "stopped"

    def interrupt(model, kwargs):
        raise KeyboardInterrupt

    change_epoch(monkeypatch, 2, interrupt)
    with pytest.raises(UserError, match=f"--resume={out}"):
        train.main(["--dry-run", f"--out-dir={out}"])
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.undo()

    resumed = train.main(["--dry-run", f"--resume={out}"])
    assert comparable(resumed["history"]) == comparable(full["history"])
    a = torch.load(out / "last.pt", weights_only=True)["model"]
    b = torch.load(os.path.join(full["run_dir"], "last.pt"), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_weight_average_run_saves_the_average_and_resumes_exactly(tmp_path, monkeypatch):
    full = train.main(["--dry-run", "--ema=0.9", f"--out-dir={tmp_path}/full"])
    ckpt = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    assert ckpt["ema_steps"] > 0 and not torch.equal(ckpt["model"]["c1.0.0.weight"], ckpt["trained"]["c1.0.0.weight"])
    assert train.main([f"--evaluate={tmp_path}/full"])["test_acc"] == full["final_test_acc"]  # the average's

    out = tmp_path / "stopped"
    interrupted_run(monkeypatch, out, 2, "--ema=0.9")
    resumed = train.main(["--dry-run", f"--resume={out}"])
    assert comparable(resumed["history"]) == comparable(full["history"])
    a = torch.load(out / "last.pt", weights_only=True)
    for key in ("model", "trained"):
        assert all(torch.equal(a[key][k], ckpt[key][k]) for k in ckpt[key]), key
    with pytest.raises(UserError, match="--ema"):
        train.main(["--dry-run", f"--resume={out}", "--ema=0.99"])


def test_evaluate_reproduces_the_final_accuracy(dry_run):
    out, result = dry_run
    evaluated = train.main([f"--evaluate={out}"])
    assert evaluated["test_acc"] == result["final_test_acc"]
    assert evaluated["test_acc_flip_tta"] == result["final_test_acc_flip_tta"]
    assert evaluated["test_acc_flip_shift_tta"] == result["final_test_acc_flip_shift_tta"]
    assert (out / "evaluate" / "confusion.png").exists()


@pytest.mark.parametrize("tta", ["flip", "flip_shift"])
def test_tta_scores_the_mean_logits_of_its_views(tmp_path, tta):
    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))  # not mirror-symmetric
    x = T.test_transforms()(images)
    with torch.no_grad():
        pair = lambda v: (model(v) + model(v.flip(3))) / 2  # noqa: E731
        moved = (pair(F.pad(x, (1,) * 4, mode="reflect")[..., :32, :32]) +  # up-left by one pixel
                 pair(F.pad(x, (1,) * 4, mode="reflect")[..., 2:, 2:])) / 2  # down-right
        logits = pair(x) if tta == "flip" else pair(x) / 2 + moved / 2
        labels = logits.argmax(1).numpy()  # right under this TTA, by construction
        plain_right = (model(x).argmax(1).numpy() == labels).mean()
    split = Split(images, labels)
    loader = eval_loader(split, batch_size=16)
    data = Data(split, split, tuple(map(str, range(10))), "synthetic", "val")
    result = report.save_analysis(model, loader, data, str(tmp_path), Config())
    assert result[f"{tta}_acc"] == 100 and result["acc"] == pytest.approx(100 * plain_right) and plain_right < 1
    other = "flip_shift" if tta == "flip" else "flip"
    assert result[f"{other}_acc"] < 100  # the two figures measure different views


def test_dilated_model_runs_and_its_checkpoint_keeps_its_kind(tmp_path):
    result = train.main(["--dry-run", "--model=dilated", f"--out-dir={tmp_path}/d"])
    evaluated = train.main([f"--evaluate={tmp_path}/d"])
    assert evaluated["test_acc"] == result["final_test_acc"]
    with pytest.raises(UserError, match="holds a --model=dilated network"):
        train.main([f"--evaluate={tmp_path}/d", "--model=net"])


def test_existing_run_dir_is_not_overwritten(dry_run):
    out, _ = dry_run
    before = (out / "last.pt").read_bytes()
    with pytest.raises(UserError, match="already holds files"):
        train.main(["--dry-run", f"--out-dir={out}"])
    assert (out / "last.pt").read_bytes() == before


def test_resume_refuses_a_damaged_checkpoint(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        train.main([f"--resume={tmp_path}"])


def test_missing_data_offline_is_a_one_line_error_and_writes_nothing(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), f"--data-dir={tmp_path / 'none'}",
                           "--download=false"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--data-dir=PATH" in lines[0]
    assert "Traceback" not in proc.stderr
    assert sorted(os.listdir(tmp_path)) == []


def test_command_line_dry_run(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--dry-run", f"--out-dir={tmp_path}/r"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for words in ("device: cpu", "Trainable params:", "receptive field > 44", "epoch   2/2", "final test acc"):
        assert words in proc.stdout, words


def test_model_report_leaves_batchnorm_statistics_alone(capsys):
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report.print_model_report(model, torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "Trainable params: " in capsys.readouterr().out


def test_curves_are_written_after_every_epoch(tmp_path, monkeypatch):
    interrupted_run(monkeypatch, tmp_path, 2)
    assert (tmp_path / "curves.png").stat().st_size > 0 and not (tmp_path / "curves.png.tmp").exists()


def test_another_lr_scheduler_trains_with_cutmix_on(tmp_path, monkeypatch):
    import engine
    from optim import make_optimizer

    def step_lr(cfg, model, steps_per_epoch):  # what a user's edit of optim.make_optimizer would return
        optimizer, _ = make_optimizer(cfg, model, steps_per_epoch)
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)

    monkeypatch.setattr(engine, "make_optimizer", step_lr)
    result = train.main(["--dry-run", "--cutmix-p=1", "--cutmix-decay=0.5", f"--out-dir={tmp_path}/run"])
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["steps_done"] == ckpt["scheduler"]["last_epoch"] > 0  # both count every optimizer step
