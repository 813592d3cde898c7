"""Where a run runs: the device it resolves to once, this process's math settings and seeds, its place among
torchrun's processes, the signals that stop it, and the host it reports."""
import contextlib
import os
import platform
import random
import signal
import sys
import threading

import numpy as np
import torch
import torch.distributed as dist

from config import UserError


def resolve_device(name):
    """The one place that turns the `device` setting into a torch.device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):  # xpu, meta, ...: not what this code runs on
        raise UserError(f"error: --device={name} is not supported; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"error: --device={name} but no CUDA GPU is available here; use --device=auto or cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UserError(f"error: --device={name} but this machine has {count} CUDA GPU(s), cuda:0 to "
                        f"cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"error: --device={name} but MPS is not available here; use --device=auto or cpu")
    return device


def runtime(cfg):
    """The run's device, with this process's math settings applied (CPU threads, cuDNN autotuning)."""
    device = resolve_device(cfg.device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cfg.threads > cores:  # the threads wait on each other: an epoch can take a hundred times longer
        print(f"note: --threads={cfg.threads} is more than the {cores} cores this process may use; expect it to be "
              "slow (--threads=0: one per core)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    return device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def init_distributed(cfg, device):
    """(rank, world size, device) under torchrun, which sets WORLD_SIZE; (0, 1, device) in a plain run.

    NCCL with one GPU per process on CUDA, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.batch_size % world:
        raise UserError(f"error: --batch-size={cfg.batch_size} is the global batch and must divide by the {world} "
                        "processes")
    if world == 1:
        return 0, 1, device
    if cfg.sync_bn and device.type != "cuda":
        raise UserError("error: --sync-bn needs CUDA (PyTorch's SyncBatchNorm is GPU-only); leave it off on CPU")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    if rank:
        sys.stdout = open(os.devnull, "w")  # only rank 0 prints
    return rank, world, device


# Ctrl-C, a kill, and a closed terminal or SSH session (SIGHUP, where the OS has it): each one stops a run the same way
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())


@contextlib.contextmanager
def stop_on_signals():
    """An Event that Ctrl-C, SIGTERM or SIGHUP sets (a second one interrupts at once); old handlers come back after."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def sigterm_interrupts():
    """SIGTERM and SIGHUP raise KeyboardInterrupt while the block runs, so a phase that cannot stop at a step boundary (an
    analysis, an evaluation, predict, benchmark, a sweep's wait) ends the same way on a kill as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS[1:]}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def host(device):
    """What the run's speed depends on: CPU model, cores, vector/matrix instructions, threads, torch, GPU."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:  # Linux; elsewhere only the platform's name is known
            info = {k.strip(): v for k, v in (line.split(":", 1) for line in f if ":" in line)}
        cpu, flags = info["model name"].strip(), set(info["flags"].split())
    except (OSError, KeyError):
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), cpu_features=[f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                                                              if f in flags],
                threads=torch.get_num_threads(), torch=torch.__version__,
                gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None)
