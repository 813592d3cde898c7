"""Bad input and awkward moments: each gets one clear line (or works), and nothing half-written is left behind."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import cv2
import numpy as np
import pytest
import torch

import checkpoint
import report
import train
from config import Config, UserError, parse_args
from runtime import resolve_device
from conftest import change_epoch, interrupted_run, make_image_folder
from data import load_data, load_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def weights(run_dir, name="last.pt"):
    return torch.load(os.path.join(run_dir, name), weights_only=True)


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def one_line(e):
    return str(e.value).startswith("error:") and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    return train.main(["--dry-run", f"--out-dir={out}"])


# --- a failure in epoch 1 is not a dead end -------------------------------------------------------------------

def test_a_new_run_saves_its_initial_weights_before_the_first_step(tmp_path, monkeypatch):
    message = interrupted_run(monkeypatch, tmp_path, 1)
    assert re.search("holds the initial weights; continue with: python train.py --resume=", message)
    assert weights(tmp_path)["epoch"] == 0 and not list(tmp_path.glob("*.tmp"))
    resumed = train.main(["--dry-run", f"--resume={tmp_path}"])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]


def test_kill_9_in_epoch_1_then_resume_finishes_the_run(folder, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), f"--data-dir={folder}",
                             f"--out-dir={out}", "--epochs=2", "--batch-size=32", "--workers=0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (out / "last.pt").exists():
        assert proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert weights(out)["epoch"] in (0, 1, 2)  # readable, whenever the kill landed
    assert [h["epoch"] for h in train.main([f"--resume={out}"])["history"]] == [1, 2]


def test_non_finite_loss_in_epoch_1_names_the_initial_weights_and_can_be_resumed(tmp_path, monkeypatch):
    def poison(model, kwargs):
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))

    change_epoch(monkeypatch, 1, poison)
    with pytest.raises(UserError, match="epoch 1: non-finite training loss .* holds the initial weights") as e:
        train.main(["--dry-run", f"--out-dir={tmp_path}"])
    assert one_line(e)
    assert all(torch.isfinite(v).all() for v in weights(tmp_path)["model"].values() if v.is_floating_point())


# --- settings that cannot end well ------------------------------------------------------------------------------

@pytest.mark.parametrize("arg", ["--lr=inf", "--weight-decay=inf", "--muon-lr=inf", "--lr=nan", "--momentum=nan",
                                 "--seed=4294967296", "--seed=-1", "--data-dir="])
def test_non_finite_and_out_of_range_numbers_are_refused(arg):
    with pytest.raises(UserError, match=arg.split("=")[0]) as e:
        parse_args([arg])
    assert one_line(e)


@pytest.mark.parametrize("lr, words", [("1e9", "non-finite training loss"), ("50", "training loss diverged")])
def test_a_diverging_run_stops_instead_of_ending_in_a_nan_success(tmp_path, lr, words):
    with pytest.raises(UserError, match=words) as e:
        train.main(["--dry-run", f"--lr={lr}", f"--out-dir={tmp_path}"])
    assert one_line(e) and not (tmp_path / "summary.json").exists()


def test_a_non_finite_val_loss_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(train.engine, "evaluate", lambda *a, **k: {"loss": float("nan"), "acc": 10.0})
    with pytest.raises(UserError, match="epoch 1: non-finite test loss") as e:
        train.main(["--dry-run", f"--out-dir={tmp_path}"])
    assert one_line(e) and weights(tmp_path)["epoch"] == 0


def test_non_finite_weights_after_an_epoch_stop_the_run(tmp_path, monkeypatch):
    def poison(model):
        next(b for b in model.buffers() if b.is_floating_point()).fill_(float("inf"))  # a BatchNorm mean

    monkeypatch.setattr(train.engine, "average_buffers", poison)
    monkeypatch.setattr(train.engine, "evaluate", lambda *a, **k: {"loss": 1.0, "acc": 10.0})
    with pytest.raises(UserError, match="epoch 1: non-finite weights after the epoch") as e:
        train.main(["--dry-run", f"--out-dir={tmp_path}"])
    assert one_line(e) and weights(tmp_path)["epoch"] == 0


@pytest.fixture(scope="module")
def real_run(folder, tmp_path_factory):
    """A finished 1-epoch run on real (tiny) image files, and another stopped inside its first epoch."""
    out = tmp_path_factory.mktemp("real")
    train.main([f"--data-dir={folder}", f"--out-dir={out / 'done'}", "--epochs=1", "--batch-size=100"])
    return out / "done"


def files_of(run_dir):
    return {p.name: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("argv", [["--resume={run}"], ["--evaluate={run}"], ["--evaluate={run}/best.pt"],
                                  ["--out-dir={run}", "--overwrite"]])
def test_a_dry_run_never_reads_or_writes_a_real_run(real_run, argv):
    before = files_of(real_run)
    with pytest.raises(UserError, match="dry run never") as e:
        train.main(["--dry-run", *(a.format(run=real_run) for a in argv)])
    assert one_line(e) and files_of(real_run) == before and not (real_run / "evaluate").exists()


def test_a_real_run_stopped_inside_an_epoch_is_not_resumed_by_a_dry_run(folder, tmp_path, monkeypatch):
    interrupted_run(monkeypatch, tmp_path, 1, f"--data-dir={folder}", "--dry-run=false", "--batch-size=100")
    before = files_of(tmp_path)
    with pytest.raises(UserError, match="real run's; a dry run never") as e:
        train.main(["--dry-run", f"--resume={tmp_path}"])
    assert one_line(e) and files_of(tmp_path) == before


def test_init_from_a_run_of_other_classes_is_one_line_and_leaves_no_folder(real_run, tmp_path):
    before = files_of(real_run)
    with pytest.raises(UserError, match="use data with the same classes") as e:  # class0..9 against CIFAR's
        train.main(["--dry-run", f"--init-from={real_run}", f"--out-dir={tmp_path / 'new'}"])
    assert one_line(e) and files_of(real_run) == before and not (tmp_path / "new").exists()


@pytest.mark.parametrize("argv", [["--resume=a", "--evaluate=b"], ["--init-from=a", "--resume=b"],
                                  ["--evaluate=a", "--init-from=b"]])
def test_modes_that_do_not_combine_are_refused(argv):
    with pytest.raises(UserError, match="do not combine") as e:
        parse_args(argv)
    assert one_line(e)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_gpu_index_is_named():
    with pytest.raises(UserError, match="--device=cuda:7 but no CUDA GPU"):
        resolve_device("cuda:7")


def test_a_stray_word_on_the_command_line_is_one_line():
    with pytest.raises(UserError, match="unrecognized arguments: 30") as e:
        parse_args(["30"])
    assert one_line(e)


# --- images are judged by their bytes ---------------------------------------------------------------------------

def test_a_truncated_jpeg_is_refused_by_name(tmp_path):
    root = make_image_folder(tmp_path, per_class=(2, 1), classes=2)
    ok, jpeg = cv2.imencode(".jpg", np.full((32, 32, 3), 90, np.uint8))
    (root / "train" / "class0" / "cut.jpg").write_bytes(jpeg.tobytes()[:-40])
    with pytest.raises(UserError, match=r"cut\.jpg is truncated") as e:
        load_folder(str(root))
    assert one_line(e)


@pytest.mark.parametrize("make_bad, words", [
    (lambda d: (d / "empty.png").write_bytes(b""), "is empty"),
    (lambda d: (d / "folder.png").mkdir(), "cannot read image"),
    (lambda d: os.symlink(d / "gone.png", d / "link.png"), "cannot read image"),
])
def test_empty_broken_and_folder_images_are_refused_by_name(tmp_path, make_bad, words):
    root = make_image_folder(tmp_path, per_class=(2, 1), classes=2)
    make_bad(root / "train" / "class1")
    with pytest.raises(UserError, match=words) as e:
        load_folder(str(root))
    assert one_line(e)


def test_grayscale_rgba_and_16_bit_images_are_converted_and_counted(tmp_path):
    root = make_image_folder(tmp_path, per_class=(2, 1), classes=2)
    cv2.imwrite(str(root / "train" / "class0" / "gray.png"), np.full((32, 32), 77, np.uint8))
    cv2.imwrite(str(root / "train" / "class0" / "rgba.png"), np.dstack([np.full((32, 32, 3), (10, 20, 30), np.uint8),
                                                                        np.full((32, 32), 5, np.uint8)]))
    cv2.imwrite(str(root / "val" / "class1" / "deep.png"), np.full((32, 32, 3), 256 * 200, np.uint16))
    data = load_folder(str(root))
    assert data.note.startswith("3 grayscale, RGBA or 16-bit images were converted")
    names = sorted(os.listdir(root / "train" / "class0"))
    gray, rgba = (data.train.images[names.index(n)] for n in ("gray.png", "rgba.png"))
    assert (gray == 77).all() and (rgba == (30, 20, 10)).all()  # stored BGR(A), read as RGB
    assert (data.test.images[-1] == 200).all()


def test_hidden_folders_and_files_are_not_classes_or_images(tmp_path):
    root = make_image_folder(tmp_path, per_class=(2, 1), classes=2)
    (root / "train" / ".ipynb_checkpoints").mkdir()
    shutil.copy(root / "train" / "class0" / "0.png", root / "train" / "class0" / ".hidden.png")
    data = load_folder(str(root))
    assert data.classes == ("class0", "class1") and len(data.train.labels) == 4


# --- paths ------------------------------------------------------------------------------------------------------

def test_a_failed_download_leaves_no_folder_behind(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    def offline(self):
        os.makedirs(self.root, exist_ok=True)
        (tmp_path / "a" / "b" / "part.tar.gz").write_bytes(b"half")
        raise OSError("network is unreachable")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with pytest.raises(UserError, match="could not be downloaded") as e:
        load_data(Config(data_dir=str(tmp_path / "a" / "b")))
    assert one_line(e) and os.listdir(tmp_path) == []


def test_a_data_dir_that_is_a_file_says_so(tmp_path):
    (tmp_path / "cifar.tar").write_bytes(b"x")
    with pytest.raises(UserError, match="is a file; pass the folder") as e:
        load_data(Config(data_dir=str(tmp_path / "cifar.tar")))
    assert one_line(e)


def test_an_out_dir_that_cannot_be_made_leaves_no_folders(tmp_path):
    with pytest.raises(UserError, match="cannot write to output dir") as e:
        train.main(["--dry-run", f"--out-dir={tmp_path / 'a' / 'b' / ('c' * 300) / 'd'}"])
    assert one_line(e) and os.listdir(tmp_path) == []


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MB filesystem (a tmpfs), where the machine lets the tests mount one (as root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)  # lazy: the test's traceback may hold a file open


def test_a_really_full_disk_keeps_the_last_good_checkpoint_and_leaves_no_temp_file(small_disk):
    out = small_disk / "run"  # 2 MB: the initial last.pt fits (0.8 MB), epoch 1's last.pt and best.pt do not
    with pytest.raises(UserError, match="No space left on device.*unchanged") as e:
        train.main(["--dry-run", f"--out-dir={out}"])
    assert one_line(e) and not list(out.glob("*.tmp"))
    assert weights(out)["epoch"] in (0, 1)  # a whole checkpoint, the last that fitted


def test_torch_s_own_write_error_is_one_line_and_leaves_no_temp_file(tmp_path, monkeypatch):
    real_save = torch.save
    saves = []

    def disk_full_on_second(obj, path):  # what torch.save raises when the disk fills under its zip writer
        saves.append(path)
        if len(saves) == 2:  # the initial last.pt, then epoch 1's
            open(path, "wb").write(b"half")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1005120 vs 1005008")
        real_save(obj, path)

    monkeypatch.setattr(torch, "save", disk_full_on_second)
    with pytest.raises(UserError, match="unexpected pos.*unchanged") as e:
        train.main(["--dry-run", f"--out-dir={tmp_path}"])
    assert one_line(e) and not list(tmp_path.glob("*.tmp"))
    assert weights(tmp_path)["epoch"] == 0


def test_an_error_that_is_not_a_write_error_is_not_reported_as_one(tmp_path):
    from logs import write_atomic

    def buggy(tmp):
        raise RuntimeError("a bug in the writer")

    with pytest.raises(RuntimeError, match="a bug"):
        write_atomic(str(tmp_path / "f"), buggy)


# --- checkpoints and evaluation ---------------------------------------------------------------------------------

def test_a_checkpoint_from_a_newer_version_with_unknown_fields_still_loads(finished, tmp_path):
    ckpt = weights(finished["run_dir"])
    ckpt["config"]["a_future_setting"] = 3
    ckpt["future_entry"] = [1]
    torch.save(ckpt, tmp_path / "last.pt")
    loaded = checkpoint.load_checkpoint(str(tmp_path))["config"]
    assert asdict(loaded) == {k: v for k, v in ckpt["config"].items() if k != "a_future_setting"}


def test_resuming_a_finished_run_says_there_is_nothing_left(finished):
    with pytest.raises(UserError, match="finished all 2 epochs; nothing to resume .*--init-from=") as e:
        train.main([f"--resume={finished['run_dir']}"])
    assert one_line(e)


def test_evaluate_writes_summary_json_refuses_to_overwrite_and_takes_best_pt(finished, tmp_path, capsys):
    run = finished["run_dir"]
    first = train.main([f"--evaluate={run}", f"--out-dir={tmp_path / 'e'}"])
    assert f"evaluating {run}/last.pt (epoch 2)" in capsys.readouterr().out
    saved = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert saved["test_acc"] == first["test_acc"] == finished["final_test_acc"] and saved["epoch"] == 2
    with pytest.raises(UserError, match="already holds files") as e:
        train.main([f"--evaluate={run}", f"--out-dir={tmp_path / 'e'}"])
    assert one_line(e)
    assert train.main([f"--evaluate={run}", f"--out-dir={tmp_path / 'e'}", "--overwrite"])["epoch"] == 2
    best = train.main([f"--evaluate={run}/best.pt"])
    assert best["epoch"] == finished["best_epoch"] and best["out_dir"] == os.path.join(run, "evaluate-best")


def test_evaluate_on_a_dir_without_a_checkpoint_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no checkpoint at") as e:
        train.main([f"--evaluate={tmp_path}"])
    assert one_line(e)


def test_init_from_trains_a_whole_new_run(finished, tmp_path):
    result = train.main(["--dry-run", f"--init-from={finished['run_dir']}", f"--out-dir={tmp_path}"])
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert json.loads((tmp_path / "config.json").read_text())["init_from"] == finished["run_dir"]


def test_init_from_loads_exactly_the_checkpoints_weights(finished, tmp_path, monkeypatch):
    assert "holds the initial weights" in interrupted_run(monkeypatch, tmp_path, 1,
                                                          f"--init-from={finished['run_dir']}")
    start = weights(tmp_path)
    assert same_weights(start["model"], weights(finished["run_dir"])["model"])
    assert start["optimizer"]["state"] == {} and start["epoch"] == 0  # a new optimizer and schedule


def test_init_from_another_model_kind_names_it(finished, tmp_path):
    dilated = train.main(["--dry-run", "--model=dilated", f"--out-dir={tmp_path / 'd'}"])
    with pytest.raises(UserError, match="holds a --model=dilated network, not a Net; pass --model=dilated") as e:
        train.main(["--dry-run", f"--init-from={dilated['run_dir']}", f"--out-dir={tmp_path / 'n'}"])
    assert one_line(e)


def test_ctrl_c_during_the_final_analysis_keeps_the_run_and_names_evaluate(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "save_analysis", interrupted)
    with pytest.raises(UserError, match=f"interrupted in the final analysis.*--evaluate={tmp_path}"):
        train.main(["--dry-run", f"--out-dir={tmp_path}"])
    assert weights(tmp_path)["epoch"] == 2


def test_a_second_run_into_a_run_dir_in_use_is_refused(tmp_path, monkeypatch):
    import fcntl

    interrupted_run(monkeypatch, tmp_path, 2)
    with open(tmp_path / ".lock", "w") as held:  # what a live run into tmp_path holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for argv in ([f"--resume={tmp_path}"], ["--dry-run", f"--out-dir={tmp_path}", "--overwrite"]):
            with pytest.raises(UserError, match="is in use by another run") as e:
                train.main(argv)
            assert one_line(e)
    assert weights(tmp_path)["epoch"] == 1  # untouched
    assert [h["epoch"] for h in train.main([f"--resume={tmp_path}"])["history"]] == [1, 2]  # free again
