"""Progress of long work: a tqdm bar on a terminal, plain log lines in a batch job.

tqdm turns itself off when stderr is not a terminal, so a job whose output goes to a file
(a Slurm job, `nohup ... > log`) said nothing for a whole phase. `progress()` gives the bar
on a terminal and otherwise `Lines`, which has the bar's surface (iteration, update,
set_postfix, close, `with`) and logs one line per unit done: the count, the time elapsed
and an estimate of the rest. Imports tqdm and the standard library only.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

LINE_EVERY_SECONDS = 30.0  # for fine units (steps, images): a line at most this often, and at the last


def progress(iterable: Iterable[Any] | None = None, *, desc: str, unit: str, total: int | None = None,
             initial: int = 0, every_seconds: float = 0.0, enabled: bool = True, leave: bool = True) -> Any:
    """A tqdm bar when stderr is a terminal, else `Lines` (a line at most every `every_seconds`, and at the
    last unit); `enabled=False` shows nothing (e.g. on the processes of torchrun but rank 0)."""
    if not enabled or sys.stderr.isatty():
        return tqdm(iterable, desc=desc, unit=unit, total=total, initial=initial, leave=leave,
                    disable=not enabled, dynamic_ncols=True)
    return Lines(iterable, desc=desc, unit=unit, total=total, initial=initial, every_seconds=every_seconds)


class Lines:
    """One log line per unit done, like "probe: 3/12 corners, 0:02:11 elapsed, ~0:06:33 left"."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, desc: str, unit: str, total: int | None = None,
                 initial: int = 0, every_seconds: float = 0.0):
        self.iterable, self.desc, self.unit, self.every_seconds = iterable, desc, unit, every_seconds
        self.total = len(iterable) if total is None and hasattr(iterable, "__len__") else total
        self.n = self.initial = initial
        self.postfix = ""
        self.started = time.monotonic()
        self.last_line = -math.inf

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            self.update(1)

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if n and (now - self.last_line >= self.every_seconds or self.n == self.total):
            self.last_line = now
            log.info("%s", self.line(now - self.started))

    def set_postfix(self, **values: Any) -> None:
        """Shown at the end of the next line, as tqdm shows it beside the bar."""
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        """Nothing to tear down: each line is complete when logged."""

    def line(self, elapsed_seconds: float) -> str:
        count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        parts = [f"{self.desc}: {count} {self.unit}", f"{tqdm.format_interval(elapsed_seconds)} elapsed"]
        done = self.n - self.initial  # this session's pace: a resumed phase's earlier units took no time here
        if self.total is not None and done > 0 and self.n < self.total:
            parts.append(f"~{tqdm.format_interval(elapsed_seconds / done * max(0, self.total - self.n))} left")
        return ", ".join(parts) + (f" ({self.postfix})" if self.postfix else "")
