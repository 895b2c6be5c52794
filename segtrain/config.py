"""TrainConfig: every knob of one training run, validated, and round-tripping to JSON.

The defaults are DeepLabV3 on VOC 2012 as the PyTorch reimplementations train it
(VainF/DeepLabV3Plus-Pytorch: ResNet-50, output stride 16, crop 513, batch 16, SGD
with momentum 0.9 and poly lr 0.01 for the head with the pretrained backbone at 0.1x,
weight decay 1e-4, ~30k iterations of train_aug), so a config only needs to say what
differs from it. The paper (Chen et al. 2017) trained with one lr of 0.007 for the
whole network, and multi-grid in the last block, which segtrain does not build.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segtrain.errors import ConfigError, UserError

BACKBONES = ("resnet50", "resnet101")
# DeepLabV3 (Chen et al. 2017: ASPP on the backbone's last features) or DeepLabV3+ (Chen et al. 2018: the
# same, with a decoder that fuses layer1's stride-4 features); segtrain.model builds both
MODELS = {"deeplabv3": "DeepLabV3", "deeplabv3plus": "DeepLabV3+"}  # TrainConfig.model -> its name in print
OPTIMIZERS = ("sgd", "adam", "adamw")
OUTPUT_STRIDES = (8, 16)
# VOC 2012's own splits, SBD's train_aug, and train_aug cut in two for the search: it trains on
# train_aug_search and selects on holdout, so VOC val scores only the final table
SPLITS = ("train", "val", "trainval", "train_aug", "train_aug_search", "holdout")
SCHEDULES = ("poly", "wsd")
DECAY_SHAPES = ("1-sqrt", "linear", "cosine")  # segtrain.optim has their formulas


@dataclass(frozen=True)
class TrainConfig:
    # --- data
    data_root: str | None = None  # VOC root (holding VOCdevkit/, or VOCdevkit/, or VOC2012/); None: $VOC_ROOT
    train_split: str = "train_aug"
    val_split: str = "val"
    synthetic: bool = False  # make (or reuse) a synthetic VOC-format set under data_root or the cache dir
    synthetic_train_images: int = 96
    synthetic_val_images: int = 24
    synthetic_image_size: int = 96  # the longest side; scenes are 4:3 or 3:4 at this or 7/8 or 3/4 of it
    synthetic_classes: int = 5  # object classes used, 1-20
    synthetic_seed: int = 0
    # --- model
    model: str = "deeplabv3"  # or "deeplabv3plus": the decoder on layer1's features (segtrain.model)
    backbone: str = "resnet50"
    output_stride: int = 16
    pretrained: str | None = "imagenet"  # "imagenet", a path to a ResNet state_dict, or None (scratch)
    aux_loss: bool = False
    # --- optimisation
    optimizer: str = "sgd"
    lr: float = 0.001  # backbone learning rate; the head gets lr * head_lr_multiplier
    head_lr_multiplier: float = 10.0  # the reimplementations' convention (VainF: backbone at 0.1x the head)
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 1e-4  # not applied to BatchNorm weights and biases
    warmup_epochs: float = 0.0  # linear warmup before the schedule
    # poly: the DeepLab recipe, lr * (1 - progress) ** poly_power. wsd (warmup-stable-decay):
    # constant lr, then a decay to 0 over the last decay_fraction of the budget; each evaluation
    # but the last scores a short decay branch off the run (which then goes on as if it had not
    # happened), so every evaluation is an annealed score: what pruners should compare.
    schedule: str = "poly"
    poly_power: float = 0.9  # poly only
    decay_fraction: float = 0.2  # wsd only: the decay's share of a complete run (Hägele et al. 2024: 0.1-0.2)
    decay_shape: str = "1-sqrt"  # wsd only: 1-sqrt (better than linear, Hägele et al. 2024), linear, cosine
    # --- input
    crop_size: int = 513
    batch_size: int = 16  # per step, across all processes
    min_scale: float = 0.5
    max_scale: float = 2.0
    # --- budget, in epochs of the train split
    epochs: float = 46.0  # 30k iterations of train_aug (10,582 images) at batch 16
    eval_points: int = 5  # evaluations at k/eval_points of the budget
    # --- runtime
    seed: int = 0
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    # DataLoader worker processes; None: what the host can give (segtrain.device.default_workers: on CUDA
    # min(cores per GPU process - 1, 8), on the CPU 0, loading in the training process)
    workers: int | None = None
    eval_batch_size: int = 8
    compile: bool = False  # torch.compile the training model (evaluation and checkpoints use the eager module)

    def __post_init__(self) -> None:
        for name, annotation in _field_types().items():
            value = getattr(self, name)
            _check_type(name, value, annotation)
            if annotation is float:  # 1 in TOML means 1.0; keep JSON round-trips exact
                object.__setattr__(self, name, float(value))
        if isinstance(self.pretrained, str) and self.pretrained.lower() == "none":
            object.__setattr__(self, "pretrained", None)
        for name in ("lr", "epochs", "poly_power"):
            self._require(name, getattr(self, name) > 0, "must be > 0")
        for name in ("weight_decay", "warmup_epochs", "synthetic_seed"):
            self._require(name, getattr(self, name) >= 0, "must be >= 0")
        self._require("workers", self.workers is None or self.workers >= 0, "must be >= 0")
        self._require("head_lr_multiplier", self.head_lr_multiplier > 0, "must be > 0")
        self._require("momentum", 0 <= self.momentum < 1, "must be in [0, 1)")
        self._require("nesterov", not (self.nesterov and self.momentum == 0),
                      "needs momentum > 0")
        self._require("model", self.model in MODELS, f"must be one of {', '.join(MODELS)}")
        self._require("backbone", self.backbone in BACKBONES, f"must be one of {', '.join(BACKBONES)}")
        self._require("optimizer", self.optimizer in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}")
        self._require("schedule", self.schedule in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}")
        self._require("decay_fraction", 0 < self.decay_fraction < 1, "must be in (0, 1)")
        self._require("decay_shape", self.decay_shape in DECAY_SHAPES, f"must be one of {', '.join(DECAY_SHAPES)}")
        self._require("warmup_epochs", self.schedule != "wsd"
                      or self.warmup_epochs <= self.epochs * (1 - self.decay_fraction),
                      f"must be <= epochs * (1 - decay_fraction) = {self.epochs * (1 - self.decay_fraction):g} "
                      f"under schedule wsd (the warmup ends before the decay starts)")
        self._require("output_stride", self.output_stride in OUTPUT_STRIDES, "must be 8 or 16")
        self._require("train_split", self.train_split in SPLITS, f"must be one of {', '.join(SPLITS)}")
        self._require("val_split", self.val_split in SPLITS, f"must be one of {', '.join(SPLITS)}")
        self._require("crop_size", self.crop_size >= 32, "must be >= 32 pixels")
        # BatchNorm after ASPP's image pooling sees one value per channel per image.
        self._require("batch_size", self.batch_size >= 2, "must be >= 2 (BatchNorm needs two images)")
        self._require("eval_batch_size", self.eval_batch_size >= 1, "must be >= 1")
        self._require("eval_points", self.eval_points >= 1, "must be >= 1")
        self._require("min_scale", 0 < self.min_scale <= self.max_scale, "must be > 0 and <= max_scale")
        self._require("synthetic_train_images", self.synthetic_train_images >= 2, "must be >= 2")
        self._require("synthetic_val_images", self.synthetic_val_images >= 1, "must be >= 1")
        self._require("synthetic_image_size", self.synthetic_image_size >= 32, "must be >= 32 pixels")
        self._require("synthetic_classes", 1 <= self.synthetic_classes <= 20, "must be in 1-20")
        self._require("device", re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
                      "must be auto, cpu, cuda or cuda:N")

    def _require(self, name: str, condition: bool, problem: str) -> None:
        if not condition:
            raise ConfigError(name, f"{problem}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict (TOML, JSON, CLI); unknown keys are errors, not ignored."""
        known = field_names()
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(key, f"unknown setting{hint}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> TrainConfig:
        return self.from_dict({**self.to_dict(), **changes})


def read_config_file(path: Path) -> dict[str, Any]:
    """Values from a TOML file or a run's config.json, validated on their own so an
    error names the file rather than a flag."""
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror})") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not valid {path.suffix.lstrip('.').upper()} ({error})") from None
    try:
        TrainConfig.from_dict(values)
    except ConfigError as error:
        raise UserError(f"{path}: {error}") from None
    return values


def field_names() -> list[str]:
    return [field.name for field in dataclasses.fields(TrainConfig)]


def field_type(name: str) -> type:
    """The plain Python type of a field (str for `str | None`), e.g. for argparse or a search space."""
    return next(t for t in typing.get_args(_field_types()[name]) or (_field_types()[name],)
                if t is not type(None))


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check_type(name: str, value: Any, annotation: Any) -> None:
    allowed = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if kind in (str, bool) and isinstance(value, kind):
            return
    names = " or ".join("null" if kind is type(None) else kind.__name__ for kind in allowed)
    raise ConfigError(name, f"must be {names}, got {value!r}")
