"""Errors a user can cause and fix. CLIs print them as one line and exit 2."""

from __future__ import annotations


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
