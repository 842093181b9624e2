"""Memory of a bench variant: one step's peak (GPU allocator or the process's RSS high-water mark) and
the variant's own resident tensors (weights, buffers, optimizer state)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import resource
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import torch
from torch import nn

from peftds.bench.device import sync


@cache
def libc() -> ctypes.CDLL | None:
    """The C library (for ``malloc_trim``), or None where it cannot be loaded."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def proc_status_kib(field_name: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), or None off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field_name}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) if m else None


def reset_hwm() -> bool:
    """Reset the process's RSS high-water mark (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """Peak memory of one step above what was allocated before it (bytes)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "rss"
        self.reset_ok = False
        if device.type != "cuda":
            self.reset_ok = reset_hwm()
            if not self.reset_ok:
                self.kind = "rss_unreset"  # VmHWM cannot be reset: increments are lower bounds

    def begin(self) -> int:
        """Start a measurement; returns what is allocated now."""
        gc.collect()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        lib = libc()
        if lib is not None:  # hand freed heap pages back, so RSS before the step ~ live tensors
            with contextlib.suppress(AttributeError, OSError):
                lib.malloc_trim(0)
        if self.reset_ok:
            reset_hwm()
        return (proc_status_kib("VmRSS") or 0) * 1024

    def end(self, before: int) -> int:
        """The peak since :meth:`begin` above ``before``."""
        if self.device.type == "cuda":
            sync(self.device)
            return max(0, torch.cuda.max_memory_allocated(self.device) - before)
        return max(0, (proc_status_kib("VmHWM") or 0) * 1024 - before)


def process_peak_rss_mb() -> float:
    """The whole process's peak RSS (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def tensor_bytes(tensors: Iterable[object]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared storage counted once, meta ignored)."""
    seen, total = set(), 0
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            continue
        key = (t.untyped_storage().data_ptr(), t.device)
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def resident_bytes(model: nn.Module, opt: torch.optim.Optimizer | None) -> int:
    """A variant's own tensors: parameters, buffers and optimizer state."""
    ts: list[object] = [*model.parameters(), *model.buffers()]
    if opt is not None:
        for st in opt.state.values():
            ts.extend(v for v in st.values() if isinstance(v, torch.Tensor))
    return tensor_bytes(ts)
