"""Peak memory of one run: reset when a run starts, read when it ends.

CUDA: the caching allocator's peak of allocated bytes (what a larger batch or crop
must fit under). CPU: the process's peak resident set since the reset (Linux VmHWM,
reset through /proc/self/clear_refs); it includes what the process holds when the
run starts (Python, torch, the data), after freed memory of earlier runs in the same
process has been handed back to the OS. Without /proc (not Linux) the CPU figure is
the process's lifetime peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_memory(device: torch.device) -> None:
    """Start this run's peak at what the process holds now, so an earlier run's peak never counts."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    gc.collect()
    _return_freed_heap()
    try:
        _CLEAR_REFS.write_text("5")  # Linux >= 4.0: VmHWM := the current resident set
    except OSError:
        pass


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        line = next(line for line in _STATUS.read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _return_freed_heap() -> None:
    """glibc keeps the heap pages of freed tensors; malloc_trim hands them back to the OS."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
