"""Whether /dev/shm can hold what the loader workers prefetch, checked before they start.

A DataLoader worker collates each batch into shared memory, and each keeps
`PREFETCH_FACTOR` batches ready. Docker gives a container 64 MB of /dev/shm unless told
otherwise; a loader that outgrows it dies mid-run with a bus error and no hint. Both of
torch's sharing strategies (file_descriptor, file_system) allocate there alike, so
switching them does not help: the run stops at once with one line saying what to change.
May import segtrain.errors only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from segtrain.errors import UserError

SHM = Path("/dev/shm")
PREFETCH_FACTOR = 2  # torch's DataLoader default: batches each worker holds ready


def free_bytes(path: Path = SHM) -> int | None:
    """Free bytes of the shared-memory file system; None where there is none to read."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def check_shared_memory(workers: int, batch_bytes: Sequence[int]) -> None:
    """Raise a UserError when `workers` loader workers, each prefetching PREFETCH_FACTOR batches of
    every loader that runs at once (`batch_bytes`: one batch of each), would not fit /dev/shm's free
    space. Linux only (elsewhere torch shares memory otherwise); nothing to check without workers."""
    if workers == 0 or not sys.platform.startswith("linux"):
        return
    free = free_bytes()
    needed = workers * PREFETCH_FACTOR * sum(batch_bytes)
    if free is None or needed <= free:
        return
    suggested_gib = max(1, -(-2 * needed // 2 ** 30))  # twice the need, in whole GiB
    raise UserError(f"{SHM} has {free / 2 ** 20:.0f} MiB free, but {workers} loader workers prefetching "
                    f"{PREFETCH_FACTOR} batches each need about {needed / 2 ** 20:.0f} MiB there (the run would die "
                    f"with a bus error): give the container more (docker run --shm-size={suggested_gib}g) or "
                    f"use fewer workers (--workers N, [train] workers; 0 loads in the training process)")
