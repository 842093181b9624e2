"""Where and how bench steps run: the device, bf16 autocast, synchronisation, CPU threads."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from peftds.errors import PeftdsError


def resolve_device(name: str | None) -> torch.device:
    """``auto`` / None: the GPU when there is one, else the CPU; else the named device (checked)."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PeftdsError("bench.device=cuda but no GPU is available")
    return dev


def use_bf16(setting: Any, device: torch.device) -> bool:
    """``auto`` / None: bf16 autocast on a GPU that supports it (fp32 on CPU); else the setting."""
    if setting in (None, "auto"):
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return bool(setting)


def autocast_for(device: torch.device | None, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``bf16``, else a no-op context."""
    if bf16 and device is not None:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: torch.device | None) -> None:
    """Wait for the GPU's queued work (timings must not end before the step does)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class cpu_threads:
    """``torch.set_num_threads(n)`` inside the block (``n`` falsy: unchanged), restored after.

    One thread is the bench default on CPU: with torch's default (one per core) a step waits for every
    OpenMP worker, and on a machine shared with other jobs a descheduled worker stalls each parallel
    region; measured here (2 cores, other jobs running) a tiny_t5 step took 0.15-8 s with 2 threads
    and a steady 45 ms with 1."""

    def __init__(self, n: int | None) -> None:
        self.n = int(n) if n else None
        self.before: int | None = None

    def __enter__(self) -> cpu_threads:
        if self.n:
            self.before = torch.get_num_threads()
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc: object) -> bool:
        if self.before is not None:
            torch.set_num_threads(self.before)
        return False
