"""The search space: parameters as a spec declares them, and how an Optuna trial samples them.

A `Param` checks its own shape (bounds, log, step, choices) and raises `ConfigError`
naming itself; `hpo.spec` adds the file and section, and checks it against TrainConfig.

One TrainConfig field may be searched by several Optuna parameters: a field with one
range per value of an earlier categorical (`lr` under "sgd" and under "adamw") becomes
`lr[sgd]` and `lr[adamw]`, each sampled only under its condition, because one Optuna
name must keep one distribution. `train_overrides` maps a trial's params back to fields.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from segtrain.errors import ConfigError

PARAM_TYPES = ("float", "int", "categorical")
Choice = bool | int | float | str


@dataclass(frozen=True)
class Param:
    """One searched TrainConfig field; `when` = {earlier categorical param: values it must take}.

    `name` is the Optuna parameter; `field` the TrainConfig field it sets (the same,
    except for a per-condition range such as `lr[sgd]` of field `lr`).
    """

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Choice, ...] = ()
    when: dict[str, tuple[Choice, ...]] = dataclasses.field(default_factory=dict)
    field: str = ""  # the TrainConfig field; "" means `name`

    def __post_init__(self) -> None:
        if not self.field:
            object.__setattr__(self, "field", self.name)
        if self.type not in PARAM_TYPES:
            self._fail(f"type must be one of {', '.join(PARAM_TYPES)}, got {self.type!r}")
        if self.type == "categorical":
            self._check_choices()
        else:
            self._check_range()
        for parent, values in self.when.items():
            if not values:
                self._fail(f"when: {parent} needs at least one value")

    def _fail(self, problem: str) -> None:
        raise ConfigError(self.name, problem)

    def _check_choices(self) -> None:
        for option in ("low", "high", "step"):
            if getattr(self, option) is not None:
                self._fail(f"{option} does not apply to a categorical parameter (it has choices)")
        if self.log:
            self._fail("log does not apply to a categorical parameter")
        if not self.choices:
            self._fail("choices must be a non-empty list")
        for choice in self.choices:
            if not isinstance(choice, Choice):
                self._fail(f"choices: {choice!r} is not a bool, number or string")
        if len({(type(c), c) for c in self.choices}) < len(self.choices):
            self._fail(f"choices repeat a value: {list(self.choices)}")

    def _check_range(self) -> None:
        if self.choices:
            self._fail(f"choices do not apply to a {self.type} parameter (it has low and high)")
        number = int if self.type == "int" else (int, float)
        for option in ("low", "high", "step"):
            value = getattr(self, option)
            if value is None and option != "step":
                self._fail(f'{option} is required for type "{self.type}"')
            if value is not None and (isinstance(value, bool) or not isinstance(value, number)
                                      or not math.isfinite(value)):
                kind = "an integer" if self.type == "int" else "a finite number"
                self._fail(f'{option} must be {kind} for type "{self.type}", got {value!r}')
        if not isinstance(self.log, bool):
            self._fail(f"log must be true or false, got {self.log!r}")
        if not self.low < self.high:
            self._fail(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            self._fail(f"log needs low > 0, got low = {self.low}")
        if self.step is not None:
            if self.step <= 0:
                self._fail(f"step must be > 0, got {self.step}")
            if self.log:
                self._fail("log and step cannot be combined (Optuna samples either on a log scale or on a grid)")
            if not _on_grid(self.high, self.low, self.step):
                self._fail(f"high - low ({self.high} - {self.low}) must be a multiple of step ({self.step})")

    def contains(self, value: Any) -> bool:
        """Whether `value` is one this parameter can take (e.g. a baseline value)."""
        if self.type == "categorical":
            return _member(value, self.choices)
        number = int if self.type == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, number):
            return False
        return self.low <= value <= self.high and (self.step is None or _on_grid(value, self.low, self.step))

    def active(self, params: Mapping[str, Any]) -> bool:
        """Whether this parameter is sampled, given the values sampled before it."""
        return all(parent in params and _member(params[parent], values) for parent, values in self.when.items())

    def describe(self) -> str:
        """E.g. 'float in [0.001, 0.1], log, when optimizer = sgd' (for notes and error messages)."""
        if self.type == "categorical":
            text = "one of " + ", ".join(map(str, self.choices))
        else:
            text = f"{self.type} in [{self.low}, {self.high}]" + (", log" if self.log else "")
            text += f", step {self.step}" if self.step is not None else ""
        conditions = [f"{parent} = {' or '.join(map(str, values))}" for parent, values in self.when.items()]
        return text + (", when " + " and ".join(conditions) if conditions else "")


def _member(value: Any, choices: Sequence[Choice]) -> bool:
    """`value in choices`, except that True is not 1 (a bool field is not an int field)."""
    return any(value == choice and isinstance(value, bool) == isinstance(choice, bool) for choice in choices)


def _on_grid(value: float, low: float, step: float) -> bool:
    steps = (value - low) / step
    return math.isclose(steps, round(steps), abs_tol=1e-9)


def suggest(trial: optuna.Trial, space: Sequence[Param]) -> dict[str, Any]:
    """Sample the space in definition order; a param whose `when` does not hold is left out."""
    params: dict[str, Any] = {}
    for param in space:
        if not param.active(params):
            continue
        if param.type == "float":
            params[param.name] = trial.suggest_float(param.name, param.low, param.high, step=param.step, log=param.log)
        elif param.type == "int":
            params[param.name] = trial.suggest_int(param.name, param.low, param.high, step=param.step or 1,
                                                   log=param.log)
        else:
            params[param.name] = trial.suggest_categorical(param.name, list(param.choices))
    return params


def condition_key(choice: Choice) -> str:
    """How a spec names a categorical value as a TOML key and in a parameter name: sgd, 16, true."""
    return str(choice).lower() if isinstance(choice, bool) else str(choice)


def train_overrides(space: Sequence[Param], params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's params (Optuna names) as TrainConfig overrides (field names): `lr[sgd]` sets `lr`.

    Every path from params to a config goes through here: the objective, the seeded
    trials, finalize. A name the space does not know is passed on as it is (and
    TrainConfig rejects it if it is no field).
    """
    fields = {param.name: param.field for param in space}
    return {fields.get(name, name): value for name, value in params.items()}


def trial_params(space: Sequence[Param], values: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse, for a point given by field values (a baseline or a recipe): its Optuna params."""
    return {param.name: values[param.field] for param in space if param.field in values and param.active(values)}


def enqueue_seeded(study: optuna.Study, space: Sequence[Param],
                   seeded: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> None:
    """Queue fixed points, (field values, user attrs) each, as the next trials, in order:
    the baseline (trial 0 of a new study), then the published recipes.

    Idempotent: Optuna skips a point when a trial with the same fixed params exists in any
    state, so resuming a study, or several workers starting at once (the caller holds the
    study's lock), never run one twice.
    """
    for values, user_attrs in seeded:
        study.enqueue_trial(trial_params(space, values), user_attrs=dict(user_attrs), skip_if_exists=True)
