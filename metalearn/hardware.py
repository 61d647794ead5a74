"""Hardware profiles: the device, CPU threads, autocast."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
import sys
from typing import Any

import torch

from metalearn.config import HardwareConfig, check_values
from metalearn.errors import MetalearnError


def setup_device(cfg: Any) -> torch.device:
    if cfg.get("keep_freed_memory", True):
        keep_freed_memory()
    check_values(cfg, HardwareConfig, prefix="hardware.")  # the trainer checked the whole config; metalearn-eval its hardware
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    device = torch.device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MetalearnError(f"hardware.device={cfg.device} but no CUDA device is visible to torch "
                                 f"(torch.cuda.is_available() is False); use hardware=cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MetalearnError(f"hardware.device={cfg.device} but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise MetalearnError(f"hardware.device={cfg.device!r} is not supported; use cpu, cuda or cuda:N")
    return device


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the OS. Returns whether it applied.

    Why: a training step frees and re-allocates the same few-MB activations for every task of a
    meta-batch. By default glibc serves such blocks from fresh mmap'd pages or trims them off the
    heap when freed, so each allocation page-faults and zero-fills anew. Measured on the MAML
    benchmark workload (scripts/bench.py, 15 queries, 2 cores): 1.2-2.2 million minor page faults
    and 4-7 s of system time per 15 steps by default, 0.12 million and 0.7 s with this. The cost: the
    process keeps its peak heap (freed memory is reused, not returned), which peak RSS already counts.

    One heap (arena) for all threads: with the memory kept, each thread's own arena would keep its own
    peak, and what one thread freed would never serve another. Measured on the 15-query workload:
    MAML's `auto` trial (vmap rounds on the main thread, split's query side in worker threads) peaked at
    ~1,000 MB with an arena per thread and ~945 MB with one, at the same tasks/s (scripts/bench.py).
    A no-op where the C library is not glibc (macOS, musl)."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # blocks up to 256 MiB come from the heap; the heap top is trimmed only past 1 GiB free
    return (bool(mallopt(M_MMAP_THRESHOLD, 256 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
            and bool(mallopt(M_ARENA_MAX, 1)))


def release_freed_memory(device: torch.device) -> bool:
    """Hand memory freed by a one-off peak back to the OS (glibc's malloc_trim; CUDA's cached blocks).
    Returns whether anything could be asked to release.

    Why: keep_freed_memory makes the process keep its peak heap, and MAML's `auto` trial peaks
    once, in its vmap round, far above the path it then keeps. Measured on the fomaml preset's
    workload (15 queries, 2 cores): 2.3 GB resident for the whole run after the trial against 0.95
    GB with split forced; 0.97 GB with this call after the trial. Matters when sweep jobs share a machine."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return True
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)  # returns whether memory was released, which depends on the heap's state, not on success
    return True


def _glibc(name: str) -> Any:
    """A function of the C library where it is glibc (Linux), else None (macOS, musl)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def autocast(device: torch.device, amp: str, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast or nothing. cache=False for a CUDA-graph capture, which must not reuse casts made outside it."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock timer measures it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
