import json

import benchmark


def test_benchmark_runs_and_writes_its_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = benchmark.main(["--dry-run", "--steps=2", "--repeats=1", "--full-epoch=false", f"--json={out}",
                             "--batch-size=32", "--workers=0"])
    saved = json.loads(out.read_text())
    assert saved["images_per_s"].keys() == {"data", "train", "eval"}
    assert all(v > 0 for v in saved["images_per_s"].values())
    assert saved["threads"] >= 1 and saved["workers"] == 0 and saved["peak_rss_mib"] > 0
    assert result["batch_size"] == 32
    table = capsys.readouterr().out
    assert "images/s" in table and "train" in table
