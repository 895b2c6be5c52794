"""Peak memory of one run or measurement: reset when it starts, read when it ends.

CUDA: the most the caching allocator held (`max_memory_reserved`: tensors plus
fragmentation, the CUDA context excluded), which is what must fit the device. CPU:
the process's peak resident set since the reset (Linux VmHWM, reset through
/proc/self/clear_refs), after the memory freed by earlier runs in the process has
been handed back to the OS; it includes what the process held when the run started
(Python, torch, the data). Without /proc (not Linux) the CPU figure is the process's
lifetime peak.
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
_LIBC_NAME = ctypes.util.find_library("c")
_LIBC = ctypes.CDLL(_LIBC_NAME) if _LIBC_NAME else None


def release_freed_memory(device: torch.device) -> None:
    """Hand back what finished work freed: the CUDA cache, or glibc's heap pages, which it otherwise
    keeps resident and a later peak would reuse unseen."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak at what the process holds now, so an earlier run's peak never counts."""
    release_freed_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        _CLEAR_REFS.write_text("5")  # Linux >= 4.0: VmHWM := the current resident set
    except OSError:
        pass


def peak_memory_bytes(device: torch.device) -> int:
    """The peak since the last reset_peak_memory (see the module's docstring for what it counts)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_reserved(device)
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB


def resident_bytes() -> int | None:
    """The process's resident set now (Linux), e.g. to tell a peak's growth from what was there."""
    return _status_bytes("VmRSS")


def _status_bytes(key: str) -> int | None:
    try:
        line = next(line for line in _STATUS.read_text().splitlines() if line.startswith(f"{key}:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024  # kB
