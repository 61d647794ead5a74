"""The hardware profile's typed config: where and how a run computes (configs/hardware/)."""

from __future__ import annotations

from dataclasses import dataclass

from metalearn.config.schema import option, schema


@schema("hardware", "hardware_schema")
@dataclass
class HardwareConfig:
    device: str = option("cpu", "cpu | cuda | cuda:N")
    threads: int | None = option(None, "CPU threads (null: torch's default)", low=1, high=1024)
    amp: str = option("none", "autocast: none | bf16", choices=("none", "bf16"))
    channels_last: bool = option(True, "convolutions in channels-last memory layout")
    keep_freed_memory: bool = option(True, "glibc: reuse freed activation memory instead of fresh pages (hardware.py)")
    cuda_graph: bool = option(False, "replay the training step's gradient as a CUDA graph (engine/cuda_graph.py)")
