"""Run files: atomic writes, and checkpoints loaded with a clear one-line error when unusable."""
import csv
import json
import os
import sys
from dataclasses import fields

import torch

from config import Config


def write_atomic(path, write):
    """write(tmp_path), then rename over path: a crash or kill never leaves a half-written file."""
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    """A checkpoint dict (its "config" as a Config) from a run dir's last.pt or a .pt file; one-line exit if unusable."""
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    if not os.path.isfile(path):
        sys.exit(f"error: no checkpoint at {path}; pass a run dir or a .pt file written by train.py")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # never runs pickled code
    except Exception as e:  # truncated, foreign or not a torch file at all
        sys.exit(f"error: cannot read checkpoint {path} ({type(e).__name__}); it is damaged or not from train.py")
    if not isinstance(ckpt, dict) or not {"model", "config", "epoch"} <= ckpt.keys():
        sys.exit(f"error: {path} is not a train.py checkpoint (no model/config/epoch entries)")
    ckpt["path"] = path
    ckpt["config"].setdefault("muon_lr", 0.0)  # checkpoints from before Muon trained every weight with SGD
    known = {f.name for f in fields(Config)}  # fields added or removed since the checkpoint: defaults / dropped
    ckpt["config"] = Config(**{k: v for k, v in ckpt["config"].items() if k in known})
    return ckpt


def load_weights(model, state):
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        sys.exit(f"error: checkpoint does not fit this model ({first}); use the config it was trained with")


def write_history_csv(history, path):
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
    write_atomic(path, write)


def write_json(obj, path):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
    write_atomic(path, write)
