"""The hardware profile's process-level settings."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from metalearn.config import HardwareConfig
from metalearn.engine import hardware

REALLOCATE = """
import json, resource, sys, torch
from metalearn.engine.hardware import keep_freed_memory
applied = keep_freed_memory()
faults = []
for _ in range(8):
    for n in (750_000, 12_000_000):  # 3 MB and 48 MB: glibc's defaults map both afresh each time
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.empty(n)
        x.fill_(1.0)
        del x
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(json.dumps({"applied": applied, "faults": faults}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_reuses_freed_blocks_without_page_faults():
    """Freed 3 MB and 48 MB blocks are reused as they are: once warm, re-allocating and filling them
    touches no fresh page (by default each fill faults in ~750 and ~11,700 pages)."""
    out = subprocess.run([sys.executable, "-c", REALLOCATE], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    assert r["applied"]
    assert sum(r["faults"][-6:]) < 100, r["faults"]


@pytest.mark.parametrize("keep", [True, False])
def test_setup_device_applies_the_allocator_setting_only_when_asked(monkeypatch, keep):
    calls = []
    monkeypatch.setattr(hardware, "keep_freed_memory", lambda: calls.append(1) or True)
    cfg = OmegaConf.structured(HardwareConfig(keep_freed_memory=keep, threads=None))
    assert hardware.setup_device(cfg).type == "cpu"
    assert calls == ([1] if keep else [])
