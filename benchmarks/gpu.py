"""What segtrain does on this GPU, measured in one call: the figures docs/performance.md needs.

    python benchmarks/gpu.py --out gpu.json      # a GPU machine: about 6 minutes on an H100 (at most 8)
    python benchmarks/gpu.py --quick             # every section on the CPU in seconds (the smoke test)

`--quick` runs every section's code on the CPU with the smallest settings and a one-layer
stand-in for DeepLabV3 (torchvision's class around a single convolution): the figures mean
nothing, the plumbing is what it checks.

Each section's figures go into the JSON file (`--out`, one top-level key per section, merged
into what the file already holds) as soon as the section ends, so a run stopped by a time
limit keeps what it finished; a section that fails records its error and the next runs.
A section that might not end within `--budget-seconds` (EXPECTED_SECONDS) is recorded as
skipped instead.

Sections, in the order they run (the slowest last):

- env: card, driver, torch / CUDA / cuDNN versions, cores, /dev/shm, the AMP dtype, the
  dense bf16 peak the utilisation figures divide by (`--peak-tflops` where the card is not
  in DENSE_PEAK_TFLOPS);
- step: the engine's own training step alone (segtrain.profile, random uint8 batches) at the
  study's corners: ResNet-50/101 x output stride 16/8 x crop 417/513 x batch 8/16, aux head on,
  cuDNN autotuning on, and off at crop 513, batch 16: images/s, peak allocated and reserved
  memory, training FLOPs per image and the model FLOP utilisation (FLOPs x images/s over the peak);
- end_to_end: engine.train from VOC-size synthetic JPEGs, the baseline (ResNet-50, OS 16, crop
  513, batch 16; workers: the host's default), 100 steps timed after 100 of warm-up, against the
  step alone on the same configuration: the stall fraction; host syncs of the whole run;
- loader: the DataLoader's ceiling (images/s, nothing but loading) by workers (4, 8, 12), uint8
  output (segtrain's) against float32 + normalisation in the workers (segtrain's before), on
  those JPEGs at crop 513, batch 16;
- evaluation: segtrain.evaluation on VOC-like mixed image sizes at OS 16 and 8, cold (a fresh
  loader and model) and warm (the same loader again, as a run's later evaluations), with the
  host syncs counted (torch.cuda.set_sync_debug_mode);
- probe: `hpo.plan`'s probe of studies/voc_r50.toml (`--probe-steps` timed steps a corner) and
  the bill the planner prices from it, in GPU-hours;
- profile: the top kernels of 5 baseline steps (torch.profiler);
- checkpoint: the seconds and bytes of the engine's checkpoint of the baseline mid-run;
- compile: the baseline eager and with `compile = true` side by side: the first compiled step's
  seconds (the compile time), images/s, memory.

Ends with `RESULT gpu_loop_efficiency <end-to-end / step alone> (goal >= 0.95)`: whether the
loader and the loop keep the card as busy as the bare step does.

Machines without the packages (optuna, scipy...): docs/performance.md, "On a GPU machine",
says how to bring them as wheels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torchvision
from common import machine, parse_args, print_table, result, write_voc_pairs
from data_pipeline import float_out_train_transform
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models.segmentation.deeplabv3 import DeepLabV3

import segtrain.engine
from hpo.plan import probe
from hpo.plan.cost import CostModel
from hpo.plan.estimate import Estimator
from hpo.plan.estimate import describe as describe_plan
from hpo.spec import load_spec
from segtrain import profile, sharedmem
from segtrain.config import TrainConfig
from segtrain.data.transforms import train_transform
from segtrain.data.voc import VOCSegmentation
from segtrain.device import amp_dtype_for, cudnn_benchmark, default_workers
from segtrain.distributed import ProcessGroup
from segtrain.engine import _Run, train
from segtrain.evaluation import eval_loader, evaluate_model
from segtrain.fileio import write_json_atomic
import segtrain.model
from segtrain.sampling import TrainStream

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "voc_r50.toml"
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets; fp16 where the card
# has no bf16 (V100, T4); GeForce cards at their fp32-accumulation rate, which autocast's matmuls use.
# Most specific names first: the first key within the device's name counts.
DENSE_PEAK_TFLOPS = {"H100 PCIe": 756, "H100 NVL": 835, "H100": 989, "H200": 989, "A100": 312, "L40S": 362,
                     "RTX 4090": 165, "RTX 3090": 71, "V100": 125, "T4": 65}
# VOC val's sizes as (width, height): most photos 500x375 or 375x500, the rest of many heights
VOC_LIKE_SIZES = [(500, 375)] * 5 + [(375, 500)] * 3 + [(500, 333), (500, 334), (500, 281), (500, 366),
                                                         (486, 500), (500, 400), (353, 500), (500, 442)]
BASELINE = {"backbone": "resnet50", "output_stride": 16, "crop_size": 513, "batch_size": 16, "aux_loss": False,
            "optimizer": "sgd"}  # studies/voc_r50.toml's, as the probe's cost fields name it


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one run of the script measures: the full setting on a GPU, the smallest on the CPU."""

    device: torch.device
    grid: list[dict[str, Any]]  # the step section's configurations
    benchmark_off: list[dict[str, Any]]  # those measured with cuDNN's autotuner off too
    baseline: dict[str, Any]
    steps: int  # timed steps per configuration
    train_images: int
    val_sizes: list[tuple[int, int]]
    val_images: int
    loader_workers: tuple[int, ...]
    loader_batches: int  # timed batches per worker
    end_to_end_steps: int
    compile_backend: str
    probe_steps: int


def setting(args) -> Setting:
    if args.quick:
        small = {**BASELINE, "crop_size": 33, "batch_size": 2}
        return Setting(torch.device("cpu"), [{**small, "aux_loss": True}], [{**small, "aux_loss": True}], small,
                       steps=1, train_images=4, val_sizes=[(48, 36), (36, 48), (48, 32)], val_images=3,
                       loader_workers=(1,), loader_batches=2, end_to_end_steps=2,
                       compile_backend="eager",  # tracing without the minutes of C++ code generation
                       probe_steps=1)
    grid = [{**BASELINE, "backbone": backbone, "output_stride": stride, "crop_size": crop, "batch_size": batch,
             "aux_loss": True}
            for backbone in ("resnet50", "resnet101") for stride in (16, 8) for crop in (417, 513) for batch in (8, 16)]
    return Setting(torch.device("cuda"), grid, [c for c in grid if c["crop_size"] == 513 and c["batch_size"] == 16],
                   BASELINE, steps=args.steps, train_images=64, val_sizes=VOC_LIKE_SIZES, val_images=48,
                   loader_workers=(4, 8, 12), loader_batches=10, end_to_end_steps=100, compile_backend="inductor",
                   probe_steps=args.probe_steps)


def configure(parser) -> None:
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-benchmark.json",
                        help="JSON file the sections are written into (default: runs/gpu-benchmark.json)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=None, help="only these sections")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, where it is not in the table")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per step configuration (default 10)")
    parser.add_argument("--probe-steps", type=int, default=10, help="hpo.plan's timed steps a corner (default 10)")
    parser.add_argument("--budget-seconds", type=float, default=470,
                        help="start no section that might end after this many seconds (default 470: an "
                             "8-minute call)")


class Bench:
    """The state one run of the script shares between sections: setting, data, output file, figures."""

    def __init__(self, args, scratch: Path):
        self.args, self.out, self.scratch = args, args.out, scratch
        self.setting = setting(args)
        self.device = self.setting.device
        self.started = time.perf_counter()
        self.figures: dict[str, Any] = {}
        self._voc_dir: Path | None = None

    def record(self, section: str, value: Any) -> None:
        """Merge `section` into the output file now (written atomically: a kill never leaves half a file)."""
        self.figures[section] = value
        try:
            existing = json.loads(self.out.read_text())
        except (OSError, ValueError):
            existing = {}
        write_json_atomic(self.out, {**existing, section: value})

    @property
    def voc_dir(self) -> Path:
        """VOC-size synthetic JPEG + PNG pairs: `train` of VOC's commonest size, `val` of mixed sizes."""
        if self._voc_dir is None:
            s = self.setting
            write_voc_pairs(self.scratch / "voc", s.train_images, *s.val_sizes[0], split="train")
            self._voc_dir = write_voc_pairs(self.scratch / "voc", s.val_images, 0, 0, split="val", sizes=s.val_sizes)
        return self._voc_dir

    def config(self, **values: Any) -> TrainConfig:
        """A run on the scratch VOC tree, from scratch (no weights to download), on this device."""
        return TrainConfig(data_root=str(self.voc_dir.parents[1]), train_split="train", val_split="val",
                           pretrained=None, device=self.device.type, **values)

    @property
    def peak_flops(self) -> float | None:
        if self.args.peak_tflops:
            return self.args.peak_tflops * 1e12
        if self.device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(self.device)
        return next((tflops * 1e12 for key, tflops in DENSE_PEAK_TFLOPS.items() if key in name), None)

    def utilisation(self, flops_per_image: float, images_per_second: float | None) -> float | None:
        peak = self.peak_flops
        return flops_per_image * images_per_second / peak if peak and images_per_second else None

    def measure_step(self, **values: Any) -> dict[str, Any]:
        """segtrain.profile's step measurement, with CUDA's peak allocated memory beside its reserved one."""
        cfg = self.config(**values)
        found = profile.measure_training(cfg, self.setting.steps, self.device, self.scratch / "profile-cache")
        allocated = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return {**values, "images_per_second": found.images_per_second,
                "peak_reserved_bytes": found.peak_memory_bytes, "peak_allocated_bytes": allocated,
                "out_of_memory": found.out_of_memory, "flops_per_image": found.flops_per_image,
                "utilisation": self.utilisation(found.flops_per_image, found.images_per_second)}

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@contextlib.contextmanager
def counted_syncs(device: torch.device) -> Iterator[list[int]]:
    """Counts the host syncs in the block (torch.cuda.set_sync_debug_mode warns at each): [count] after
    the block, [] on the CPU, where there is nothing to count."""
    found: list[int] = []
    if device.type != "cuda":
        yield found
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode("default")
    found.append(sum("synchroniz" in str(warning.message) for warning in caught))


@contextlib.contextmanager
def autotuner_off() -> Iterator[None]:
    """The engine's training step with cuDNN's autotuner off (it sets it on), for the off/on comparison."""
    original = segtrain.engine.cudnn_benchmark
    segtrain.engine.cudnn_benchmark = lambda enabled: cudnn_benchmark(False)
    try:
        yield
    finally:
        segtrain.engine.cudnn_benchmark = original


# --- the sections


def env(bench: Bench) -> dict[str, Any]:
    device = bench.device
    driver = None
    if shutil.which("nvidia-smi"):
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                check=False, capture_output=True, text=True).stdout.strip() or None
    shm = shutil.disk_usage(sharedmem.SHM) if sharedmem.SHM.exists() else None
    amp = amp_dtype_for(device)
    return {
        "device": profile.device_name(device), "driver": driver,
        "capability": list(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None,
        "memory_bytes": torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None,
        "torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "python": platform.python_version(), "cores": len(os.sched_getaffinity(0)), "cpu": profile.device_name(
            torch.device("cpu")), "shm_total_bytes": shm.total if shm else None, "shm_free_bytes": shm.free if shm else None,
        "amp_dtype": str(amp).removeprefix("torch.") if amp else None, "default_workers": default_workers(device),
        "dense_peak_tflops": bench.peak_flops / 1e12 if bench.peak_flops else None, "machine": machine(),
    }


def step(bench: Bench) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for values in bench.setting.grid:
        rows.append({**bench.measure_step(**values), "cudnn_benchmark": True})
        bench.record("step", {"rows": rows})  # a timeout keeps the rows done
    for values in bench.setting.benchmark_off:
        with autotuner_off():
            rows.append({**bench.measure_step(**values), "cudnn_benchmark": False})
        bench.record("step", {"rows": rows})
    return {"rows": rows}


def compile_section(bench: Bench) -> dict[str, Any]:
    """Eager and compiled baseline steps side by side, each on a fresh _Run, same random batch."""
    s, figures = bench.setting, {}
    images, masks = profile.random_batch(s.baseline["batch_size"], s.baseline["crop_size"], s.baseline["crop_size"],
                                         bench.device)
    real_compile = torch.compile
    torch.compile = lambda model: real_compile(model, backend=s.compile_backend)  # the engine calls torch.compile
    try:
        for compiled in (False, True):
            cfg = bench.config(**s.baseline, compile=compiled, epochs=1.0, eval_points=1, workers=0)
            if bench.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(bench.device)
            run = _Run(cfg, bench.device, ProcessGroup(), None, False)
            run.model.train()
            start = time.perf_counter()
            run.train_step(images, masks).item()
            first = time.perf_counter() - start
            run.train_step(images, masks)  # a second call may recompile (e.g. for the optimizer's state)
            bench.synchronize()
            start = time.perf_counter()
            for _ in range(s.steps):
                loss = run.train_step(images, masks)
            loss.item()
            seconds = time.perf_counter() - start
            figures["compiled" if compiled else "eager"] = {
                "first_step_seconds": first, "images_per_second": s.steps * cfg.batch_size / seconds,
                "peak_allocated_bytes": torch.cuda.max_memory_allocated(bench.device) if bench.device.type == "cuda"
                else None, "backend": s.compile_backend if compiled else None}
            del run
    finally:
        torch.compile = real_compile
    figures["compile_seconds"] = figures["compiled"]["first_step_seconds"] - figures["eager"]["first_step_seconds"]
    figures["speedup"] = figures["compiled"]["images_per_second"] / figures["eager"]["images_per_second"]
    return figures


def loader(bench: Bench) -> dict[str, Any]:
    s = bench.setting
    crop, batch = s.baseline["crop_size"], s.baseline["batch_size"]
    pipelines = {"uint8": train_transform(crop), "float32": float_out_train_transform(crop)}
    rows = []
    for workers in s.loader_workers:
        for output, transform in pipelines.items():
            dataset = VOCSegmentation(bench.voc_dir, "train", transform)
            batches = iter(DataLoader(dataset, batch_size=batch, sampler=TrainStream(len(dataset), 0),
                                      num_workers=workers, pin_memory=bench.device.type == "cuda"))
            for _ in range(workers):  # the workers' start and first batches: not the ceiling
                next(batches)
            timed = s.loader_batches * workers
            start = time.perf_counter()
            for _ in range(timed):
                next(batches)
            rows.append({"workers": workers, "output": output,
                         "images_per_second": timed * batch / (time.perf_counter() - start)})
            del batches  # ends its workers
            bench.record("loader", {"rows": rows, "crop": crop, "batch": batch})
    return {"rows": rows, "crop": crop, "batch": batch}


def end_to_end(bench: Bench) -> dict[str, Any]:
    """engine.train from the JPEGs: as many steps again as are timed first (model build, the workers'
    start, cuDNN's tuning), an evaluation, then the timed steps up to the second evaluation; the
    evaluations' own seconds are taken out."""
    s = bench.setting
    steps = 2 * s.end_to_end_steps
    cfg = bench.config(**s.baseline, epochs=steps * s.baseline["batch_size"] / s.train_images, eval_points=2,
                       eval_batch_size=8)
    alone = bench.measure_step(**s.baseline)
    points: list[tuple[int, float]] = []  # (step, when its on_eval ran)
    evaluations: list[float] = []  # seconds of each evaluation
    real_evaluate = segtrain.engine.evaluate_model

    def timed_evaluate(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real_evaluate(*args, **kwargs)
        finally:
            evaluations.append(time.perf_counter() - start)

    segtrain.engine.evaluate_model = timed_evaluate
    try:
        with counted_syncs(bench.device) as syncs:
            trained = train(cfg, on_eval=lambda evaluated: points.append((evaluated.step, time.perf_counter())),
                            save_checkpoints=False)
    finally:
        segtrain.engine.evaluate_model = real_evaluate
    (first_step, first_time), (last_step, last_time) = points
    loop = (last_step - first_step) * cfg.batch_size / (last_time - first_time - evaluations[-1])
    return {"timed_steps": last_step - first_step, "workers": default_workers(bench.device),
            "images_per_second": loop, "step_alone_images_per_second": alone["images_per_second"],
            "efficiency": loop / alone["images_per_second"], "stall_fraction": 1 - loop / alone["images_per_second"],
            "whole_run_images_per_second": trained.images_per_second, "evaluation_seconds": evaluations,
            "host_syncs_whole_run": syncs[0] if syncs else None, "steps": trained.steps}


def evaluation(bench: Bench) -> dict[str, Any]:
    s = bench.setting
    dataset = VOCSegmentation(bench.voc_dir, "val")
    amp = amp_dtype_for(bench.device)
    rows = []
    for stride in (16, 8):
        torch.manual_seed(0)
        model = segtrain.model.build_model(s.baseline["backbone"], stride)
        model = model.to(bench.device, memory_format=torch.channels_last)
        loader_ = eval_loader(dataset, bench.device, 8, None, persistent=True)
        for temperature in ("cold", "warm"):
            with counted_syncs(bench.device) as syncs:
                start = time.perf_counter()
                evaluate_model(model, dataset, bench.device, amp_dtype=amp, loader=loader_)
                seconds = time.perf_counter() - start
            rows.append({"output_stride": stride, "pass": temperature, "seconds": seconds,
                         "images_per_second": len(dataset) / seconds, "batches": len(loader_.batch_sampler),
                         "host_syncs": syncs[0] if syncs else None})
        del model, loader_
    sizes = dataset.image_sizes
    return {"rows": rows, "images": len(dataset), "sizes": len(set(sizes)), "eval_batch_size": 8}


def profile_section(bench: Bench) -> dict[str, Any]:
    s = bench.setting
    cfg = bench.config(**s.baseline, epochs=1.0, eval_points=1, workers=0)
    images, masks = profile.random_batch(cfg.batch_size, cfg.crop_size, cfg.crop_size, bench.device)
    run = _Run(cfg, bench.device, ProcessGroup(), None, False)
    run.model.train()
    for _ in range(2):
        run.train_step(images, masks)
    bench.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if bench.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(5):
            run.train_step(images, masks)
        bench.synchronize()
    on_device = bench.device.type == "cuda"
    events = [event for event in profiler.key_averages() if _self_time(event, on_device) > 0]
    total = sum(_self_time(event, on_device) for event in events)
    top = sorted(events, key=lambda event: _self_time(event, on_device), reverse=True)[:15]
    return {"steps": 5, "clock": "device" if on_device else "cpu", "total_self_us": total,
            "top": [{"name": event.key, "self_us": _self_time(event, on_device), "calls": event.count,
                     "share": _self_time(event, on_device) / total} for event in top]}


def _self_time(event, on_device: bool) -> float:
    """An event's own time (µs) on the device (CUDA kernels) or, on the CPU, on the host."""
    if not on_device:
        return event.self_cpu_time_total
    return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)


def checkpoint(bench: Bench) -> dict[str, Any]:
    """The engine's own save() of a run mid-way (weights, momentum, scheduler, RNG), to the scratch disk."""
    s = bench.setting
    cfg = bench.config(**s.baseline, epochs=1.0, eval_points=1, workers=0)
    run_dir = bench.scratch / "checkpoint-run"
    run = _Run(cfg, bench.device, ProcessGroup(), run_dir, True)
    images, masks = profile.random_batch(cfg.batch_size, cfg.crop_size, cfg.crop_size, bench.device)
    run.train_step(images, masks).item()  # the optimizer's buffers exist after a step
    run.started = time.perf_counter()
    start = time.perf_counter()
    run.save()
    seconds = time.perf_counter() - start
    size = (run_dir / segtrain.engine.CHECKPOINT).stat().st_size
    return {"seconds": seconds, "bytes": size, "megabytes_per_second": size / seconds / 1e6,
            "disk": str(bench.scratch)}


def probe_section(bench: Bench) -> dict[str, Any]:
    if bench.args.quick:
        spec_path = bench.scratch / "quick.toml"
        spec_path.write_text('[study]\nname = "gpu-quick"\n[train]\nsynthetic = true\nsynthetic_train_images = 4\n'
                             'synthetic_val_images = 2\nsynthetic_image_size = 32\npretrained = "none"\n'
                             'crop_size = 33\nbatch_size = 2\nworkers = 0\ndevice = "cpu"\n'
                             f'data_root = "{bench.scratch / "probe-data"}"\n'
                             '[space]\nlr = {type = "float", low = 1e-3, high = 1e-1, log = true}\n')
    else:
        spec_path = STUDY
    spec = load_spec(spec_path).with_output_dir(bench.scratch / "probe")
    measured = probe.measure(spec, bench.setting.probe_steps)
    plan = Estimator(spec, CostModel(measured)).plan()
    unit = "GPU-hours" if measured.device_type == "cuda" else "CPU-hours"
    return {"study": str(spec_path.relative_to(REPO) if spec_path.is_relative_to(REPO) else spec_path.name),
            "probe": measured.to_dict(), "corners_table": probe.describe(measured),
            "bill": describe_plan(plan, unit), "total_hours": plan.total_hours, "search_hours": plan.search_hours,
            "unit": unit}


class _OneLayer(nn.Module):
    """The stand-in's backbone: one strided convolution (and one more for the auxiliary head's features)."""

    def __init__(self, aux_loss: bool):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)
        self.aux_loss = aux_loss

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.relu(self.norm(self.conv(images)))
        return {"out": features, "aux": features} if self.aux_loss else {"out": features}


def stand_in_model(backbone: str, output_stride: int, num_classes: int = 21, pretrained=None,
                   aux_loss: bool = False, model: str = "deeplabv3") -> DeepLabV3:
    """--quick's DeepLabV3: build_model's signature and output (one stand-in whatever the model), a
    millisecond a step."""
    return DeepLabV3(_OneLayer(aux_loss), nn.Conv2d(8, num_classes, 1), nn.Conv2d(8, num_classes, 1) if aux_loss else None)


@contextlib.contextmanager
def stand_in_models() -> Iterator[None]:
    """Every build_model the sections reach (the engine's, segtrain.profile's, this script's) builds the stand-in."""
    modules = (segtrain.engine, profile, segtrain.model)
    originals = [module.build_model for module in modules]
    for module in modules:
        module.build_model = stand_in_model
    try:
        yield
    finally:
        for module, original in zip(modules, originals):
            module.build_model = original


# in the order they run: the figures docs/performance.md needs most first, the slowest (compile) last
SECTIONS = {"env": env, "step": step, "end_to_end": end_to_end, "loader": loader, "evaluation": evaluation,
            "probe": probe_section, "profile": profile_section, "checkpoint": checkpoint, "compile": compile_section}
# seconds a section may take on an H100, at most: one is not started unless it fits in --budget-seconds
EXPECTED_SECONDS = {"env": 5, "step": 150, "end_to_end": 40, "loader": 40, "evaluation": 30, "probe": 150,
                    "profile": 20, "checkpoint": 15, "compile": 150}


def summarise(bench: Bench) -> None:
    """What the figures say, as tables: utilisation, the loader's ceiling, evaluation, kernels."""
    figures = bench.figures
    if "step" in figures:
        print_table(["backbone", "OS", "crop", "batch", "cuDNN tuned", "images/s", "GiB reserved", "GFLOP/image",
                     "utilisation"],
                    [(r["backbone"], r["output_stride"], r["crop_size"], r["batch_size"], r["cudnn_benchmark"],
                      r["images_per_second"] or "OOM", (r["peak_reserved_bytes"] or 0) / 2 ** 30,
                      r["flops_per_image"] / 1e9, r["utilisation"] if r["utilisation"] is not None else "-")
                     for r in figures["step"]["rows"]], title="the training step alone (aux head on)")
    for name in ("compile", "end_to_end"):
        if isinstance(figures.get(name), dict) and "error" not in figures[name]:
            print(f"\n{name}: " + json.dumps(figures[name], default=str))
    if "loader" in figures and "rows" in figures["loader"]:
        print_table(["workers", "output", "images/s"], [(r["workers"], r["output"], r["images_per_second"])
                                                       for r in figures["loader"]["rows"]], title="the loader's ceiling")
    if "evaluation" in figures and "rows" in figures["evaluation"]:
        print_table(["OS", "pass", "images/s", "host syncs"],
                    [(r["output_stride"], r["pass"], r["images_per_second"], r["host_syncs"])
                     for r in figures["evaluation"]["rows"]], title="evaluation, VOC-like sizes")
    if "profile" in figures and "top" in figures["profile"]:
        print_table(["kernel / op", "share", "calls"], [(r["name"][:70], f"{r['share']:.1%}", r["calls"])
                                                        for r in figures["profile"]["top"]], title="top of 5 steps")
    if "probe" in figures and "bill" in figures["probe"]:
        print(f"\n{figures['probe']['corners_table']}\n\n{figures['probe']['bill']}")


def main() -> None:
    args = parse_args(__doc__, configure)
    names = args.sections or list(SECTIONS)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as scratch, \
            stand_in_models() if args.quick else contextlib.nullcontext():
        bench = Bench(args, Path(scratch))
        if bench.device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --quick for the CPU smoke test")
        print(f"{machine()}\nsections {', '.join(names)} -> {args.out}", flush=True)
        for name in names:
            elapsed = time.perf_counter() - bench.started
            if not args.quick and elapsed + EXPECTED_SECONDS[name] > args.budget_seconds:
                bench.record(name, {"skipped": f"{elapsed:.0f} s gone, and it may take {EXPECTED_SECONDS[name]} s: "
                                               f"over --budget-seconds {args.budget_seconds:g}"})
                continue
            start = time.perf_counter()
            try:
                figures = SECTIONS[name](bench)
            except Exception as error:  # noqa: BLE001 - one section's failure must not lose the others
                figures = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
                print(figures["traceback"], file=sys.stderr)
            figures["section_seconds"] = time.perf_counter() - start
            bench.record(name, figures)
            print(f"{name}: {figures['section_seconds']:.1f} s" + (" (failed)" if "error" in figures else ""),
                  flush=True)
        summarise(bench)
    efficiency = bench.figures.get("end_to_end", {}).get("efficiency")
    if efficiency is None:
        raise SystemExit("the end_to_end section did not run: no RESULT")
    result("gpu_loop_efficiency", efficiency, ">=", 0.95)


if __name__ == "__main__":
    main()
