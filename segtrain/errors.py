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
