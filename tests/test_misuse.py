"""Misuse found by the third pass over faults and bad input (issue 49): each case gets one clear line or correct
work, and leaves nothing behind that a rerun would trip over."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import train
from config import UserError, parse_args
from conftest import interrupted_run, make_image_folder
from logs import write_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line(e):
    return str(e.value).startswith("error:") and "\n" not in str(e.value)


def refused(argv, words, out):
    """train.main(argv + --out-dir=out) is refused with one line matching words, and out is never made."""
    with pytest.raises(UserError, match=words) as e:
        train.main([*argv, f"--out-dir={out}"])
    assert one_line(e) and not out.exists()


def test_a_one_class_dataset_is_refused(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=(3, 2), classes=1)
    refused([f"--data-dir={root}"], "1 class folder .* at least two", tmp_path / "run")


def test_class_folders_that_differ_only_in_case_are_named(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", per_class=(3, 2), classes=2)
    for split in ("train", "val"):
        os.rename(root / split / "class0", root / split / "Cat")
        os.rename(root / split / "class1", root / split / "cat")
    train.main([f"--data-dir={root}", f"--out-dir={tmp_path / 'run'}", "--epochs=1", "--batch-size=6"])
    assert "note: class folders Cat, cat differ only in case and count as 2 classes" in capsys.readouterr().out


def test_a_training_split_given_as_the_data_dir_names_its_parent(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    root = make_image_folder(tmp_path / "data", per_class=(3, 2), classes=2)
    monkeypatch.setattr(CIFAR10, "download", lambda self: pytest.fail("downloaded into the user's image folder"))
    refused([f"--data-dir={root / 'train'}"], f"pass the folder above them \\(--data-dir={root}\\)", tmp_path / "run")
    assert sorted(os.listdir(root / "train")) == ["class0", "class1"]


@pytest.mark.parametrize("device", ["xpu", "meta", "ipu:0"])
def test_devices_this_code_does_not_run_on_are_one_line(tmp_path, device):
    refused(["--dry-run", f"--device={device}"], f"--device={device} is not supported", tmp_path / "run")


def test_a_warmup_of_exactly_one_step_is_one_line_and_leaves_no_folder(tmp_path):
    refused(["--dry-run", "--warmup=0.125"], "exactly one warm-up step", tmp_path / "run")  # 0.125 of 8 steps


def test_an_extreme_dropout_that_diverges_names_the_dropout(tmp_path):
    with pytest.raises(UserError, match="diverged.*try a --dropout below 0.5") as e:
        train.main(["--dry-run", "--dropout=0.999", f"--out-dir={tmp_path}"])
    assert one_line(e)


def test_more_threads_than_cores_gets_a_note(tmp_path, capsys):
    cores = len(os.sched_getaffinity(0))
    parse_args([f"--threads={cores + 1}"])  # allowed: only slow
    cfg = parse_args(["--dry-run", f"--threads={cores + 1}"])
    train.prepare(cfg, train.runtime(cfg))
    assert f"note: --threads={cores + 1} is more than the {cores} cores" in capsys.readouterr().out


def test_resume_with_another_out_dir_is_refused_and_the_same_one_is_fine(tmp_path, monkeypatch):
    run = tmp_path / "run"
    interrupted_run(monkeypatch, run, 1)
    with pytest.raises(UserError, match="--resume continues in .*drop --out-dir.*--init-from") as e:
        train.main([f"--resume={run}", f"--out-dir={tmp_path / 'elsewhere'}"])
    assert one_line(e) and not (tmp_path / "elsewhere").exists()
    summary = train.main([f"--resume={run}", f"--out-dir={run}/"])  # the run's own folder, spelt another way
    assert summary["epochs"] == 2


def test_evaluate_help_names_the_evaluation_split(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "evaluation split, val/ or test/" in " ".join(capsys.readouterr().out.split())


def test_predict_classifies_a_file_whose_name_is_not_utf8(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    ok, png = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))
    name = os.path.join(os.fsencode(folder), b"\xffphoto.png")
    with open(name, "wb") as f:
        f.write(png.tobytes())
    command = [sys.executable, os.path.join(ROOT, "predict.py"), str(folder), f"--csv={tmp_path / 'p.csv'}"]
    proc = subprocess.run(command, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert b"\\xffphoto.png: " in proc.stdout  # shown escaped
    assert name in (tmp_path / "p.csv").read_bytes()  # the CSV keeps the name's own bytes
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("error", [KeyboardInterrupt, UnicodeEncodeError("utf-8", "x", 0, 1, "bad"), ValueError])
def test_any_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, error):
    path = tmp_path / "f.csv"
    path.write_text("old")

    def fail(tmp):
        open(tmp, "w").write("half")
        raise error

    with pytest.raises(type(error) if isinstance(error, BaseException) else error):
        write_atomic(str(path), fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.csv"]



# --- cases of the same classes, found beyond the list ----------------------------------------------------

def test_a_tilde_after_the_equals_sign_means_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = parse_args(["--data-dir=~/cifar", "--out-dir=~/runs/a", "--init-from=~/runs/b"])
    assert (cfg.data_dir, cfg.out_dir, cfg.init_from) == tuple(str(tmp_path / p) for p in ("cifar", "runs/a", "runs/b"))


@pytest.mark.parametrize("dry", [True, False])
def test_an_out_dir_that_is_a_file_says_so(folder, tmp_path, dry):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    argv = ["--dry-run"] if dry else [f"--data-dir={folder}", "--epochs=1"]
    with pytest.raises(UserError, match="is a file; pick a folder") as e:
        train.main([*argv, f"--out-dir={target}"])
    assert one_line(e) and target.read_text() == "mine"


def test_images_in_subfolders_of_a_class_folder_are_counted_in_a_note(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", per_class=(3, 2), classes=2)
    (root / "train" / "class0" / "more").mkdir()
    for i in range(2):
        os.link(root / "train" / "class0" / "0.png", root / "train" / "class0" / "more" / f"{i}.png")
    train.prepare(parse_args([f"--data-dir={root}"]), train.runtime(parse_args([])))
    assert "note: 2 images in subfolders of class folders were not read" in capsys.readouterr().out


def test_two_runs_started_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train.time, "strftime", lambda fmt: "20261206-120000")
    (tmp_path / "runs" / "dry-run-20261206-120000").mkdir(parents=True)  # another run just made it, still empty
    first, second = (train.main(["--dry-run"])["run_dir"] for _ in range(2))
    assert (first, second) == ("runs/dry-run-20261206-120000-2", "runs/dry-run-20261206-120000-3")


def test_a_run_in_a_notebook_leaves_torch_s_thread_count_as_it_was(tmp_path):
    import torch
    before = torch.get_num_threads()
    train.main(["--dry-run", f"--threads={max(1, before - 1) if before > 1 else 2}", f"--out-dir={tmp_path}"])
    assert torch.get_num_threads() == before


def test_a_closed_terminal_sighup_stops_training_like_sigterm_and_resumes(tmp_path, monkeypatch):
    import signal
    from conftest import change_epoch

    change_epoch(monkeypatch, 1, lambda model, kwargs: signal.raise_signal(signal.SIGHUP))
    with pytest.raises(UserError, match="stopped in epoch 1 after step 1, saved") as e:
        train.main(["--dry-run", f"--out-dir={tmp_path}"])
    monkeypatch.undo()
    assert "\n" not in str(e.value).strip() and train.main([f"--resume={tmp_path}"])["epochs"] == 2


def test_printed_commands_quote_a_path_with_spaces(tmp_path, monkeypatch):
    import shlex
    out = tmp_path / "my runs" / "first try"
    message = interrupted_run(monkeypatch, out, 1)
    command = message.split("continue with: ", 1)[1]
    assert shlex.split(command) == ["python", "train.py", f"--resume={out}"]


def test_a_phone_photo_is_read_upright_by_its_exif_orientation(tmp_path):
    from PIL import Image
    from data import read_image
    pixels = np.zeros((40, 20, 3), np.uint8)
    pixels[:10] = 255  # a white band along the top of a tall picture
    photo = Image.fromarray(pixels)
    exif = photo.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    photo.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    image, _ = read_image(str(tmp_path / "phone.jpg"))
    assert image.shape == (20, 40, 3) and image[:, -8:].mean() > 240 and image[:, :20].mean() < 15  # band on the right


@pytest.mark.parametrize("mode, pixels", [("LA", [80, 200]), ("P", 7), ("1", True)])
def test_grey_alpha_palette_and_one_bit_pngs_are_read_as_rgb(tmp_path, mode, pixels):
    from PIL import Image
    from data import read_image
    shape = (32, 32, 2) if mode == "LA" else (32, 32)
    Image.fromarray(np.full(shape, pixels, np.uint8 if mode != "1" else bool), mode).save(tmp_path / "x.png")
    image, _ = read_image(str(tmp_path / "x.png"))
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8


def test_upper_case_extensions_are_images_too(tmp_path):
    from data import image_files
    for name in ("a.JPG", "b.Png", "c.jpeg", "d.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [os.path.basename(p) for p in image_files(str(tmp_path))] == ["a.JPG", "b.Png", "c.jpeg"]


def test_predict_on_a_file_it_cannot_decode_is_one_line(tmp_path):
    (tmp_path / "movie.gif").write_bytes(b"GIF89a" + bytes(100))
    command = [sys.executable, os.path.join(ROOT, "predict.py"), str(tmp_path / "movie.gif")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and "cannot read image" in proc.stderr
    assert not list(tmp_path.glob("predictions*"))
