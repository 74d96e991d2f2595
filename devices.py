"""The one device resolver of every command, and whether bf16 pays on a device."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from errors import UserError


class DeviceError(UserError, ValueError):
    """A device name that is not one, or a device this machine lacks."""


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Resolve "auto" (CUDA if there is one, else the CPU) or a device name that must exist (DeviceError)."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"device {name!r}: not a device name (auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name}: CUDA is not available here (use cpu or auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {name}: MPS is not available here (use cpu or auto)")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays: CUDA, or a CPU with bf16 arithmetic in /proc/cpuinfo.
    Elsewhere bf16 is emulated and slower than fp32."""
    if device.type != "cpu":
        return device.type == "cuda"
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    except OSError:
        return False
    return bool(set(flags) & {"avx512_bf16", "amx_bf16", "bf16"})


def busy_cores(before: list[int], after: list[int], cores: int) -> float:
    """Cores' worth of work done between two samples of /proc/stat's "cpu" line (jiffies per state:
    user nice system idle iowait irq softirq steal)."""
    delta = [b - a for a, b in zip(before[:8], after[:8])]
    total = sum(delta)
    return cores * (1 - (delta[3] + delta[4]) / total) if total > 0 else 0.0


def _cpu_jiffies() -> list[int] | None:
    try:
        return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None  # no /proc (macOS, Windows): keep torch's thread count


def fit_threads_to_free_cores(interval: float = 0.3) -> str | None:
    """Without OMP_NUM_THREADS, lower torch's CPU threads to the cores other processes leave free, sampled
    over `interval` s at start: on 2 cores beside one busy process a step is 2-3x faster on 1 thread than
    on 2, whose threads wait on each other (README, Results). Returns the line to print when it lowers them."""
    if "OMP_NUM_THREADS" in os.environ:
        return None  # the user's choice
    before = _cpu_jiffies()
    if before is None:
        return None
    time.sleep(interval)
    after, cores = _cpu_jiffies(), os.cpu_count() or 1
    free = max(1, math.floor(cores - busy_cores(before, after, cores) + 0.5))
    if free >= torch.get_num_threads():
        return None
    torch.set_num_threads(free)
    return (f"CPU: other processes keep {cores - free} of {cores} cores busy: training on {free} thread(s), "
            f"which is faster than waiting for the busy cores (OMP_NUM_THREADS=N chooses)")
