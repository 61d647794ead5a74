"""Hardware profiles: the device, CPU threads, autocast."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from metalearn.errors import MetalearnError


def setup_device(cfg: Any) -> torch.device:
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise MetalearnError(f"hardware.threads must be >= 1 or null, got {cfg.threads}")
        torch.set_num_threads(int(cfg.threads))
    if cfg.amp not in ("none", "bf16"):
        raise MetalearnError(f"hardware.amp={cfg.amp!r} is not one of: none, bf16")
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


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock timer measures it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
