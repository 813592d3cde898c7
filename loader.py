"""The loaders that feed a run: a Split's images augmented a batch at a time, in an order that follows from
(seed, epoch), each rank of torchrun on its own share."""
import os
import random
import signal

import cv2
import numpy as np
import torch

from runtime import STOP_SIGNALS


class AugmentedDataset(torch.utils.data.Dataset):
    """Applies a transforms.Pipeline to in-memory uint8 images, a batch at a time.

    Keys are (epoch, index) pairs from EpochSampler. Each batch reseeds the
    pipeline from (seed, epoch, first index), so the augmentation an image gets
    depends on the seed and the epoch only: not on worker count or on resuming.
    """

    def __init__(self, split, transform, seed=0):
        self.split, self.transform, self.seed = split, transform, seed

    def __len__(self):
        return len(self.split.labels)

    def __getitems__(self, keys):  # -> images (B, 3, H, W) float, labels (B,) int64
        epoch, first = keys[0]
        self.transform.set_epoch(epoch)
        self.transform.set_random_state(np.random.default_rng((self.seed, epoch, first)),
                                        random.Random(hash((self.seed, epoch, first))))
        indices = [index for _, index in keys]
        return self.transform(self.split.images[indices]), torch.from_numpy(self.split.labels[indices])

    def __getitem__(self, key):
        images, labels = self.__getitems__([key])
        return images[0], labels[0]


def keep_batch(batch):
    """collate_fn for AugmentedDataset: its __getitems__ already returns a whole batch."""
    return batch


def epoch_seed(seed, epoch):
    """The seed of everything random in one epoch (data order, dropout, CutMix): a function of (seed, epoch) alone,
    so a resumed run draws what an uninterrupted one would."""
    return seed * 100_003 + epoch


class EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch, index) keys; the order is a function of (seed, epoch) alone.

    Under torchrun each of `world` processes takes every world-th key of the
    same order, so the ranks see disjoint parts. Shuffled (training) orders are
    cut to a multiple of world so every rank runs the same number of steps.
    """

    def __init__(self, n, seed=0, shuffle=True, rank=0, world=1):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.epoch = self.skip = 0

    def set_epoch(self, epoch, skip=0):
        """skip: keys of this rank's share already used, when an epoch continues after an interruption."""
        self.epoch, self.skip = epoch, skip

    def _used(self):
        return self.n - self.n % self.world if self.shuffle else self.n

    def __len__(self):
        return len(range(self.rank, self._used(), self.world)) - self.skip

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch)))
        else:
            order = torch.arange(self.n)
        return ((self.epoch, i) for i in order[: self._used()][self.rank::self.world][self.skip:].tolist())


def _worker_init(worker_id):
    cv2.setNumThreads(0)  # one OpenCV thread per worker: workers already run in parallel
    # Ctrl-C, and a SIGTERM sent to the whole process group (`timeout`, Slurm), are the main process's to handle:
    # it saves first, then shuts the workers down. A worker killed by one would take the run down with a traceback.
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)


def worker_count(cfg, device):
    """cfg.workers, or for -1 (auto): one per core, up to 16, to keep a GPU fed; on CPU none on 2 cores or
    fewer, where worker processes only take cores from the model's math (docs/experiments.md, CPU speed),
    else 2."""
    if cfg.workers >= 0:
        return cfg.workers
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return min(cores, 16)
    return 0 if cores <= 2 else 2


def make_loader(split, transform, cfg, device, train, rank=0, world=1):
    """DataLoader over a split, or this rank's part of it; training batches are shuffled, the last partial one dropped.

    cfg.batch_size is the global batch: each of `world` processes loads batch_size // world.
    """
    sampler = EpochSampler(len(split.labels), cfg.seed, shuffle=train, rank=rank, world=world)
    batch_size = cfg.batch_size // world
    workers = worker_count(cfg, device) if train or device.type == "cuda" else 0  # CPU eval is cheap: no processes
    return torch.utils.data.DataLoader(
        AugmentedDataset(split, transform, cfg.seed), batch_size=batch_size, sampler=sampler,
        collate_fn=keep_batch, num_workers=workers, persistent_workers=workers > 0, worker_init_fn=_worker_init,
        pin_memory=device.type == "cuda", drop_last=train and len(sampler) > batch_size,
        # Its own generator: starting an epoch then draws nothing from the global RNG (dropout, CutMix).
        generator=torch.Generator().manual_seed(cfg.seed),
    )
