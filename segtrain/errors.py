"""Errors a user can cause and fix. CLIs print them as one line and exit 2."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


class UserError(Exception):
    """Bad input (data, config, spec, flag): message says what and how to fix it."""


class ConfigError(UserError):
    """A bad configuration value; `key` names the offending field."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class DataError(UserError):
    """Missing or malformed data on disk; the message names the file."""


class WeightsError(UserError):
    """Pretrained weights that cannot be fetched or do not fit the model."""


class DiskFull(UserError):
    """A write that found no space left: the file, the space it needed, the space free."""

    def __init__(self, path: str, needed_bytes: int | None, free_bytes: int | None):
        needed = f"needs {_size(needed_bytes)}, " if needed_bytes else ""
        free = f"{_size(free_bytes)} free" if free_bytes is not None else "free space unknown"
        super().__init__(f"{path}: no space left on its file system ({needed}{free}); free some space, "
                         f"or write the outputs elsewhere (--output-dir, [study] output_dir)")
        self.path, self.needed_bytes, self.free_bytes = path, needed_bytes, free_bytes


def _size(count: int) -> str:
    return f"{count / 2 ** 20:.0f} MiB" if count >= 2 ** 20 else f"{count} bytes"


def unwrap_worker_errors(batches: Iterable[Any]) -> Iterator[Any]:
    """The batches of a DataLoader, where a UserError raised in a worker process (a corrupt
    file found at decode time) arrives as the one-line error it was.

    PyTorch re-raises a worker's exception here as `type(error)(text)`, where text is
    the worker's formatted traceback (torch._utils.ExceptionWrapper), ending in
    "<module>.<type>: <message>"; the message is what the user needs.
    """
    try:
        yield from batches
    except UserError as error:
        kind = type(error)
        _, last_line_start, message = str(error).rpartition(f"\n{kind.__module__}.{kind.__qualname__}: ")
        if not last_line_start:  # raised in this process: already the message itself
            raise
        raise kind(message.strip()) from None
