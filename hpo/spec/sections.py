"""The study file's sections as validated data: [study], [finalize] (and its scratch recipe), the
sampler and pruner, the published recipes, and the StudySpec that holds them.

Each dataclass checks its own values when built, so a spec is valid however it was made;
hpo.spec.load reads the TOML into them. Imports hpo.space and segtrain only.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from hpo.space import Param
from segtrain.config import MODELS, SCHEDULES, SPLITS, TrainConfig
from segtrain.errors import ConfigError
from segtrain.evaluation import PRESETS
from segtrain.tracking import TRACKERS

RUNS_DIR = Path("runs")


def is_of(value: Any, kind: type | None) -> bool:
    """Whether a TOML value is of `kind`: an int is a float, a bool is not an int."""
    if kind is None:
        return value is None
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, (int, float) if kind is float else kind)


def check(key: str, value: Any, kind: type, ok: Callable[[Any], bool], problem: str) -> None:
    if not is_of(value, kind):
        raise ConfigError(key, f"must be {kind.__name__}, got {value!r}")
    if not ok(value):
        raise ConfigError(key, f"{problem}, got {value!r}")




@dataclass(frozen=True)
class StudyOptions:
    """[study]: where the study and its outputs live, its size and budget, the sampler's seed,
    and how its workers prove they are alive."""

    name: str
    output_dir: Path | str | None = None  # trials/, final/, probe.json; None: runs/<name> (relative to the cwd)
    storage: str | None = None  # any Optuna storage URL; None: sqlite:///<output_dir>/study.db
    trials: int = 40  # finished trials the search aims at (hpo.search --trials overrides it)
    budget_hours: float | None = None  # device-hours the search may spend, all workers together; None: no limit
    seed: int = 0
    heartbeat_interval: int = 60  # seconds, RDB storages: a trial silent for grace_period is stale
    grace_period: int = 120  # and is failed and re-queued by the next worker
    keep_checkpoints: int = 3  # the best this-many trials keep their checkpoints
    tracking: str = "none"  # "tensorboard" or "mlflow": every trial's and final run's curves (hpo.search.tracking)

    def __post_init__(self) -> None:
        check("name", self.name, str, lambda v: re.fullmatch(r"[\w.-]+", v) is not None,
               "must be letters, digits, '_', '.' or '-' (it names runs/<name>/)")
        if self.output_dir is None:
            object.__setattr__(self, "output_dir", RUNS_DIR / self.name)
        check("output_dir", str(self.output_dir) if isinstance(self.output_dir, Path) else self.output_dir,
               str, bool, "must be a directory path")
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if self.storage is None:
            object.__setattr__(self, "storage", default_storage(self.output_dir))
        check("storage", self.storage, str, bool, "must be an Optuna storage URL")
        check("trials", self.trials, int, lambda v: v >= 1, "must be >= 1")
        if self.budget_hours is not None:
            check("budget_hours", self.budget_hours, float, lambda v: v > 0, "must be > 0 hours")
            object.__setattr__(self, "budget_hours", float(self.budget_hours))
        check("seed", self.seed, int, lambda v: v >= 0, "must be >= 0")
        check("heartbeat_interval", self.heartbeat_interval, int, lambda v: v > 0, "must be > 0 seconds")
        check("grace_period", self.grace_period, int, lambda v: v > self.heartbeat_interval,
               f"must be > heartbeat_interval ({self.heartbeat_interval}), or live trials look stale")
        check("keep_checkpoints", self.keep_checkpoints, int, lambda v: v >= 0, "must be >= 0")
        check("tracking", self.tracking, str, lambda v: v in TRACKERS, f"must be one of {', '.join(TRACKERS)}")


def default_storage(output_dir: Path) -> str:
    """The SQLite database a study keeps beside its outputs unless [study] storage says otherwise."""
    return f"sqlite:///{(output_dir / 'study.db').as_posix()}"


@dataclass(frozen=True)
class ScratchRecipe:
    """[finalize.scratch]: how the ResNet-101 from-scratch arm departs from the best configuration's recipe.

    The best configuration's recipe was tuned for an ImageNet-pretrained backbone (for
    voc_r50, a backbone lr 10x below the head's). Defaults after He, Girshick & Dollar
    2019 (Rethinking ImageNet Pre-training, arXiv:1811.08883), whose scratch models used
    the fine-tuning recipe's lr for the whole network with a linear warm-up:
    - lr_multiplier None: lr x the best configuration's head_lr_multiplier, and
      head_lr_multiplier 1 (an override): every layer at the head's lr, as a random
      backbone has no reason to learn 10x slower than the head;
    - warmup_fraction 0.05: a linear warm-up over the first 5% of the arm's steps (our
      choice of length), since a random network starts at the full lr;
    - epochs_multiplier 1: the same budget as the pretrained arm, so the comparison is
      "at this budget". He et al. needed about 3x the fine-tuning schedule (and GroupNorm
      or SyncBN) before scratch caught up; raise it to ask that question instead.
    """

    lr_multiplier: float | None = None  # x the best configuration's lr; None: x its head_lr_multiplier
    epochs_multiplier: float = 1.0  # x [finalize] epochs
    warmup_fraction: float = 0.05  # linear warm-up over this fraction of the arm's epochs
    overrides: dict[str, Any] = field(default_factory=lambda: {"head_lr_multiplier": 1.0})  # TrainConfig fields

    def __post_init__(self) -> None:
        if self.lr_multiplier is not None:
            check("lr_multiplier", self.lr_multiplier, float, lambda v: v > 0, "must be > 0")
            object.__setattr__(self, "lr_multiplier", float(self.lr_multiplier))
        check("epochs_multiplier", self.epochs_multiplier, float, lambda v: v > 0, "must be > 0")
        check("warmup_fraction", self.warmup_fraction, float, lambda v: 0 <= v < 1, "must be in [0, 1)")
        object.__setattr__(self, "epochs_multiplier", float(self.epochs_multiplier))
        object.__setattr__(self, "warmup_fraction", float(self.warmup_fraction))


@dataclass(frozen=True)
class Multiple:
    """A factor value given relative to the centre's, e.g. lr = "x3" or "x1/3"."""

    factor: float
    text: str  # as the spec wrote it: "x1/3"

    def of(self, centre: float) -> float:
        return centre * self.factor

    def __str__(self) -> str:
        return self.text


ABLATION_CENTRES = ("best", "baseline")
ABLATION_BUDGETS = ("search", "full")


@dataclass(frozen=True)
class Ablation:
    """[finalize.ablation]: controlled experiments, one factor at a time around a centre configuration.

    Each value of a factor other than the centre's own is one more configuration, trained over
    the same seeds as the centre and compared with it by seed. `budget = "search"` trains them
    (and the centre again) at the search's epochs on the search's training split, about a
    twelfth of a full run for voc_r50, so every factor the lab names can afford three seeds;
    `"full"` at finalize's. Either way they are scored on finalize's val_split, which nothing
    selected on. A value may be relative to the centre's (Multiple, float fields); an
    `optimizer` value brings the lr and weight decay the search found for that optimizer.
    """

    around: str = "best"  # the centre: the best configuration, or the [baseline] recipe
    budget: str = "search"  # "search": the search's epochs and training split; "full": finalize's
    factors: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # field -> values

    def __post_init__(self) -> None:
        check("around", self.around, str, lambda v: v in ABLATION_CENTRES,
              f"must be one of {', '.join(ABLATION_CENTRES)}")
        check("budget", self.budget, str, lambda v: v in ABLATION_BUDGETS,
              f"must be one of {', '.join(ABLATION_BUDGETS)}")


@dataclass(frozen=True)
class FinalizeOptions:
    """[finalize]: the configurations retrained at full budget over seeds, on which splits, the other
    members of the DeepLab family the best configuration is retrained as (`variants`), and the two
    optional sub-tables: [finalize.scratch] (the scratch arm's recipe) and [finalize.ablation]."""

    top_k: int = 4
    seeds: tuple[int, ...] = (1, 2, 3)  # apart from the search's [train] seed (0): new runs, not the selecting one
    epochs: float = TrainConfig.epochs  # the full budget: the standard 30k-iteration recipe
    pretrained_weights: str | None = None  # ResNet-101 ImageNet state_dict; None: torchvision's
    train_split: str = "train_aug"  # finalize trains on all of train_aug ...
    val_split: str = "val"  # ... and reports on VOC val, which the search never scored
    schedule: str = "poly"  # the full-budget runs' lr schedule: the published recipes' poly, whatever the search's
    eval: tuple[str, ...] = ("ss",)  # segtrain.evaluation.PRESETS each final run is scored under ("ss": its own)
    variants: tuple[str, ...] = ()  # TrainConfig.model values: the best configuration retrained as each, same seeds
    scratch: ScratchRecipe = ScratchRecipe()
    ablation: Ablation = Ablation()

    def __post_init__(self) -> None:
        check("top_k", self.top_k, int, lambda v: v >= 1, "must be >= 1")
        if not isinstance(self.seeds, list | tuple) or not self.seeds or not all(is_of(s, int) for s in self.seeds):
            raise ConfigError("seeds", f"must be a non-empty list of integers, got {self.seeds!r}")
        if len(set(self.seeds)) < len(self.seeds):
            raise ConfigError("seeds", f"must not repeat a seed, got {list(self.seeds)}")
        check("epochs", self.epochs, float, lambda v: v > 0, "must be > 0")
        if self.pretrained_weights is not None:
            check("pretrained_weights", self.pretrained_weights, str, bool, "must be a path")
        for key in ("train_split", "val_split"):
            check(key, getattr(self, key), str, lambda v: v in SPLITS, f"must be one of {', '.join(SPLITS)}")
        check("schedule", self.schedule, str, lambda v: v in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}")
        if not isinstance(self.eval, list | tuple) or not self.eval or not all(p in PRESETS for p in self.eval):
            raise ConfigError("eval", f"must be a non-empty list of protocols from {', '.join(PRESETS)}, "
                                      f"got {self.eval!r}")
        if len(set(self.eval)) < len(self.eval):
            raise ConfigError("eval", f"must not repeat a protocol, got {list(self.eval)}")
        object.__setattr__(self, "eval", tuple(self.eval))
        if not isinstance(self.variants, list | tuple) or not all(v in MODELS for v in self.variants):
            raise ConfigError("variants", f"must be a list of models from {', '.join(MODELS)}, e.g. "
                                          f'["deeplabv3plus"], got {self.variants!r}')
        if len(set(self.variants)) < len(self.variants):
            raise ConfigError("variants", f"must not repeat a model, got {list(self.variants)}")
        object.__setattr__(self, "variants", tuple(self.variants))
        if self.val_split == self.train_split:  # by name here; finalize compares the two lists' image ids too
            raise ConfigError("val_split", f"must differ from train_split ({self.train_split!r}): a table "
                                           "scored on its training images says nothing")
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "epochs", float(self.epochs))


@dataclass(frozen=True)
class Component:
    """[sampler] or [pruner]: the Optuna class named by `type`, and its keyword arguments."""

    type: str
    cls: type
    args: dict[str, Any]

    def build(self, **fixed: Any) -> Any:
        return self.cls(**fixed, **self.args)

    def describe(self) -> str:
        return f"{self.cls.__name__}({', '.join(f'{key}={value!r}' for key, value in self.args.items())})"


@dataclass(frozen=True)
class Recipe:
    """[recipes.NAME]: a published recipe, enqueued right after the baseline and labelled with its source."""

    name: str
    source: str  # where it comes from, and what was adapted to fit the space
    values: dict[str, Any]  # field values, like [baseline]


@dataclass(frozen=True)
class StudySpec:
    """A validated study file. The direction is not a setting: a study maximises validation mIoU."""

    path: Path
    study: StudyOptions
    train: dict[str, Any]  # fixed TrainConfig fields
    space: tuple[Param, ...]  # searched fields, in sampling order
    sampler: Component
    pruner: Component
    baseline: dict[str, Any]  # field values of the reference recipe, enqueued first; {} for none
    finalize: FinalizeOptions
    recipes: tuple[Recipe, ...] = ()  # enqueued after the baseline, in file order

    def train_config(self, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
        """Fixed fields + `overrides` (a trial's params; finalize's seed, epochs); ConfigError if invalid."""
        return TrainConfig.from_dict({**self.train, **(overrides or {})})

    @property
    def metric_name(self) -> str:
        """What a trial's value is: the mIoU on the split the search scores on, e.g. "holdout mIoU"."""
        return f"{self.train_config().val_split} mIoU"

    def with_train(self, **values: Any) -> StudySpec:
        """A copy with more fixed fields (e.g. a CLI's --data-root); a searched field stays searched."""
        for key in values:
            if any(param.name == key for param in self.space):
                raise ConfigError(key, "is searched in [space] and cannot be fixed")
        train = {**self.train, **values}
        TrainConfig.from_dict(train)
        return dataclasses.replace(self, train=train)

    def with_storage(self, url: str) -> StudySpec:
        """A copy using another storage URL (a CLI's --storage)."""
        return dataclasses.replace(self, study=dataclasses.replace(self.study, storage=url))

    def with_output_dir(self, directory: str | Path) -> StudySpec:
        """A copy writing its outputs elsewhere (a CLI's --output-dir); a default storage moves along."""
        storage = None if self.study.storage == default_storage(self.study.output_dir) else self.study.storage
        return dataclasses.replace(self, study=dataclasses.replace(self.study, output_dir=Path(directory),
                                                                   storage=storage))

    def seeded_trials(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(field values, user attrs) of the trials every study starts with: the baseline, then the recipes."""
        seeded = [(self.baseline, {"baseline": True})] if self.baseline else []
        return seeded + [(recipe.values, {"recipe": recipe.name, "source": recipe.source})
                         for recipe in self.recipes]

    def make_sampler(self, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        """A fresh sampler seeded with [study] seed + `seed_offset`.

        Pass a different offset per process (e.g. the number of trials already in the
        study): two samplers with the same seed draw the same random startup trials, so
        a resumed or parallel worker would repeat trials that already ran.
        """
        return self.sampler.build(seed=self.study.seed + seed_offset)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        return self.pruner.build()

    def to_markdown(self) -> str:
        """The study's note for optuna-dashboard (`save_note`): what is searched, on which data."""
        config = TrainConfig.from_dict(self.train)
        lines = [
            f"# Study `{self.study.name}`", "",
            f"Spec: `{self.path}`. Each trial trains DeepLabV3 ({config.backbone}) for a short budget and "
            "maximises validation mIoU, reported at each evaluation point (step k = k-th evaluation) "
            "so that poor trials are pruned early.", "",
            "## Data", "", _describe_data(config), "",
            f"The search trains each trial on `{config.train_split}` and scores it on `{config.val_split}`; "
            f"finalize retrains on `{self.finalize.train_split}` and reports on `{self.finalize.val_split}`"
            + (", the split the search selected on." if config.val_split == self.finalize.val_split else
               ", which the search never scored."), "",
            "## Fixed settings", "", "| setting | value |", "|---|---|",
            *(f"| {key} | `{value!r}` |" for key, value in self.train.items()), "",
            "All other settings keep their TrainConfig defaults.", "",
            "## Search space", "", "| parameter | values |", "|---|---|",
            *(f"| {param.name} | {param.describe()} |" for param in self.space), "",
        ]
        if self.baseline:
            lines += ["## Baseline (enqueued as the first trial)", "",
                      ", ".join(f"{key} = `{value!r}`" for key, value in self.baseline.items()), ""]
        if self.recipes:
            lines += ["## Published recipes (enqueued after the baseline)", "",
                      *(f"- **{recipe.name}** ({recipe.source}): "
                        + ", ".join(f"{key} = `{value!r}`" for key, value in recipe.values.items())
                        for recipe in self.recipes), ""]
        lines += [
            "## Search", "",
            f"Sampler `{self.sampler.describe()}` with seed {self.study.seed}; pruner `{self.pruner.describe()}`.", "",
            "## Finalize", "",
            f"The top {self.finalize.top_k} configurations, the baseline and ResNet-101 (ImageNet-pretrained with "
            "the best configuration's recipe; from scratch with "
            + ", ".join(f"{k} = {v}" for k, v in _scratch_settings(self.finalize.scratch).items())
            + f") are retrained for {self.finalize.epochs:g} epochs with seeds "
            f"{', '.join(map(str, self.finalize.seeds))}"
            + ("; one factor at a time around the " + self.finalize.ablation.around + " at the "
               + self.finalize.ablation.budget + " budget: " + "; ".join(
                   f"{k} in [{', '.join(map(str, v))}]" for k, v in self.finalize.ablation.factors.items())
               if self.finalize.ablation.factors else "")
            + ("; the best configuration also as " + ", ".join(MODELS[m] for m in self.finalize.variants)
               if self.finalize.variants else "") + ".",
        ]
        return "\n".join(lines) + "\n"


def _scratch_settings(recipe: ScratchRecipe) -> dict[str, Any]:
    settings = {"lr_multiplier": recipe.lr_multiplier if recipe.lr_multiplier is not None
                else "the best's head_lr_multiplier", "epochs_multiplier": recipe.epochs_multiplier,
                "warmup_fraction": recipe.warmup_fraction}
    return {**settings, **recipe.overrides}


def _describe_data(config: TrainConfig) -> str:
    if config.synthetic:
        return (f"Synthetic VOC-format data, made on first use: {config.synthetic_train_images} train / "
                f"{config.synthetic_val_images} val images up to {config.synthetic_image_size} px on the long side, "
                f"{config.synthetic_classes} object classes (seed {config.synthetic_seed}).")
    return (f"Pascal VOC 2012 at `{config.data_root or '$VOC_ROOT'}`: trained on `{config.train_split}`, "
            f"evaluated on `{config.val_split}`.")


