"""The probe: a study's cost corners, measured on this machine, kept in <output dir>/probe.json.

A corner is a configuration at an extreme of what the study can train: the smallest
and largest crop and batch of the space x every output stride x every model and backbone
(the space's, and ResNet-101 for finalize; a [finalize] variant model on the space's
backbones), plus the baseline as it is, plus one evaluation corner per model, backbone
and stride. Each is measured with segtrain.profile (a warm-up
step, whose FLOPs are counted, then `steps` timed ones, with the spec's device, AMP and
channels_last as the engine trains; evaluation corners time a third as many batches).
Grid corners are trained with the costliest auxiliary-head and optimizer choice the
space allows (aux head on, AdamW's two moment buffers), so what the cost model predicts
from them is an upper bound for the other choices; the baseline corner is measured as
it is. Under the wsd schedule the training corners' peak memory includes the copy of
the model and optimizer state that a decay branch holds. Evaluation corners time
VOC-like batches (`eval_batch_shapes`): images of VOC's sizes, in the full and the
small same-size batches that real val is cut into.

On a CPU, where running out of memory kills the process instead of raising an
error, a training corner that the smaller corners of its group predict (scaled by
batch x pixels) to exceed the memory limit is not run, and is recorded as not fitting.

The file is reused while the spec's corners and device setting stay the same
(`settings_key`); `hpo.plan --reprobe` measures again.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hpo.markdown import markdown_table
from hpo.spec import Multiple, StudySpec
from segtrain import profile
from segtrain.config import MODELS, TrainConfig
from segtrain.device import amp_dtype_for, resolve_device
from segtrain.errors import UserError
from segtrain.evaluation import PRESETS
from segtrain.fileio import write_json_atomic
from segtrain.progress import progress

SCHEMA = 1
PROBE_FILE = "probe.json"
DEFAULT_STEPS = 30
VOC_IMAGE_SIDE = 500  # VOC photos are at most 500 px a side, most of them 500 x 375 or 375 x 500
COST_FIELDS = ("model", "backbone", "output_stride", "crop_size", "batch_size", "aux_loss", "optimizer")
STATEFUL_OPTIMIZERS = ("adamw", "adam")  # two moment buffers a parameter, against SGD's one
FINALIZE_BACKBONE = "resnet101"  # finalize's pretrained-vs-scratch comparison
ENUMERATED = ("model", "backbone", "output_stride")  # probed at every value; crop and batch at their extremes


@dataclass(frozen=True)
class Corner:
    """One measured configuration. kind "train": crop_size x crop_size crops at batch_size;
    kind "eval": forward passes on `eval_batch_shapes(crop_size, batch_size)`: images of at most
    crop_size pixels a side, in batches of at most batch_size (the eval batch size)."""

    kind: str
    backbone: str
    output_stride: int
    crop_size: int
    batch_size: int
    aux_loss: bool
    optimizer: str
    images_per_second: float | None = None  # None: ran out of memory
    peak_memory_bytes: int | None = None
    out_of_memory: str | None = None
    flops_per_image: float = 0.0  # training FLOPs (forward + backward); eval corners: 0
    parameters: int = 0
    model: str = TrainConfig.model  # last, with its default: probe files written before it read as DeepLabV3

    @property
    def group(self) -> tuple[str, str, int]:
        """What the cost model fits apart: (model, backbone, output stride)."""
        return self.model, self.backbone, self.output_stride

    @property
    def configuration(self) -> dict[str, Any]:
        return {"kind": self.kind, **{field: getattr(self, field) for field in COST_FIELDS}}

    @property
    def fits(self) -> bool:
        return self.out_of_memory is None


@dataclass(frozen=True)
class Probe:
    """A probe file: the machine, its memory limit, the settings, and the measured corners."""

    study: str
    created: str
    device: str
    device_type: str
    torch: str
    memory_limit_bytes: int
    memory_limit_source: str
    settings: dict[str, Any]  # key (of the spec's cost-relevant settings), steps, eval_batches, amp, ...
    corners: tuple[Corner, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **dataclasses.asdict(self)}

    def with_memory_limit(self, limit_bytes: int, source: str) -> Probe:
        return dataclasses.replace(self, memory_limit_bytes=limit_bytes, memory_limit_source=source)


def probe_path(spec: StudySpec) -> Path:
    return spec.study.output_dir / PROBE_FILE


def grid_values(spec: StudySpec, field: str) -> list[Any]:
    """The values of `field` to probe: of those the study can give it (the searched ones: choices, or
    the bounds of each range; the finalize ablation's; else the fixed one), the smallest and largest,
    or every one for a model, a backbone or an output stride (the cost model fits each of those apart)."""
    values = set()
    for param in spec.space:
        if param.field == field:
            values |= set(param.choices) if param.type == "categorical" else {param.low, param.high}
    values |= {value for value in spec.finalize.ablation.factors.get(field, ()) if not isinstance(value, Multiple)}
    if not values:
        values = {getattr(spec.train_config(), field)}
    ordered = sorted(values)
    return ordered if field in ENUMERATED else list(dict.fromkeys([ordered[0], ordered[-1]]))


def costliest(spec: StudySpec, field: str, order: Sequence[Any]) -> Any:
    """Of the values the study can give `field`, the first in `order` (most expensive first)."""
    possible = {value for param in spec.space if param.field == field for value in param.choices}
    possible.add(getattr(spec.train_config(), field))
    return next((value for value in order if value in possible), getattr(spec.train_config(), field))


def corner_configs(spec: StudySpec) -> list[Corner]:
    """The corners to measure, unmeasured, in order (train corners by model, backbone and stride, the
    baseline, then the evaluation corners)."""
    base = spec.train_config()
    aux = costliest(spec, "aux_loss", (True, False))
    optimizer = costliest(spec, "optimizer", (*STATEFUL_OPTIMIZERS, "sgd"))
    models = grid_values(spec, "model")
    backbones = list(dict.fromkeys([*grid_values(spec, "backbone"), FINALIZE_BACKBONE]))
    # a variant retrains the best configuration, whose backbone is the space's
    groups = [(model, backbone) for model in models for backbone in backbones] + \
        [(model, backbone) for model in spec.finalize.variants if model not in models
         for backbone in grid_values(spec, "backbone")]
    strides = grid_values(spec, "output_stride")
    corners = [Corner("train", backbone, stride, crop, batch, aux, optimizer, model=model)
               for model, backbone in groups for stride in strides
               for crop in grid_values(spec, "crop_size") for batch in grid_values(spec, "batch_size")]
    if spec.baseline:
        baseline = spec.train_config(spec.baseline)
        corners.append(Corner("train", **{field: getattr(baseline, field) for field in COST_FIELDS}))
    eval_side = val_image_side(base)
    # finalize scores its runs at these strides too ([finalize] eval: os8 on a model trained at 16)
    eval_strides = sorted({*strides, *(PRESETS[name].output_stride for name in spec.finalize.eval
                                       if PRESETS[name].output_stride is not None)})
    corners += [Corner("eval", backbone, stride, eval_side, base.eval_batch_size, aux, optimizer, model=model)
                for model, backbone in groups for stride in eval_strides]
    return list({json.dumps(c.configuration, sort_keys=True): c for c in corners}.values())


def val_image_side(cfg: TrainConfig) -> int:
    """The longest side of a val image: VOC's 500, or the synthetic set's size."""
    return cfg.synthetic_image_size if cfg.synthetic else VOC_IMAGE_SIDE


def eval_batch_shapes(long_side: int, batch_size: int) -> list[tuple[int, int, int]]:
    """(height, width, images) of the batches an evaluation corner times, one of each kind that
    segtrain.evaluation's same-size batches of VOC val come in: landscape and portrait photos of
    the commonest size (4:3) in full batches, and sizes shared by few images (VOC's many other
    heights) in batches of two and one. A stand-in for VOC's size histogram, not a count of it."""
    short = round(long_side * 3 / 4)
    return [(short, long_side, batch_size), (long_side, short, batch_size),
            (round(long_side * 2 / 3), long_side, min(2, batch_size)), (long_side, round(long_side * 0.9), 1)]


def settings_key(spec: StudySpec) -> str:
    """Identifies what a probe of this spec measures (its corners, its device setting): a probe
    file stands for the spec only while this stays the same."""
    base = spec.train_config()
    wanted = {"corners": [_keyed(c.configuration) for c in corner_configs(spec)], "device": base.device,
              # a decay branch's copy of the state counts in wsd's memory (poly's key stays as it was)
              **({"schedule": base.schedule} if base.schedule == "wsd" else {})}
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]


def _keyed(configuration: dict[str, Any]) -> dict[str, Any]:
    """A corner as settings_key sees it: the model, added to the corners later, only where it is not
    DeepLabV3, so the probe files made before it still stand for their specs."""
    return {k: v for k, v in configuration.items() if (k, v) != ("model", TrainConfig.model)}


def eval_batches(steps: int) -> int:
    """Timed evaluation batches per evaluation corner: a third of the training steps, at least one
    (rounded up to whole rounds of eval_batch_shapes)."""
    return max(1, steps // 3)


def measure(spec: StudySpec, steps: int = DEFAULT_STEPS, memory_limit_bytes: int | None = None) -> Probe:
    """Measure every corner of the spec on the device it trains on, with a progress bar."""
    base = spec.train_config()
    device = resolve_device(base.device)
    available, source = profile.memory_available_bytes(device)
    if memory_limit_bytes is not None:
        available, source = memory_limit_bytes, "--memory-limit-gb"
    cache = spec.study.output_dir / "probe-data"  # the two-image set profile's runs are built on
    measured = []
    todo = corner_configs(spec)
    for corner in progress(todo, unit="corners", desc="probe"):
        cfg = base.replace(**{field: getattr(corner, field) for field in COST_FIELDS})
        expected = _expected_cpu_peak(corner, measured) if device.type == "cpu" else None
        if expected is not None and expected > available:  # on a CPU, running out of memory kills the process
            found = profile.Throughput(None, None, f"not run on the CPU: the smaller corners predict "
                                                   f"~{expected / 2 ** 30:.1f} GiB of {available / 2 ** 30:.1f}")
        elif corner.kind == "train":
            found = profile.measure_training(cfg, steps, device, cache)
        else:
            shapes = eval_batch_shapes(corner.crop_size, corner.batch_size)
            found = profile.measure_evaluation(cfg, shapes, math.ceil(eval_batches(steps) / len(shapes)), device)
        measured.append(dataclasses.replace(
            corner, images_per_second=found.images_per_second, peak_memory_bytes=found.peak_memory_bytes,
            out_of_memory=found.out_of_memory, flops_per_image=found.flops_per_image,
            parameters=profile.parameter_count(cfg)))
    amp = amp_dtype_for(device)
    return Probe(spec.study.name, datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 profile.device_name(device), device.type, torch.__version__, available, source,
                 {"key": settings_key(spec), "steps": steps, "eval_batches": eval_batches(steps),
                  "amp": str(amp).removeprefix("torch.") if amp else None, "channels_last": True,
                  "threads": torch.get_num_threads()},
                 tuple(measured))


def _expected_cpu_peak(corner: Corner, measured: Sequence[Corner]) -> float | None:
    """A training corner's peak, scaled from the largest measured corner of its model, backbone and stride by
    batch x pixels (an over-estimate: the model's own memory does not grow); None before any."""
    if corner.kind != "train":
        return None
    group = [c for c in measured if c.kind == "train" and c.fits and c.group == corner.group]
    if not group:
        return None
    largest = max(group, key=lambda c: c.batch_size * c.crop_size ** 2)
    return largest.peak_memory_bytes * corner.batch_size * corner.crop_size ** 2 / \
        (largest.batch_size * largest.crop_size ** 2)


def save(probe: Probe, path: Path) -> Path:
    return write_json_atomic(path, probe.to_dict())


def load(path: Path, spec_path: Path | str = "SPEC") -> Probe:
    """A probe file; one UserError line naming the file if it cannot be read or is not one."""
    def bad(why: str) -> UserError:
        return UserError(f"{path}: unreadable probe file ({why}); delete it, or measure again with "
                         f"python -m hpo.plan --study {spec_path} --reprobe")

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise bad(error.strerror or type(error).__name__) from None
    except (ValueError, UnicodeDecodeError) as error:
        raise bad(f"not JSON: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise bad(f"schema {data.get('schema') if isinstance(data, dict) else None!r}, expected {SCHEMA}")
    try:
        corners = tuple(_corner(entry) for entry in data["corners"])
        probe = Probe(**{**{key: data[key] for key in _PROBE_FIELDS}, "corners": corners})
    except (KeyError, TypeError, ValueError) as error:
        raise bad(f"{type(error).__name__}: {error}") from None
    for key, kind in (("memory_limit_bytes", int), ("device", str), ("settings", dict)):
        if not isinstance(getattr(probe, key), kind) or isinstance(getattr(probe, key), bool):
            raise bad(f"{key} must be {kind.__name__}")
    if probe.memory_limit_bytes <= 0 or not corners:
        raise bad("no memory limit or no corners")
    return probe


_PROBE_FIELDS = [field.name for field in dataclasses.fields(Probe) if field.name != "corners"]


def _corner(entry: Any) -> Corner:
    if not isinstance(entry, dict):
        raise TypeError(f"a corner must be an object, got {entry!r}")
    corner = Corner(**entry)
    if corner.kind not in ("train", "eval"):
        raise ValueError(f"corner kind {corner.kind!r}")
    numbers = (corner.output_stride, corner.crop_size, corner.batch_size)
    if not all(isinstance(n, int) and n > 0 for n in numbers):
        raise ValueError(f"corner {corner.configuration}: stride, crop and batch must be positive integers")
    if corner.fits and not (isinstance(corner.images_per_second, int | float) and corner.images_per_second > 0
                            and isinstance(corner.peak_memory_bytes, int)):
        raise ValueError(f"corner {corner.configuration}: images_per_second and peak_memory_bytes missing")
    return corner


def probe_for(spec: StudySpec, steps: int | None = None, reprobe: bool = False,
              memory_limit_bytes: int | None = None) -> tuple[Probe, str]:
    """The spec's probe and how it was had ("reused", "measured", "measured again: <why>"): the file
    if it was made for the spec's corners (and `steps`, if given), else a new measurement, written to
    the file. A memory limit given replaces the file's own."""
    path = probe_path(spec)
    if path.exists() and not reprobe:
        probe = load(path, spec.path)
        if probe.settings.get("key") != settings_key(spec):
            how = "measured again: the spec's corners or device setting changed"
        elif steps is not None and probe.settings.get("steps") != steps:
            how = f"measured again: {steps} steps a corner asked, the file has {probe.settings.get('steps')}"
        else:
            if memory_limit_bytes is not None and memory_limit_bytes != probe.memory_limit_bytes:
                probe = probe.with_memory_limit(memory_limit_bytes, "--memory-limit-gb")
                save(probe, path)
            return probe, "reused"
    else:
        how = "measured again (--reprobe)" if path.exists() else "measured"
    probe = measure(spec, steps or DEFAULT_STEPS, memory_limit_bytes)
    save(probe, path)
    return probe, how


def matching_probe(spec: StudySpec) -> tuple[Probe | None, str]:
    """The spec's probe file if there is one made for its corners, else None and why not."""
    path = probe_path(spec)
    if not path.exists():
        return None, f"no probe at {path}"
    probe = load(path, spec.path)
    if probe.settings.get("key") != settings_key(spec):
        return None, f"{path} was made for other corners or another device setting of the spec"
    return probe, ""


def describe(probe: Probe) -> str:
    """The probe's corners as a table: throughput, peak memory, FLOPs and the FLOP rate they reach."""
    rate = "TFLOP/s" if probe.device_type == "cuda" else "GFLOP/s"
    scale = 1e12 if probe.device_type == "cuda" else 1e9
    rows = []
    for c in probe.corners:
        achieved = c.flops_per_image * c.images_per_second / scale if c.fits and c.flops_per_image else None
        rows.append([c.kind, MODELS[c.model], c.backbone, c.output_stride, c.crop_size, c.batch_size,
                     "on" if c.aux_loss else "off", c.optimizer, _number(c.images_per_second),
                     _number(c.peak_memory_bytes, 2 ** 30), _number(c.flops_per_image, 1e9) if c.flops_per_image else "",
                     _number(achieved),
                     "yes" if c.fits else f"no: {c.out_of_memory}"])
    return markdown_table(["kind", "model", "backbone", "OS", "crop", "batch", "aux", "optimizer", "images/s",
                           "peak memory GiB", "GFLOP/image", rate, "fits"], rows)


def _number(value: float | None, unit: float = 1.0) -> str:
    return "" if value is None else f"{value / unit:.3g}"
