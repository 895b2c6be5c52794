"""The cost model: a probe fitted, and what a study's trials, final runs and checkpoints will cost.

Per (model, backbone, output stride), from the probe's training corners (non-negative least
squares, scipy.optimize.nnls):

    seconds per step = a + b x batch + c x batch x pixels     (pixels = crop^2)
    peak memory      = m + n x batch + o x batch x pixels

a is per-step overhead (optimizer step, launches), c the per-pixel work. With one
batch size the probe cannot tell a from b, with one crop b from c, and those columns
are left out. A configuration the probe measured as such is predicted by its
measurement. It does not fit when its predicted peak exceeds the probe's memory limit,
or when the probe ran out of memory at a smaller crop and batch of its group.

A run costs epochs x train images x seconds per training image, plus eval_points x
val images x seconds per evaluated image (the probe's evaluation corner). Model
building, data loading stalls and checkpoint writes are left out. The decay branches
of a wsd schedule (issue 11's TrainConfig fields) are not costed yet.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import nnls

from hpo.plan.probe import COST_FIELDS, Corner, Probe
from hpo.space import Param, train_overrides
from segtrain import profile
from segtrain.config import MODELS, TrainConfig
from segtrain.data.synthetic import holdout_size
from segtrain.data.voc import find_voc_dir, read_split_ids
from segtrain.errors import UserError

BYTES_PER_VALUE = 4  # checkpoints hold fp32 weights and optimizer state
OPTIMIZER_STATE = {"sgd": 1, "adam": 2, "adamw": 2}  # buffers per parameter (SGD without momentum: none)
# Epochs a pruned study trains relative to no pruning, measured by benchmarks/pruning.py (docs/performance.md,
# "pruning"): Optuna's pruners with the arguments there, 4 evaluations a trial, poly schedule, the mean over
# shuffled trial orders and two synthetic tasks. No measured figure for the threshold pruner: taken as no saving.
PRUNER_SAVING = {"successive_halving": 0.57, "hyperband": 0.69, "median": 0.70, "percentile": 0.79, "none": 1.0}
# VOC 2012 and SBD's published split sizes, for planning without the data on disk; holdout is
# `segtrain.data prepare`'s default cut of train_aug
VOC_SPLIT_SIZES = {"train": 1464, "val": 1449, "trainval": 2913, "train_aug": 10582, "train_aug_search": 9582,
                   "holdout": 1000}


@dataclass(frozen=True)
class Prediction:
    """What one configuration costs per image on the probed machine, and whether it fits there."""

    train_seconds_per_image: float
    eval_seconds_per_image: float
    memory_bytes: float  # predicted peak; inf where the probe ran out of memory at or below it
    fits: bool
    measured: bool  # a probed corner, not a fit

    def run_seconds(self, epochs: float, eval_points: int, train_images: int, val_images: int) -> float:
        return epochs * train_images * self.train_seconds_per_image + eval_points * val_images * \
            self.eval_seconds_per_image


@dataclass(frozen=True)
class _GroupFit:
    time: tuple[float, float, float]  # a, b, c of seconds per step
    memory: tuple[float, float, float]
    out_of_memory: tuple[tuple[int, int], ...]  # (crop, batch) of the corners that did not fit

    def predict(self, crop: int, batch: int) -> tuple[float, float]:
        features = np.array([1.0, batch, batch * crop * crop])
        return float(features @ self.time) / batch, float(features @ self.memory)


class CostModel:
    """A probe, fitted: predicts any configuration of the study on the probed machine."""

    def __init__(self, probe: Probe):
        self.probe = probe
        self.memory_limit_bytes = probe.memory_limit_bytes
        train = [c for c in probe.corners if c.kind == "train"]
        self._measured = {_key(c.configuration): c for c in probe.corners}
        self._groups = {group: _fit([c for c in train if c.group == group]) for group in {c.group for c in train}}
        self._eval = {c.group: c for c in probe.corners if c.kind == "eval"}

    def predict(self, config: Mapping[str, Any]) -> Prediction:
        """`config`: TrainConfig fields (a dict, e.g. TrainConfig.to_dict()); needs COST_FIELDS."""
        group = (config["model"], config["backbone"], config["output_stride"])
        if group not in self._groups:
            raise self._missing(*group)
        evaluation = self._eval_corner(*group)
        eval_seconds = self.eval_seconds_per_image(*group)
        corner = self._measured.get(_key({"kind": "train", **{f: config[f] for f in COST_FIELDS}}))
        if corner is not None:
            seconds = 1 / corner.images_per_second if corner.fits else math.inf
            memory = corner.peak_memory_bytes if corner.fits else math.inf
            measured = True
        else:
            fit = self._groups[group]
            crop, batch = config["crop_size"], config["batch_size"]
            seconds, memory = fit.predict(crop, batch) if fit is not None else (math.inf, math.inf)
            if fit is None or any(crop >= c and batch >= b for c, b in fit.out_of_memory):
                memory = math.inf
            measured = False
        if evaluation.fits:
            memory = max(memory, evaluation.peak_memory_bytes)
        fits = memory <= self.memory_limit_bytes and evaluation.fits
        return Prediction(seconds, eval_seconds, memory, fits, measured)


    def eval_seconds_per_image(self, model: str, backbone: str, output_stride: int) -> float:
        """Evaluating one val image at this output stride (single scale); inf where it did not fit."""
        corner = self._eval_corner(model, backbone, output_stride)
        return 1 / corner.images_per_second if corner.fits else math.inf

    def _eval_corner(self, model: str, backbone: str, output_stride: int) -> Corner:
        if (model, backbone, output_stride) not in self._eval:
            raise self._missing(model, backbone, output_stride)
        return self._eval[model, backbone, output_stride]

    def _missing(self, model: str, backbone: str, output_stride: int) -> UserError:
        return UserError(f"the probe ({self.probe.device}) has no corner of {MODELS[model]} {backbone} at output "
                         f"stride {output_stride}; run python -m hpo.plan --reprobe")


def _key(configuration: Mapping[str, Any]) -> str:
    return json.dumps({k: configuration[k] for k in ("kind", *COST_FIELDS)}, sort_keys=True)


def _fit(corners: Sequence[Corner]) -> _GroupFit | None:
    """Least squares with non-negative coefficients, on the columns the corners can tell apart."""
    fitting = [c for c in corners if c.fits]
    out_of_memory = tuple((c.crop_size, c.batch_size) for c in corners if not c.fits)
    if not fitting:
        return None
    batches = np.array([c.batch_size for c in fitting], dtype=float)
    pixels = np.array([c.crop_size ** 2 for c in fitting], dtype=float)
    # a (per step) needs two batch sizes to be told from b; b (per image) two crops to be told from c
    columns = [len(set(batches)) > 1, len(set(pixels)) > 1, True]
    design = np.stack([np.ones_like(batches), batches, batches * pixels], axis=1)[:, columns]
    step_seconds = np.array([c.batch_size / c.images_per_second for c in fitting])
    memory = np.array([c.peak_memory_bytes for c in fitting], dtype=float)
    return _GroupFit(_solve(design, step_seconds, columns), _solve(design, memory, columns), out_of_memory)


def _solve(design: np.ndarray, target: np.ndarray, columns: Sequence[bool]) -> tuple[float, float, float]:
    scale = design.max(axis=0)  # columns of 1, a batch, a batch x pixels: scaled alike for nnls
    solution, _ = nnls(design / scale, target)
    coefficients = iter(solution / scale)
    return tuple(next(coefficients) if used else 0.0 for used in columns)


def split_size(cfg: TrainConfig, split: str) -> tuple[int, str]:
    """Images in `split` of cfg's data, and where the count comes from."""
    if cfg.synthetic:
        train = cfg.synthetic_train_images
        sizes = {"train": train, "train_aug": train, "val": cfg.synthetic_val_images,
                 "trainval": train + cfg.synthetic_val_images, "holdout": holdout_size(train),
                 "train_aug_search": train - holdout_size(train)}
        return sizes[split], "synthetic set"
    try:
        return len(read_split_ids(find_voc_dir(cfg.data_root), split)), "split file"
    except UserError:
        return VOC_SPLIT_SIZES[split], "VOC's published size (data not found)"


def checkpoint_bytes(config: Mapping[str, Any], finished: bool = False) -> int:
    """A checkpoint's size, from the parameter count: fp32 weights, and while the run trains the optimizer's
    buffers (a finished run's checkpoint keeps the weights alone)."""
    momentum = config["optimizer"] != "sgd" or config["momentum"]
    state = OPTIMIZER_STATE[config["optimizer"]] if momentum and not finished else 0
    return BYTES_PER_VALUE * _parameters(config["model"], config["backbone"], config["output_stride"],
                                         config["aux_loss"]) * (1 + state)


_PARAMETERS: dict[tuple[str, str, int, bool], int] = {}


def _parameters(model: str, backbone: str, output_stride: int, aux_loss: bool) -> int:
    key = (model, backbone, output_stride, aux_loss)
    if key not in _PARAMETERS:
        _PARAMETERS[key] = profile.parameter_count(TrainConfig(model=model, backbone=backbone,
                                                               output_stride=output_stride, aux_loss=aux_loss,
                                                               pretrained=None))
    return _PARAMETERS[key]


def sample_space(space: Sequence[Param], count: int, seed: int = 0) -> list[dict[str, Any]]:
    """`count` points drawn as Optuna's random sampler draws them (uniform choices, uniform or
    log-uniform ranges, conditions respected), as TrainConfig overrides."""
    rng = np.random.default_rng(seed)
    points = []
    for _ in range(count):
        params: dict[str, Any] = {}
        for param in space:
            if param.active(params):
                params[param.name] = _draw(param, rng)
        points.append(train_overrides(space, params))
    return points


def _draw(param: Param, rng: np.random.Generator) -> Any:
    if param.type == "categorical":
        return param.choices[rng.integers(len(param.choices))]
    if param.log:
        value = math.exp(rng.uniform(math.log(param.low), math.log(param.high)))
    else:
        value = rng.uniform(param.low, param.high)
    if param.step is not None:
        value = param.low + round((value - param.low) / param.step) * param.step
    return int(round(value)) if param.type == "int" else float(value)


class TrialPricer:
    """A study's trials on the probed machine: does one fit, and how many device-seconds will it take."""

    def __init__(self, model: CostModel, cfg: TrainConfig):
        """`cfg`: the study's fixed settings, for the sizes of its train and val splits."""
        self.model = model
        self.train_images = split_size(cfg, cfg.train_split)[0]
        self.val_images = split_size(cfg, cfg.val_split)[0]

    def predict(self, config: Mapping[str, Any]) -> Prediction:
        return self.model.predict(config)

    def seconds(self, config: Mapping[str, Any]) -> float:
        """A whole trial (no pruning), or 0 for one that does not fit and so never trains."""
        prediction = self.model.predict(config)
        if not prediction.fits:
            return 0.0
        return prediction.run_seconds(config["epochs"], config["eval_points"], self.train_images, self.val_images)
