"""Atomic file writes: a crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from segtrain.errors import DiskFull

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # no space left, disk quota exceeded


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any], size_hint: int | None = None) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then rename it into place.

    A full file system (or quota) is DiskFull naming `path`, the `size_hint` bytes it
    needed and the bytes free once the partial file is gone; the old file stays.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        if error.errno in NO_SPACE:
            raise _disk_full(path, size_hint) from None
        raise
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from the group
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            raise _disk_full(path, size_hint) from None
        raise
    return path


def _disk_full(path: Path, size_hint: int | None) -> DiskFull:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    return DiskFull(str(path), size_hint, free)


def write_text_atomic(path: str | Path, text: str) -> Path:
    data = text.encode("utf-8")
    return write_atomic(path, lambda file: file.write(data), size_hint=len(data))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
