"""Which configurations finalize retrains, and each one's recipe.

The search's top-k distinct configurations (by their score on the search's val
split), the [baseline] recipe, ResNet-101 ImageNet-pretrained with the best
configuration's recipe, ResNet-101 from scratch with that recipe changed by
[finalize.scratch] (a random backbone needs its own recipe: hpo.spec.ScratchRecipe),
the [finalize.ablation] experiments with their centre (hpo.finalize.experiments; at the
search's budget unless the spec says "full"), and the best configuration as each [finalize]
variants model (DeepLabV3+: role "variant"). All are scored on [finalize] val_split; all but
the ablation's are trained on [finalize] train_split for [finalize] epochs.

Imports hpo.report.results (Configuration), hpo.spec and hpo.trials; hpo.finalize.workflow calls it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.finalize import experiments
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
    changes: dict[str, Any] = dataclasses.field(default_factory=dict)  # applied after the budget
    factor: tuple[str, Any] | None = None
    budget: dict[str, Any] | None = None  # epochs, splits, schedule, seed; None: finalize's full budget


def plan(spec: StudySpec, study: optuna.Study, options: FinalizeOptions) -> list[Configuration]:
    """The configurations to retrain, in table order: top-k, baseline, the ablation's centre and its
    experiments (hpo.finalize.experiments), variants, ResNet-101 pretrained, scratch.

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
    entries += ablation_entries(spec, study, options, best)
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


def ablation_entries(spec: StudySpec, study: optuna.Study, options: FinalizeOptions, best: FrozenTrial) -> list[_Entry]:
    """The ablation's centre (the best configuration or the baseline, at the ablation's budget: at the full
    budget it is that very configuration, merged with it) and one entry per experiment around it."""
    ablation = options.ablation
    if not ablation.factors:
        return []
    if ablation.around == "baseline":
        trial = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")), None)
        params, what = dict(spec.baseline), "the [baseline] recipe"
    else:
        trial, params, what = best, train_overrides(spec.space, best.params), f"trial {best.number}'s recipe"
    budget = experiments.budget(spec, options, params)
    at = "at the search budget" if ablation.budget == "search" else "at the full budget"
    centre = _Entry("ablation centre", f"{what} {at}, the centre of the ablation", "ablation-centre", trial, params,
                    budget=budget)
    centre_config = _configuration(spec, centre, budget).config
    return [centre, *(_Entry(f"ablation {e.field}={e.label}", f"{what} with {e.how}, {at}", "ablation", trial,
                             params, e.changes, (e.field, e.changes[e.field]), budget)
                      for e in experiments.experiments(spec, study, ablation, centre_config))]


def _configuration(spec: StudySpec, entry: _Entry, full: Mapping[str, Any]) -> Configuration:
    params = {**entry.params, **entry.changes}
    budget = full if entry.budget is None else entry.budget
    try:
        config = spec.train_config({**entry.params, **budget, **entry.changes})
    except ConfigError as error:  # a [finalize.scratch] or [finalize.ablation] value that clashes with the trial's
        section = {"r101-scratch": "[finalize.scratch]", "ablation": "[finalize.ablation]",
                   "ablation-centre": "[finalize.ablation]"}.get(entry.role, "[finalize]")
        raise UserError(f"{spec.path}: {section} {error.key}: {error.problem} (with {entry.description})") from None
    trial = entry.trial
    search_value = trial.value if entry.role in ("top", "baseline") and trial is not None \
        and trial.state == TrialState.COMPLETE and feasible(trial) else None
    return Configuration(entry.name, entry.description, (entry.role,), trial.number if trial else None, params,
                         config, search_value, entry.factor)


