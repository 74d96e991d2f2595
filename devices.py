"""The one device resolver of every command, and whether bf16 pays on a device."""
from __future__ import annotations

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


def native_bf16(device: torch.device, cpu_flags: str | None = None) -> bool:
    """Whether bf16 autocast pays: CUDA, or a CPU with bf16 arithmetic in /proc/cpuinfo (`cpu_flags` in tests).
    Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    if cpu_flags is None:
        try:
            cpu_flags = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    return bool(set(cpu_flags.split()) & {"avx512_bf16", "amx_bf16", "bf16"})
