"""Which configurations finalize retrains, and each one's recipe.

The search's top-k distinct configurations (by their score on the search's val
split), the [baseline] recipe, ResNet-101 ImageNet-pretrained with the best
configuration's recipe, ResNet-101 from scratch with that recipe changed by
[finalize.scratch] (a random backbone needs its own recipe: hpo.spec.ScratchRecipe),
the [finalize.ablation] runs around the best configuration, and the best configuration
as each [finalize] variants model (DeepLabV3+: role "variant"). All are trained on
[finalize] train_split, scored on [finalize] val_split, for [finalize] epochs.

Imports hpo.report.results (Configuration), hpo.spec and hpo.trials; hpo.finalize.workflow calls it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.report.results import Configuration
from hpo.space import train_overrides
from hpo.spec import FinalizeOptions, ScratchRecipe, StudySpec
from hpo.storage_urls import safe_url
from hpo.trials import feasible, ranked_trials
from segtrain.config import MODELS, TrainConfig
from segtrain.errors import ConfigError, UserError

log = logging.getLogger(__name__)


def scratch_changes(best: TrainConfig, recipe: ScratchRecipe) -> dict[str, Any]:
    """What the scratch arm changes in the best configuration's (full-budget) recipe."""
    multiplier = recipe.lr_multiplier if recipe.lr_multiplier is not None else best.head_lr_multiplier
    epochs = best.epochs * recipe.epochs_multiplier
    return {"lr": best.lr * multiplier, "epochs": epochs, "warmup_epochs": recipe.warmup_fraction * epochs,
            **recipe.overrides}


@dataclasses.dataclass(frozen=True)
class _Entry:
    name: str
    description: str
    role: str
    trial: FrozenTrial | None
    params: dict[str, Any]  # the trial's (or baseline's) TrainConfig overrides
    changes: dict[str, Any] = dataclasses.field(default_factory=dict)  # applied after the full budget
    factor: tuple[str, Any] | None = None


def plan(spec: StudySpec, study: optuna.Study, options: FinalizeOptions) -> list[Configuration]:
    """The configurations to retrain, in table order: top-k, baseline, ablations, variants, ResNet-101
    pretrained, scratch.

    Entries that train the very same recipe (e.g. the baseline is also a top trial)
    are merged into one configuration carrying both roles.
    """
    ranked = ranked_trials(study)
    if not ranked:
        raise UserError(f"study '{spec.study.name}' in {safe_url(spec.study.storage)} has no complete "
                        f"feasible trial to finalize; run more trials: python -m hpo.search --study {spec.path}")
    if len(ranked) < options.top_k:
        log.warning("only %d distinct complete configurations in the study (top_k = %d): finalizing those",
                    len(ranked), options.top_k)
    full = {"epochs": options.epochs, "seed": 0, "train_split": options.train_split, "val_split": options.val_split,
            "schedule": options.schedule}
    best = ranked[0]
    best_params = train_overrides(spec.space, best.params)
    best_config = spec.train_config({**best_params, **full})
    entries = [_Entry(f"top-{rank}", f"trial {trial.number}", "top", trial, train_overrides(spec.space, trial.params))
               for rank, trial in enumerate(ranked[:options.top_k], start=1)]
    if spec.baseline:
        trial = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")), None)
        entries.append(_Entry("baseline", "the [baseline] recipe", "baseline", trial, dict(spec.baseline)))
    for field, values in options.ablation.items():
        entries += [_Entry(f"ablation {field}={value}", f"trial {best.number}'s recipe with {field} = {value}",
                           "ablation", best, best_params, {field: value}, (field, value))
                    for value in values if not _same(value, getattr(best_config, field))]
    entries += [_Entry(f"variant {model}", f"trial {best.number}'s recipe as {MODELS[model]}", "variant", best,
                       best_params, {"model": model}, ("model", model)) for model in options.variants]
    weights = options.pretrained_weights or "imagenet"
    source = f" ({weights})" if options.pretrained_weights else ""
    r101 = {**best_params, "backbone": "resnet101"}
    entries.append(_Entry("r101-imagenet", f"ResNet-101, ImageNet-pretrained{source}, trial {best.number}'s "
                          "recipe", "r101-imagenet", best, {**r101, "pretrained": weights}))
    entries.append(_Entry("r101-scratch", f"ResNet-101 from scratch, trial {best.number}'s recipe with "
                          "[finalize.scratch]", "r101-scratch", best, {**r101, "pretrained": None},
                          scratch_changes(best_config, options.scratch)))

    configurations: list[Configuration] = []
    for entry in entries:
        configuration = _configuration(spec, entry, full)
        same = next((i for i, c in enumerate(configurations) if c.key == configuration.key), None)
        if same is None:
            configurations.append(configuration)
        else:
            merged = configurations[same]
            configurations[same] = dataclasses.replace(
                merged, description=f"{merged.description} = {entry.name}", roles=merged.roles + (entry.role,),
                factor=merged.factor or entry.factor)
    return configurations


def _configuration(spec: StudySpec, entry: _Entry, full: Mapping[str, Any]) -> Configuration:
    params = {**entry.params, **entry.changes}
    try:
        config = spec.train_config({**entry.params, **full, **entry.changes})
    except ConfigError as error:  # a [finalize.scratch] or [finalize.ablation] value that clashes with the trial's
        section = {"r101-scratch": "[finalize.scratch]", "ablation": "[finalize.ablation]"}.get(entry.role,
                                                                                                 "[finalize]")
        raise UserError(f"{spec.path}: {section} {error.key}: {error.problem} (with {entry.description})") from None
    trial = entry.trial
    search_value = trial.value if entry.role in ("top", "baseline") and trial is not None \
        and trial.state == TrialState.COMPLETE and feasible(trial) else None
    return Configuration(entry.name, entry.description, (entry.role,), trial.number if trial else None, params,
                         config, search_value, entry.factor)


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same kind (True is not 1)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)
