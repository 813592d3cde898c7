import json

import pytest

import sweep
from config import UserError


def test_fit_epochs_keeps_what_fits_and_shrinks_what_does_not():
    assert sweep.fit_epochs(200, epoch_seconds=2.0, seconds_left=300, overhead=10) == 130  # (0.9 * 300 - 10) / 2
    assert sweep.fit_epochs(30, 2.0, 500, 10) == 30
    assert sweep.fit_epochs(200, 100.0, 50, 10) == 1  # at least one epoch


def test_the_probe_times_its_second_epoch_not_the_first(tmp_path):
    """The first epoch also pays for start-up (cuDNN autotuning, the workers): timing it cut a 200-epoch run to 14."""
    (tmp_path / "history.csv").write_text("epoch,test_acc,seconds\n1,40.0,15.5\n2,50.0,5.0\n")
    assert sweep.epoch_seconds(tmp_path) == 5.0
    (tmp_path / "history.csv").write_text("epoch,test_acc,seconds\n1,40.0,15.5\n")
    assert sweep.epoch_seconds(tmp_path) is None  # a probe that died in its second epoch


def test_with_epochs_replaces_either_spelling():
    assert sweep.with_epochs(["--epochs=30", "--seed=1"], 5) == ["--seed=1", "--epochs=5"]
    assert sweep.with_epochs(["--epochs", "30", "--lr=0.1"], 5) == ["--lr=0.1", "--epochs=5"]
    assert sweep.with_epochs(["--lr=0.1"], 7) == ["--lr=0.1", "--epochs=7"]


def test_a_sweep_probes_runs_and_gathers_every_record(tmp_path, capsys):
    rows = sweep.main([f"--out={tmp_path}", "--budget=600", "--common=--dry-run --threads=1",
                       "--epochs=2", "--epochs=2 --seed=1"])
    assert [r["name"] for r in rows] == ["r0", "r1"] and all(r["finished"] for r in rows)
    assert [r["epochs_planned"] for r in rows] == [2, 2]
    for name, seed in (("r0", 0), ("r1", 1)):
        kept = tmp_path / "results" / name
        assert json.loads((kept / "config.json").read_text())["seed"] == seed
        summary = json.loads((kept / "summary.json").read_text())
        assert len(summary["history"]) == 2 and len((kept / "history.csv").read_text().splitlines()) == 3
        assert len((tmp_path / "probe" / name / "history.csv").read_text().splitlines()) == 3  # 2-epoch timing
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["runs"] == rows
    assert "r1" in capsys.readouterr().out


def test_bad_run_options_are_refused_before_anything_starts(tmp_path):
    with pytest.raises(UserError, match="--lr"):
        sweep.main([f"--out={tmp_path}", "--epochs=2", "--lr=-1"])
    assert not (tmp_path / "probe").exists()


def test_no_runs_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no runs"):
        sweep.main([f"--out={tmp_path}"])
