"""The controlled experiments of [finalize.ablation]: one factor at a time around a centre configuration.

Each value of a factor that differs from the centre's is one configuration: the centre's
recipe with that field changed, and nothing else but what the change needs. Changing the
optimizer needs its own lr and weight decay (SGD's lr is 10-100x AdamW's): the experiment
takes those of the search's best trial with that optimizer, which the search tuned on its
own held-out split like the centre; if no such trial finished, the geometric middle of the
space's range for that optimizer; if the space has none, the centre's, and says so. These
are plain data for hpo.finalize.selection, which turns them into configurations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from hpo.space import train_overrides
from hpo.spec import Ablation, FinalizeOptions, Multiple, StudySpec
from hpo.trials import ranked_trials
from segtrain.config import TrainConfig

FIT_FOR_OPTIMIZER = ("lr", "weight_decay", "momentum")  # what an optimizer brings along when it is swapped in


@dataclass(frozen=True)
class Experiment:
    """One alternative value of one factor, as changes to the centre's recipe."""

    field: str
    value: Any  # as the spec gives it: a value, or a Multiple of the centre's
    changes: dict[str, Any]  # TrainConfig fields set on top of the centre's recipe
    how: str  # what was changed, in words, e.g. "lr x3 (0.06)"

    @property
    def label(self) -> str:
        """The value as a name fit for a run dir: a multiple as the number it resolves to, never "x1/3"."""
        resolved = self.changes[self.field]
        return f"{resolved:.3g}" if isinstance(self.value, Multiple) else str(resolved)


def budget(spec: StudySpec, options: FinalizeOptions, centre_params: Mapping[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields that set the experiments' budget and data: the search's epochs and training
    split (budget "search") or finalize's (budget "full"); finalize's val split and schedule either way."""
    common = {"seed": 0, "val_split": options.val_split, "schedule": options.schedule}
    if options.ablation.budget == "full":
        return {**common, "epochs": options.epochs, "train_split": options.train_split}
    search = spec.train_config(centre_params)
    return {**common, "epochs": search.epochs, "train_split": search.train_split}


def experiments(spec: StudySpec, study: optuna.Study, ablation: Ablation, centre: TrainConfig) -> list[Experiment]:
    """Every value of every factor but the centre's own, in spec order."""
    found = []
    for field, values in ablation.factors.items():
        for value in values:
            resolved = value.of(getattr(centre, field)) if isinstance(value, Multiple) else value
            if _same(resolved, getattr(centre, field)):
                continue
            how = f"{field} {value} ({resolved:.3g})" if isinstance(value, Multiple) else f"{field} = {resolved}"
            changes = {field: resolved}
            if field == "optimizer":
                fitted, why = fit_for_optimizer(spec, study, resolved)
                changes |= fitted
                how += f", {why}"
            found.append(Experiment(field, value, changes, how))
    return found


def fit_for_optimizer(spec: StudySpec, study: optuna.Study, optimizer: str) -> tuple[dict[str, Any], str]:
    """The lr and weight decay (and momentum, for SGD) an optimizer is trained with when it replaces the
    centre's, and where they come from."""
    for trial in ranked_trials(study):
        values = train_overrides(spec.space, trial.params)
        if spec.train_config(values).optimizer == optimizer:
            fitted = {key: values[key] for key in FIT_FOR_OPTIMIZER if key in values}
            return fitted, (f"with {_settings(fitted)} of trial {trial.number}, the search's best with {optimizer}"
                            if fitted else f"trial {trial.number}, the search's best with {optimizer}, sets no lr")
    middles = {param.field: _middle(param.low, param.high, param.log) for param in spec.space
               if param.field in FIT_FOR_OPTIMIZER and param.type != "categorical"
               and param.active({"optimizer": optimizer}) and param.when.get("optimizer")}
    if middles:
        return middles, f"with {_settings(middles)}, the middle of the space's range for {optimizer} (no trial with it)"
    return {}, f"with the centre's lr and weight decay (the space gives {optimizer} no range of its own)"


def _settings(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in values.items())


def _middle(low: float, high: float, log: bool) -> float:
    return math.sqrt(low * high) if log else (low + high) / 2


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same kind (True is not 1); floats to within rounding (x3 then x1/3 of a value)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b and isinstance(a, bool) == isinstance(b, bool)
