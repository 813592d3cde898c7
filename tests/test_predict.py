"""predict.py on a tiny trained checkpoint, and the README's notebook snippet run as written."""
import csv
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import predict
import train
import transforms
from config import UserError
from model import Net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "runs" / "demo"
    train.main(["--dry-run", f"--out-dir={out}"])
    return out


def write_images(folder, sizes=(32, 32, 40)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, size in enumerate(sizes):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")  # skipped inside a folder: not an image extension
    return folder


def test_predict_prints_top3_and_writes_the_csv(run_dir, tmp_path, capsys):
    folder = write_images(tmp_path / "mine")
    rows = predict.main([str(run_dir), str(folder), f"--csv={tmp_path / 'p.csv'}"])
    assert [os.path.basename(r["path"]) for r in rows] == ["0.png", "1.png", "2.png"]
    saved = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["class"] for r in saved] == [r["class"] for r in rows] and len(saved) == 3
    # the same probabilities as the checkpoint's Net on the same pixels, normalized as in training
    net = Net()
    net.load_state_dict(torch.load(run_dir / "last.pt", weights_only=True)["model"])
    images = np.stack([cv2.resize(cv2.imread(str(folder / f"{i}.png"))[:, :, ::-1], (32, 32),
                                  interpolation=cv2.INTER_AREA) for i in range(3)])
    with torch.no_grad():
        probs = net.eval()(transforms.test_transforms()(images)).softmax(1)
    classes = torch.load(run_dir / "last.pt", weights_only=True)["classes"]
    for row, p in zip(rows, probs):
        assert row["class"] == classes[p.argmax()] and row["probability"] == pytest.approx(p.max().item(), abs=1e-4)
        top = [float(x.split(":")[1]) for x in row["top3"].split()]
        assert len(top) == 3 and top == sorted(top, reverse=True) and sum(top) <= 1 + 1e-3
    assert "0.png: " in capsys.readouterr().out


@pytest.mark.parametrize("make_args, words", [
    (lambda d, run: [str(d / "none.pt"), str(d)], "no checkpoint at"),
    (lambda d, run: [str(d / "other.pt"), str(d)], "not a train.py checkpoint"),
    (lambda d, run: [str(run), str(d / "notes.txt")], "cannot read image"),
    (lambda d, run: [str(run), str(d / "missing.png")], "no file or folder"),
    (lambda d, run: [str(run), str(d / "empty")], "no images in"),
])
def test_bad_input_is_one_line_and_writes_no_csv(run_dir, tmp_path, make_args, words):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match=words) as e:
        predict.main([*make_args(tmp_path, run_dir), f"--csv={tmp_path / 'p.csv'}"])
    assert "\n" not in str(e.value) and not (tmp_path / "p.csv").exists()


def test_command_line_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "predict.py"), str(tmp_path / "none.pt"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and "no checkpoint at" in proc.stderr


def test_the_readme_notebook_snippet_runs_as_written(run_dir, tmp_path, monkeypatch):
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme[readme.index("## In a notebook"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S)[1]
    monkeypatch.chdir(run_dir.parent.parent)  # where runs/demo is
    write_images(run_dir.parent.parent / "my_images")
    namespace = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert os.path.getsize("predictions.png") > 0
    assert namespace["probs"].shape == (3, 10)
