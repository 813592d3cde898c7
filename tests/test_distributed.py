"""A real 2-process torchrun (gloo, CPU) on tiny data."""
import json
import os
import subprocess
import sys

import pytest
import torch

import train
from model import Net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs train.main under torchrun, recording which training images this rank loaded
# and its final weights, so the test can compare the ranks.
LAUNCHER = """
import json, os, sys
sys.path.insert(0, {root!r})
import engine, loader, train

rank, out = int(os.environ["RANK"]), {out!r}
seen, models = [], []
fetch = loader.AugmentedDataset.__getitems__
def recording(self, keys):
    if len(self) == 400:  # the training split
        seen.extend(keys)
    return fetch(self, keys)
loader.AugmentedDataset.__getitems__ = recording
step = engine.train_one_epoch
def keep_model(model, *args, **kwargs):
    models.append(model)
    return step(model, *args, **kwargs)
train.engine.train_one_epoch = keep_model
train.main(sys.argv[1:])
os.makedirs(out + "-ranks", exist_ok=True)
with open(f"{{out}}-ranks/seen{{rank}}.json", "w") as f:
    json.dump(seen, f)
import torch
torch.save(models[-1].module.state_dict(), f"{{out}}-ranks/weights{{rank}}.pt")
"""


@pytest.fixture(scope="module")
def ddp_run(folder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    out = str(tmp / "run")
    launcher = tmp / "launch.py"
    launcher.write_text(LAUNCHER.format(root=ROOT, out=out))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(launcher), f"--data-dir={folder}", f"--out-dir={out}", "--epochs=2",
                           "--batch-size=32", "--workers=0", "--device=cpu"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_ranks_saw_disjoint_halves_of_the_data(ddp_run):
    out, _ = ddp_run
    seen = [json.load(open(f"{out}-ranks/seen{r}.json")) for r in (0, 1)]
    for epoch in (1, 2):
        parts = [{i for e, i in s if e == epoch} for s in seen]
        assert len(parts[0]) == len(parts[1]) == 192  # 12 steps of 16 per rank (global batch 32) of 200 each
        assert not parts[0] & parts[1]


def test_ranks_end_with_identical_weights(ddp_run):
    out, _ = ddp_run
    w0, w1 = (torch.load(f"{out}-ranks/weights{r}.pt", weights_only=True) for r in (0, 1))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)


def test_reported_accuracy_equals_single_process_evaluation(ddp_run, folder):
    out, _ = ddp_run
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["processes"] == 2
    single = train.main([f"--evaluate={out}", f"--data-dir={folder}"])
    assert summary["history"][-1]["test_acc"] == summary["final_test_acc"] == single["test_acc"]
    assert abs(summary["history"][-1]["test_loss"] - single["test_loss"]) < 1e-6


def test_only_rank_0_prints(ddp_run):
    _, proc = ddp_run
    assert proc.stdout.count("Trainable params:") == 1
    assert proc.stdout.count("epoch   2/2") == 1


def test_checkpoint_loads_into_a_plain_net(ddp_run):
    out, _ = ddp_run
    state = torch.load(os.path.join(out, "last.pt"), weights_only=True)["model"]
    assert not any(k.startswith("module.") for k in state)
    Net().load_state_dict(state)


def test_a_refusal_under_torchrun_is_said_once_not_once_per_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3",
                           os.path.join(ROOT, "train.py"), "--dry-run", "--device=cpu", f"--out-dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=300)
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(said) == 1 and "processes" in said[0], said
    assert not (tmp_path / "run").exists()
