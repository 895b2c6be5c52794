"""Where a run computes: the device chosen once, the AMP dtype and cuDNN settings that go with it,
and how many loader workers the host can give it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

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


BF16_CAPABILITY = (8, 0)  # Ampere: the first NVIDIA cards with bfloat16 tensor cores


def amp_dtype_for(device: torch.device) -> torch.dtype | None:
    """Autocast dtype on CUDA: bfloat16 where the card computes it natively (compute capability 8.0 and
    up: A100, RTX 30xx, H100...), else float16 (training adds a GradScaler); None on the CPU: float32
    throughout. Not `torch.cuda.is_bf16_supported()`: it counts emulation, and says yes on a V100 or T4,
    where bfloat16 runs without tensor cores and without the GradScaler's protection."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= BF16_CAPABILITY else torch.float16


def autocast(amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """CUDA autocast to `amp_dtype`, or nothing when it is None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=amp_dtype)


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """cuDNN's autotuner on or off for the block, as it was after. On for training, whose shapes are
    fixed (each convolution's fastest algorithm is found once); off for evaluation, whose image sizes
    vary (it would tune again for every new size). No effect on the CPU."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


MAX_AUTO_WORKERS = 8  # beyond this a loader rarely gains (docs/performance.md: ~250 images/s a worker core)


def default_workers(device: torch.device) -> int:
    """Loader workers when the config leaves them to the host (`workers` unset). On CUDA the cores
    this process may use, shared among torchrun's processes on this host (LOCAL_WORLD_SIZE), less one
    for the process itself, at most MAX_AUTO_WORKERS; on the CPU 0: the compute threads use every core,
    and a worker process only competes with them (benchmarks/train_loop.py: -10% on 2 cores)."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(cores // processes - 1, MAX_AUTO_WORKERS))
