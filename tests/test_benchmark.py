import json

import pytest

import benchmark
import data
from config import UserError
from baselines import SeedNet
from model import FastNet, Net, multiply_adds


def test_benchmark_runs_and_writes_its_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = benchmark.main(["--dry-run", "--steps=2", "--repeats=1", "--epochs=0", f"--json={out}",
                             "--batch-size=32", "--workers=0"])
    saved = json.loads(out.read_text())
    a = saved["settings"]["A"]
    assert saved["settings"].keys() == {"A"} and a["images_per_s"].keys() == {"data", "train", "eval"}
    assert all(v > 0 for v in a["images_per_s"].values())
    # GFLOP/s follow from the rate and the counted multiply-adds: 6 per MAC for a training step, 2 for inference
    assert a["gflops"]["train"] == pytest.approx(6 * multiply_adds(Net()) * a["images_per_s"]["train"] / 1e9)
    assert a["gflops"]["eval"] == pytest.approx(2 * multiply_adds(Net()) * a["images_per_s"]["eval"] / 1e9)
    assert saved["threads"] >= 1 and a["workers"] == 0 and saved["peak_rss_mib"] > 0
    assert result["settings"]["A"]["batch_size"] == 32
    table = capsys.readouterr().out
    assert "images/s" in table and "GFLOP/s" in table


def test_against_times_two_settings_side_by_side_with_the_epoch_ratio(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(benchmark, "synthetic", lambda **kw: data.synthetic(n_train=96, n_test=32))
    out = tmp_path / "bench.json"
    result = benchmark.main(["--dry-run", "--steps=1", "--repeats=1", "--epochs=2", f"--json={out}",
                             "--batch-size=16", "--workers=0", "--against=--batch-size=32 --channels-last=false"])
    a, b = result["settings"]["A"], result["settings"]["B"]
    assert (a["batch_size"], b["batch_size"]) == (16, 32)
    assert a["config"]["channels_last"] and not b["config"]["channels_last"]
    assert b["options"].endswith("--batch-size=32 --channels-last=false")
    assert result["epoch_time_ratio_a_over_b"] == pytest.approx(b["images_per_s"]["epoch"] / a["images_per_s"]["epoch"])
    assert "epoch time A / B" in capsys.readouterr().out


def test_multiply_adds_counts_convs_and_linear_layers():
    assert multiply_adds(Net()) == pytest.approx(27.9e6, rel=0.01)
    assert multiply_adds(FastNet()) == pytest.approx(17.7e6, rel=0.01)
    net = Net().train()
    multiply_adds(net)
    assert net.training  # the count leaves the mode as it was


def test_bad_benchmark_options_are_one_line():
    with pytest.raises(UserError, match="--steps and --repeats"):
        benchmark.main(["--dry-run", "--steps=0"])


def test_each_setting_counts_its_own_model_and_schedule(tmp_path, monkeypatch):
    # GFLOP/s of B come from B's own model, not A's
    monkeypatch.setattr(benchmark, "synthetic", lambda **kw: data.synthetic(n_train=96, n_test=32))
    result = benchmark.main(["--dry-run", "--steps=1", "--repeats=1", "--epochs=2", f"--json={tmp_path / 'b.json'}",
                             "--batch-size=32", "--workers=0", "--against=--batch-size=16 --model=seed"])
    a, b = result["settings"]["A"], result["settings"]["B"]
    assert a["mmacs_per_image"] == pytest.approx(multiply_adds(Net()) / 1e6)
    assert b["mmacs_per_image"] == pytest.approx(multiply_adds(SeedNet()) / 1e6)
    assert b["gflops"]["train"] == pytest.approx(6 * multiply_adds(SeedNet()) * b["images_per_s"]["train"] / 1e9)
