"""The README's figures against the run records under results/: the table cannot drift from the evidence."""
import itertools
import json
import re
import statistics
from dataclasses import asdict
from pathlib import Path

import pytest

from config import parse_args
from config import MODELS
from model import count_params, multiply_adds, receptive_field

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_table(header_start):
    """The README's table whose header line starts with header_start, as a list of {column: cell} dicts."""
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2:])
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in rows]


def numbers(cell):
    """'**85.57 ± 0.39**' -> [85.57, 0.39]; '14.2 min' -> [14.2]."""
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", cell.replace(",", ""))]


def records(row):
    """(config, summary) of every seed of a row, from the folder its record link names."""
    folder = ROOT / re.search(r"\]\((results/[^)]+)\)", row["record"])[1]
    runs = sorted(p.parent for p in folder.glob("*/summary.json"))
    assert runs, f"no */summary.json under {folder}"
    return [(json.loads((p / "config.json").read_text()), json.loads((p / "summary.json").read_text()))
            for p in runs]


# Every row runs this command with its options; a row's "the same and ..." adds to the row above.
BASE = re.search(r"Each row runs\s+`python train.py ([^`]*) OPTIONS`", README)[1]


def command_flags(row):
    """The --key=value options of a row's command: the common ones, the row above's if it says so, its own."""
    flags = re.findall(r"--[\w-]+=\S+", BASE)
    if row["options"].startswith("the same and"):
        flags += command_flags(ROWS[ROWS.index(row) - 1])
    return flags + re.findall(r"--[\w-]+=[^\s`]+", row["options"])


def mean_sd(values):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


ROWS = readme_table("| model | options |")
# A row may name a run nobody has made yet (a schedule too long for the CPU): its command, no figures.
MEASURED = [row for row in ROWS if row["val acc"] != "not measured"]
# Config fields added after some records were written, and the value that behaves as the code did before.
BEFORE_IT_EXISTED = dict(translate=0, ema=0.0, init_from="", cutmix_decay=0.0, aug_decay=0.0, tensorboard=False,
                         val_split=0, split_seed=0, optimizer="sgd", lr_end=4e-6, sharpen_p=0.0, jitter_p=0.0,
                         mixup=0.0)


def test_the_table_has_rows():
    assert MEASURED and all(row["record"] for row in MEASURED)
    for row in ROWS:
        if row not in MEASURED:  # a command that runs as printed, and nothing claimed for it
            assert parse_args(command_flags(row)).epochs == int(row["epochs"])
            assert not (row["seeds"] + row["flip TTA"] + row["training time"] + row["record"]).strip("—- ")


@pytest.mark.parametrize("row", MEASURED, ids=[r["record"] for r in MEASURED])
def test_row_matches_its_records(row):
    runs = records(row)
    assert int(row["seeds"]) == len(runs) == len({c["seed"] for c, _ in runs})
    flags = command_flags(row)
    for cfg, summary in runs:
        # The record is this row's command on today's Config: a changed default needs a new run.
        expected = asdict(parse_args(flags + [f"--seed={cfg['seed']}", f"--out-dir={cfg['out_dir']}"]))
        # A run continued with --resume says so; it ends as the uninterrupted run would (tests/test_faults.py).
        assert {k: expected[k] for k in cfg if k != "resume"} == {k: v for k, v in cfg.items() if k != "resume"}
        # Fields added since the run are not in its config.json: the command must give them the value that
        # does what the code did before they existed (CutMix's decay is moot when CutMix is off).
        for key in expected.keys() - cfg.keys() - ({"cutmix_decay"} if expected["cutmix_p"] == 0 else set()):
            assert key in BEFORE_IT_EXISTED, f"add {key} to BEFORE_IT_EXISTED"
            assert expected[key] == BEFORE_IT_EXISTED[key], f"the command must pin --{key.replace('_', '-')}"
        assert cfg["epochs"] == summary["epochs"] == int(row["epochs"]) == len(summary["history"])
    for column, key in (("val acc", "final_test_acc"), ("flip TTA", "final_test_acc_flip_tta")):
        mean, sd = mean_sd([s[key] for _, s in runs])
        printed = numbers(row[column])
        assert printed[0] == pytest.approx(mean, abs=0.005)
        if sd is not None:
            assert printed[1] == pytest.approx(sd, abs=0.005)
    minutes = statistics.mean(s["train_seconds"] for _, s in runs) / 60
    assert numbers(row["training time"])[0] == pytest.approx(minutes, abs=0.05)


def test_headline_quotes_the_shipped_run_the_gpu_record_and_the_first_row():
    head = "\n".join(README.splitlines()[:10])
    shipped = json.loads((ROOT / "pretrained" / "summary.json").read_text())
    assert f"{shipped['final_test_acc']:.2f}% of CIFAR-10's 10,000 official test images" in head
    assert f"{shipped['train_seconds'] / 60:.1f} minutes of" in head and "AMD EPYC with AVX-512" in head
    assert shipped["host"]["cpu"] == "AMD EPYC" and "avx512f" in shipped["host"]["cpu_features"]
    assert f"about {shipped['train_seconds'] / shipped['epochs']:.0f} s" in head
    gpu = [float(line.split(",")[-1]) for line in
           (ROOT / "results" / "h200-200ep-stopped" / "history.csv").read_text().splitlines()[2:]]  # after epoch 1
    assert f"to {statistics.median(gpu):.1f} s" in head
    first = ROWS[0]
    assert f"{first['val acc'].strip('*')}%" in head and f"{int(first['seeds'])} seeds" in head


def test_experiment_links_point_at_sections():
    log = (ROOT / "docs" / "experiments.md").read_text()
    anchors = {re.sub(r"[^\w -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^## (.+)$", log, re.M)}
    links = re.findall(r"docs/experiments\.md#([\w-]+)", README)
    assert links and set(links) <= anchors


def test_the_readme_model_figures_are_the_code_s():
    for name in ("net", "fast", "dilated", "seed"):
        net = MODELS[name]()
        assert f"{count_params(net):,}" in README, name
    assert f"receptive field {receptive_field(MODELS['net']())[-1]['rf']}" in README
    text = README.replace("\n", " ")
    for name in ("fast", "dilated"):
        assert f"receptive field {receptive_field(MODELS[name]())[-1]['rf']}" in text, name
    macs = {name: f"{multiply_adds(MODELS[name]()) / 1e6:.1f}" for name in ("net", "fast", "dilated")}
    assert f"{macs['fast']} MMACs per image against `Net`'s {macs['net']}" in text
    assert f"{macs['dilated']} MMACs per image against `Net`'s {macs['net']}" in text


def test_the_receptive_field_table_is_the_code_s():
    printed = [(row["layer"].split(" (")[0], *(int(row[k]) for k in ("k", "s", "d", "jump", "RF")))
               for row in readme_table("| layer | k | s | d | jump | RF |")]
    # the 1x1 convs add nothing to the field; train.py prints them, the README leaves them out
    assert printed == [(r["layer"], r["kernel"], r["stride"], r["dilation"], r["jump"], r["rf"])
                       for r in receptive_field(MODELS["net"]()) if r["kernel"] > 1]


def test_the_pick_table_is_the_results_table_s():
    picks = readme_table("| net | pick it |")
    assert [p["net"] for p in picks] == ["`Net`", "`FastNet`"]
    for pick in picks:
        for column in (c for c in pick if c.endswith(" epochs")):
            if pick[column] == "—":
                continue
            row = next(r for r in MEASURED if r["model"].strip("²") == pick["net"]
                       and int(r["epochs"]) == int(column.split()[0]))
            acc, minutes = numbers(pick[column])
            assert acc == numbers(row["val acc"])[0] and abs(minutes - numbers(row["training time"])[0]) <= 0.5


def test_the_speed_table_is_its_benchmark_records():
    section = README[README.index("### Speed"):README.index("| net | epoch")]
    path = re.search(r"\[record\]\((results/[\w/.-]+benchmark\.json)\)", section)[1]
    record = json.loads((ROOT / path).read_text())
    rows = readme_table("| net | epoch")
    assert [row["net"] for row in rows] == ["`FastNet`", "`Net`"]
    for row, name in zip(rows, "AB"):
        setting = record["settings"][name]
        epoch, train, gflops, evaluate = (numbers(row[column])[0] for column in (
            "epoch (45,000 images)", "training steps alone", "GFLOP/s in the epoch", "eval (5,000 images)"))
        assert epoch == pytest.approx(setting["seconds_per_pass"]["epoch"], abs=0.05)
        assert train == pytest.approx(setting["seconds_per_pass"]["train"], abs=0.05)
        assert gflops == pytest.approx(setting["gflops"]["epoch"], abs=0.05)
        assert evaluate == pytest.approx(setting["seconds_per_pass"]["eval"], abs=0.05)
    assert record["settings"]["B"]["options"] == record["settings"]["A"]["options"] + " --model=net"
    assert record["settings"]["B"]["config"]["model"] == "net" and "avx512f" in record["cpu_features"]
    assert '--model=fast --against="--model=net"' in README
    # the compile sentence: FastNet's epoch with and without --compile=true, in one invocation on each host
    for host in ("bench-cpu", "bench-cpu-avx2"):
        compiled = json.loads((ROOT / "results" / host / "benchmark.json").read_text())["settings"]
        a, b = (compiled[k]["seconds_per_pass"]["epoch"] for k in "AB")
        assert compiled["B"]["options"] == compiled["A"]["options"] + " --compile=true"
        assert f"[{b:.1f} against {a:.1f} s](results/{host}/benchmark.json)" in README
