"""Where a run computes: the device chosen once, and the AMP dtype that goes with it."""

from __future__ import annotations

import contextlib

import torch

from segtrain.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` is cuda when available, else cpu; an explicit cuda without CUDA is the user's error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{name} requested but CUDA is not available here; use cpu or auto")
    return device


def amp_dtype_for(device: torch.device) -> torch.dtype | None:
    """Autocast dtype on CUDA: bfloat16 where the GPU has it, else float16 (training adds a GradScaler);
    None on the CPU: float32 throughout."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """CUDA autocast to `amp_dtype`, or nothing when it is None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=amp_dtype)
