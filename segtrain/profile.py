"""What one configuration costs on this device: training and evaluation throughput, peak memory, FLOPs.

The steps are the engine's own (`engine._Run`: its model, optimizer groups, AMP dtype
and GradScaler, channels_last, on-device conversion of uint8 batches, loss with the
auxiliary head), fed random uint8 batches of the configuration's crop as a loader that
keeps up would: the data pipeline is not measured (docs/performance.md: a few loader
workers feed a GPU). `_Run` is built on a two-image synthetic set, which it needs only
to size its schedule. Under the wsd schedule the measured peak includes the copy of
the model and optimizer state that a decay branch holds.

Peak memory means what must fit the device (segtrain.memory): on CUDA the most the
caching allocator held; on CPU the growth of the process's peak resident set over its
size before the model was built.

Used by hpo.plan.probe (a study's cost corners), benchmarks/scaling.py and benchmarks/gpu.py.
"""

from __future__ import annotations

import copy
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from segtrain.config import TrainConfig
from segtrain.data.labels import NUM_CLASSES
from segtrain.device import amp_dtype_for
from segtrain.distributed import ProcessGroup
from segtrain.engine import AUX_LOSS_WEIGHT, _Run
from segtrain.evaluation import score_batches
from segtrain.memory import peak_memory_bytes, release_freed_memory, reset_peak_memory, resident_bytes
from segtrain.model import build_model, count_parameters

FLOP_BATCH = 2  # FLOPs per image do not depend on the batch; the smallest BatchNorm allows


@dataclass(frozen=True)
class Throughput:
    """Timed steps of one configuration; images_per_second is None when it ran out of memory."""

    images_per_second: float | None
    peak_memory_bytes: int | None
    out_of_memory: str | None = None  # the error's first line
    flops_per_image: float = 0.0  # training: forward + backward, counted on the warm-up step

    @property
    def fits(self) -> bool:
        return self.out_of_memory is None


def measure_training(cfg: TrainConfig, steps: int, device: torch.device, cache_root: str | Path) -> Throughput:
    """One warm-up step (its FLOPs counted), then `steps` timed training steps at cfg's crop and
    batch size. `cache_root` holds the two-image synthetic set the run is built on.
    """
    probe_cfg = cfg.replace(synthetic=True, synthetic_train_images=2, synthetic_val_images=1,
                            synthetic_image_size=32, data_root=str(cache_root), pretrained=None, workers=0,
                            eval_points=1, epochs=(steps + 2) * cfg.batch_size / 2)  # the schedule outlasts the steps
    images, masks = random_batch(cfg.batch_size, cfg.crop_size, cfg.crop_size, device)
    baseline = _start_peak(device)
    run = branch_copy = None
    try:
        run = _Run(probe_cfg, device, ProcessGroup(), None, False)
        run.model.train()
        flops = counted_flops(lambda: run.train_step(images, masks))
        if cfg.schedule == "wsd":  # what a decay branch holds while it trains: the state to go back to
            branch_copy = copy.deepcopy(run.training_state())
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            loss = run.train_step(images, masks)
        loss.item()  # waits for the device
        seconds = time.perf_counter() - start
        return Throughput(steps * cfg.batch_size / seconds, _peak_memory(device, baseline), None,
                          flops / cfg.batch_size)
    except torch.OutOfMemoryError as error:
        return Throughput(None, None, str(error).splitlines()[0])
    finally:
        del run, branch_copy
        release_freed_memory(device)


def random_batch(batch_size: int, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and masks as a loader hands them over (pinned for the copy on CUDA)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, height, width), dtype=torch.uint8, generator=generator)
    masks = torch.randint(0, NUM_CLASSES, (batch_size, height, width), dtype=torch.uint8, generator=generator)
    if device.type == "cuda":
        images, masks = images.pin_memory(), masks.pin_memory()
    return images, masks


def measure_evaluation(cfg: TrainConfig, batches: Sequence[tuple[int, int, int]], rounds: int,
                       device: torch.device) -> Throughput:
    """Forward passes as the engine's evaluation runs them (segtrain.evaluation, single scale,
    confusion matrix included) on `batches`, (height, width, images) each: one warm-up round of
    them, then `rounds` timed ones."""
    data = [random_batch(count, height, width, device) for height, width, count in batches]
    amp_dtype = amp_dtype_for(device)
    baseline = _start_peak(device)
    model = None
    try:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.backbone, cfg.output_stride, NUM_CLASSES, None, cfg.aux_loss, cfg.model)
        model = model.to(device, memory_format=torch.channels_last)
        batched = [(range(len(images)), images, masks) for images, masks in data]
        score_batches(model, batched, device, amp_dtype=amp_dtype)
        _synchronize(device)
        start = time.perf_counter()
        score_batches(model, batched * rounds, device, amp_dtype=amp_dtype)  # host values: synchronised
        seconds = time.perf_counter() - start
        images = rounds * sum(count for _, _, count in batches)
        return Throughput(images / seconds, _peak_memory(device, baseline))
    except torch.OutOfMemoryError as error:
        return Throughput(None, None, str(error).splitlines()[0])
    finally:
        del model
        release_freed_memory(device)


def training_flops(cfg: TrainConfig) -> float:
    """FLOPs of one training image (forward + backward, auxiliary head included), counted on the meta
    device: no compute, and the same on every machine (for crops too large to run here)."""
    with torch.device("meta"):
        model = build_model(cfg.backbone, cfg.output_stride, NUM_CLASSES, None, cfg.aux_loss, cfg.model)
        images = torch.empty(FLOP_BATCH, 3, cfg.crop_size, cfg.crop_size)
        masks = torch.zeros(FLOP_BATCH, cfg.crop_size, cfg.crop_size, dtype=torch.long)

    def step() -> None:
        outputs = model(images)
        loss = torch.nn.functional.cross_entropy(outputs["out"], masks)
        if "aux" in outputs:
            loss = loss + AUX_LOSS_WEIGHT * torch.nn.functional.cross_entropy(outputs["aux"], masks)
        loss.backward()

    return counted_flops(step) / FLOP_BATCH


def counted_flops(work: Callable[[], object]) -> float:
    """FLOPs of the matrix products and convolutions `work` runs (torch.utils.flop_counter)."""
    counter = FlopCounterMode(display=False)
    with counter:
        work()
    return counter.get_total_flops()


def parameter_count(cfg: TrainConfig) -> int:
    """Parameters of cfg's model (counted on the meta device)."""
    with torch.device("meta"):
        return count_parameters(build_model(cfg.backbone, cfg.output_stride, NUM_CLASSES, None, cfg.aux_loss,
                                            cfg.model))


def device_name(device: torch.device) -> str:
    """E.g. "NVIDIA H100 80GB HBM3", or "cpu: AMD EPYC 7B13, 2 cores"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    return f"cpu: {model}, {len(os.sched_getaffinity(0))} cores"


def memory_available_bytes(device: torch.device) -> tuple[int, str]:
    """What a new run may use on `device`, and what that figure is."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free, f"free device memory at the start ({total / 2 ** 30:.1f} GiB in all)"
    found = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return int(found.group(1)) * 1024, "MemAvailable of /proc/meminfo at the start"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _start_peak(device: torch.device) -> int:
    """Start a fresh peak; the baseline to subtract from it (CPU: the resident set now)."""
    reset_peak_memory(device)
    return 0 if device.type == "cuda" else resident_bytes() or 0


def _peak_memory(device: torch.device, baseline: int) -> int:
    return max(0, peak_memory_bytes(device) - baseline)
