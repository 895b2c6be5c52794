"""load_spec: a study file (studies/*.toml) read into a StudySpec, every mistake found before any trial runs.

Every mistake a user can make in a spec is reported at load time as one line naming
the file, section and key, so a long search never dies at trial 17 on a typo. Fixed
and searched TrainConfig values are checked by building TrainConfigs, and sampler and
pruner arguments by building Optuna's own classes: no second copy of their rules.

Split from the dataclasses it fills (hpo.spec.sections) because reading TOML tables into
them, with their conditions and error locations, is a job of its own; imports them,
hpo.space and segtrain.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import optuna

from hpo.space import Param, condition_key
from hpo.spec.sections import (Ablation, Component, FinalizeOptions, Multiple, Recipe, ScratchRecipe, StudyOptions,
                               StudySpec, is_of)
from segtrain.config import TrainConfig, field_names, field_type
from segtrain.errors import ConfigError, UserError

SECTIONS = ("study", "train", "space", "sampler", "pruner", "baseline", "recipes", "finalize")
PARAM_OPTIONS = ("type", "low", "high", "log", "step", "choices", "when", "by", "ranges")

SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "gp": optuna.samplers.GPSampler,
}
PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "threshold": optuna.pruners.ThresholdPruner,  # e.g. lower = 0.05: stop what stays at background level
    "none": optuna.pruners.NopPruner,
}
# Where a spec's defaults differ from Optuna's; the spec's own arguments override them.
# TPE: Optuna 5 is multivariate already; group=True also models conditional params
# (momentum only for sgd) jointly within the trials where they exist.
SAMPLER_DEFAULTS: dict[str, dict[str, Any]] = {"tpe": {"multivariate": True, "group": True}}
# median: trials report at evaluations 1..eval_points; skip the first, where nearly
# every model still predicts background and the ranking is noise.
PRUNER_DEFAULTS: dict[str, dict[str, Any]] = {"median": {"n_warmup_steps": 2}}

_Section = TypeVar("_Section", "StudyOptions", "FinalizeOptions")
_TOML_KINDS: dict[str, type | None] = {"bool": bool, "int": int, "float": float, "str": str, "None": None}


def _unknown(what: str, key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown {what}" + (f" (did you mean '{close[0]}'?)" if close else "")


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


# TrainConfig fields every configuration of a study shares: where the data is, how it runs, its seed
SHARED_FIELDS = ("data_root", "train_split", "val_split", "device", "workers", "eval_batch_size", "seed")
# [finalize.scratch]: the TrainConfig fields the arm or another key sets, and where to set them instead
SCRATCH_SET_ELSEWHERE = {
    "backbone": "the arm is ResNet-101",
    "pretrained": "the arm trains from random initialisation",
    "lr": "set lr_multiplier (x the best configuration's lr) instead",
    "epochs": "set epochs_multiplier (x [finalize] epochs) instead",
    "warmup_epochs": "set warmup_fraction (of the arm's epochs) instead",
}



def load_spec(path: str | Path, sections: Mapping[str, dict[str, Any]] | None = None) -> StudySpec:
    """Read and validate a study file; any problem is a one-line UserError naming file, section and key.

    `sections` replace whole sections of the file (e.g. a benchmark's own [study]
    and [pruner]) before validation, so they are checked like the file's own.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"{path}: cannot read the study spec: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid TOML: {_one_line(error)}") from None
    data.update(sections or {})
    for section, table in data.items():
        if section not in SECTIONS:
            raise UserError(f"{path}: [{section}]: {_unknown('section', section, SECTIONS)}")
        if not isinstance(table, dict):
            raise UserError(f"{path}: [{section}]: must be a table (a [{section}] header and its keys)")
    tables: dict[str, dict[str, Any]] = {section: data.get(section, {}) for section in SECTIONS}
    if not tables["space"]:
        raise UserError(f"{path}: [space]: no parameters; a study searches at least one TrainConfig field")

    with _located(path, "study"):
        study = _build(StudyOptions, tables["study"], name=path.stem)
    with _located(path, "train"):
        base = TrainConfig.from_dict(tables["train"])
    with _located(path, "space"):
        space: list[Param] = []
        for param_name, options in tables["space"].items():
            space += _parse_param(param_name, options, tables["train"], base, space)
    with _located(path, "sampler"):
        sampler = _component(tables["sampler"], SAMPLERS, SAMPLER_DEFAULTS, "tpe", seed=study.seed)
    with _located(path, "pruner"):
        pruner = _component(tables["pruner"], PRUNERS, PRUNER_DEFAULTS, "median")
    with _located(path, "baseline"):
        baseline = _parse_point(tables["baseline"], space, tables["train"])
    recipes = _parse_recipes(path, tables["recipes"], space, tables["train"], baseline)
    finalize = _parse_finalize(path, tables["finalize"], base, "epochs" in tables["space"])
    if finalize.ablation.factors and finalize.ablation.around == "baseline" and not baseline:
        raise UserError(f'{path}: [finalize.ablation] around: "baseline" needs a [baseline] recipe to centre on')
    return StudySpec(path, study, dict(tables["train"]), tuple(space), sampler, pruner, baseline, finalize,
                     recipes)


@contextmanager
def _located(path: Path, section: str) -> Iterator[None]:
    """Turn a ConfigError raised while reading `section` into one line naming file, section and key."""
    try:
        yield
    except ConfigError as error:
        raise UserError(f"{path}: [{section}] {error.key}: {error.problem}") from None


def _parse_finalize(path: Path, table: Mapping[str, Any], base: TrainConfig, epochs_searched: bool) -> FinalizeOptions:
    """[finalize] and its sub-tables [finalize.scratch] and [finalize.ablation], each error naming its table."""
    table = dict(table)
    subtables = {name: table.pop(name, {}) for name in ("scratch", "ablation")}
    with _located(path, "finalize"):
        for name, subtable in subtables.items():
            if not isinstance(subtable, dict):
                raise ConfigError(name, f"must be a table (a [finalize.{name}] header and its keys), got {subtable!r}")
        finalize = _build(FinalizeOptions, table)
        if not epochs_searched and finalize.epochs < base.epochs:
            raise ConfigError("epochs", f"{finalize.epochs:g} is below the search budget ([train] epochs = "
                                        f"{base.epochs:g}); finalize retrains at full budget")
    with _located(path, "finalize.scratch"):
        scratch = _parse_scratch(subtables["scratch"], base)
    with _located(path, "finalize.ablation"):
        ablation = _parse_ablation(subtables["ablation"], base)
    return dataclasses.replace(finalize, scratch=scratch, ablation=ablation)


def _parse_scratch(table: Mapping[str, Any], base: TrainConfig) -> ScratchRecipe:
    """Its own keys, then any other TrainConfig field as an override of the best configuration's recipe."""
    own = [f.name for f in dataclasses.fields(ScratchRecipe) if f.name != "overrides"]
    overrides = dict(ScratchRecipe().overrides)
    for key, value in table.items():
        if key in own:
            continue
        if key not in field_names():
            raise ConfigError(key, _unknown("setting or TrainConfig field", key, own + field_names()))
        if key in SCRATCH_SET_ELSEWHERE:
            raise ConfigError(key, SCRATCH_SET_ELSEWHERE[key])
        if key in SHARED_FIELDS or key.startswith("synthetic"):
            raise ConfigError(key, "is shared by every configuration: set it in [train] or [finalize]")
        overrides[key] = _checked_value(key, value, base)
    return ScratchRecipe(**{key: table[key] for key in own if key in table}, overrides=overrides)


def _parse_ablation(table: Mapping[str, Any], base: TrainConfig) -> Ablation:
    """around, budget, then field = [values]: each a value TrainConfig accepts for that field (or, for a
    float field, a multiple of the centre's: "x3", "x1/3"), none repeated."""
    own = {key: table[key] for key in ("around", "budget") if key in table}
    factors: dict[str, tuple[Any, ...]] = {}
    for key, values in table.items():
        if key in own:
            continue
        if key not in field_names():
            raise ConfigError(key, _unknown("setting or TrainConfig field", key, ["around", "budget", *field_names()]))
        if key in SHARED_FIELDS or key.startswith("synthetic"):
            raise ConfigError(key, "is shared by every configuration, so it cannot be ablated")
        if not isinstance(values, list) or not values:
            raise ConfigError(key, f"must be a non-empty list of values, e.g. output_stride = [8, 16], got {values!r}")
        checked = tuple(_factor_value(key, value, base) for value in values)
        if len(set(map(repr, checked))) < len(checked):
            raise ConfigError(key, f"repeats a value: {values}")
        factors[key] = checked
    return Ablation(**own, factors=factors)


def _factor_value(key: str, value: Any, base: TrainConfig) -> Any:
    """A value of the field, or "xA" / "xA/B" (a float field only): that multiple of the centre's value."""
    if not (isinstance(value, str) and value.startswith("x") and field_type(key) is float):
        return _checked_value(key, value, base)
    found = re.fullmatch(r"x(\d+(?:\.\d+)?)(?:/(\d+(?:\.\d+)?))?", value)
    factor = float(found.group(1)) / float(found.group(2) or 1) if found else 0.0
    if not factor > 0:
        raise ConfigError(key, f"{value!r}: a multiple of the centre's value is written x3 or x1/3")
    return Multiple(factor, value)


def _checked_value(key: str, value: Any, base: TrainConfig) -> Any:
    """`value` as the field's type, if TrainConfig accepts it (its ConfigError names the key otherwise)."""
    value = _as_field(value, field_type(key))
    base.replace(**{key: value})
    return value


def _build(cls: type[_Section], table: Mapping[str, Any], **defaults: Any) -> _Section:
    known = [field.name for field in dataclasses.fields(cls)]
    for key in table:
        if key not in known:
            raise ConfigError(key, _unknown("setting", key, known))
    return cls(**{**defaults, **table})


def _parse_param(name: str, options: Any, fixed: Mapping[str, Any], base: TrainConfig,
                 earlier: Sequence[Param]) -> list[Param]:
    """One [space] entry: its shape, then its fit to the TrainConfig field, then its `when` parents.

    An entry with `by` and `ranges` is one Optuna parameter per range (see hpo.space),
    and any mistake in it is reported under the entry's own name.
    """
    if name not in field_names():
        raise ConfigError(name, _unknown("TrainConfig field", name, field_names()))
    if name in fixed:
        raise ConfigError(name, "is also fixed in [train]; a field is either fixed or searched")
    if not isinstance(options, dict):
        raise ConfigError(name, 'must be a table, e.g. {type = "float", low = 0.001, high = 0.1, log = true}')
    for key in options:
        if key not in PARAM_OPTIONS:
            raise ConfigError(name, f"{key}: {_unknown('option', key, PARAM_OPTIONS)}")
    if "type" not in options:
        raise ConfigError(name, 'type is required: "float", "int" or "categorical"')
    when = options.get("when", {})
    if not isinstance(when, dict):
        raise ConfigError(name, f'when must be a table, e.g. when = {{optimizer = "sgd"}}, got {when!r}')
    choices = options.get("choices", [])
    if not isinstance(choices, list):
        raise ConfigError(name, f"choices must be a list, got {choices!r}")
    kind = field_type(name)
    shape = dict(type=options["type"], log=options.get("log", False),
                 choices=tuple(_as_field(choice, kind) for choice in choices),
                 when={key: tuple(v) if isinstance(v, list) else (v,) for key, v in when.items()},
                 **{key: _as_field(options[key], kind) for key in ("low", "high", "step") if key in options})
    if "by" not in options and "ranges" not in options:
        params = [Param(name=name, **shape)]
    else:
        params = _per_condition(name, options, shape, kind, earlier)
    for param in params:
        try:
            _check_field(param, kind, base)
            _check_when(param, earlier)
        except ConfigError as error:
            raise ConfigError(name, _within(param, error.problem)) from None
    return params


def _per_condition(name: str, options: Mapping[str, Any], shape: dict[str, Any], kind: type,
                   earlier: Sequence[Param]) -> list[Param]:
    """`by = "optimizer", ranges = {sgd = [low, high], ...}`: one Param `name[sgd]` per range,
    sampled when optimizer = "sgd"."""
    example = 'e.g. by = "optimizer", ranges = {sgd = [1e-3, 3e-2], adamw = [1e-5, 1e-3]}'
    by, ranges = options.get("by"), options.get("ranges")
    if by is None or ranges is None:
        raise ConfigError(name, f"by and ranges go together ({example})")
    if shape["type"] not in ("float", "int"):
        raise ConfigError(name, f"by and ranges apply to float and int parameters, not {shape['type']!r}")
    for key in ("low", "high"):
        if key in shape:
            raise ConfigError(name, f"{key} goes inside ranges when by is given ({example})")
    parent = next((p for p in earlier if p.name == by and p.type == "categorical"), None)
    if not isinstance(by, str) or parent is None:
        raise ConfigError(name, f"by: {by!r} must be a categorical parameter defined before {name!r}")
    if by in shape["when"]:
        raise ConfigError(name, f"by: {by!r} is also in when; ranges already set a condition on it")
    if not isinstance(ranges, dict) or not ranges:
        raise ConfigError(name, f"ranges must be a table with one [low, high] per value of {by} ({example})")
    keys = {condition_key(choice): choice for choice in parent.choices}
    params = []
    for key, bounds in ranges.items():
        if key not in keys:
            raise ConfigError(name, f"ranges: {key!r} is not among {by}'s choices ({parent.describe()})")
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise ConfigError(name, f"ranges: {key} must be [low, high], got {bounds!r}")
        low, high = (_as_field(bound, kind) for bound in bounds)
        try:
            params.append(Param(name=f"{name}[{key}]", field=name, low=low, high=high,
                                **{**shape, "when": {**shape["when"], by: (keys[key],)}}))
        except ConfigError as error:
            raise ConfigError(name, f"ranges: {key}: {error.problem}") from None
    return params


def _within(param: Param, problem: str) -> str:
    """A problem of one per-condition range, said of its [space] entry: "ranges: sgd: low: ..."."""
    if param.name == param.field:
        return problem
    return f"ranges: {param.name[len(param.field) + 1:-1]}: {problem}"


def _as_field(value: Any, kind: type) -> Any:
    """TOML's 1 is 1.0 for a float field, so Optuna and TrainConfig see one type per param."""
    return float(value) if kind is float and is_of(value, float) else value


def _check_field(param: Param, kind: type, base: TrainConfig) -> None:
    """The param's type suits its field, and TrainConfig accepts its bounds or every choice."""
    if param.type != "categorical" and param.type != kind.__name__:
        fits = f'"{kind.__name__}" or "categorical"' if kind in (int, float) else '"categorical"'
        raise ConfigError(param.name, f'type "{param.type}" does not fit the {kind.__name__} field; use {fits}')
    for choice in param.choices:
        if not is_of(choice, kind):
            raise ConfigError(param.name, f"choices: {choice!r} does not fit the {kind.__name__} field")
    values = ([("choices", choice) for choice in param.choices] if param.type == "categorical"
              else [("low", param.low), ("high", param.high)])
    for label, value in values:
        try:
            base.replace(**{param.field: value})
        except ConfigError as error:
            raise ConfigError(param.name, f"{label}: {error.problem}") from None


def _check_when(param: Param, earlier: Sequence[Param]) -> None:
    for parent, values in param.when.items():
        source = next((p for p in earlier if p.name == parent), None)
        if source is None or source.type != "categorical":
            raise ConfigError(param.name,
                              f"when: {parent!r} must be a categorical parameter defined before {param.name!r}")
        for value in values:
            if not source.contains(value):
                raise ConfigError(param.name, f"when: {value!r} is not among {parent}'s choices ({source.describe()})")


def _component(table: Mapping[str, Any], registry: Mapping[str, type], defaults: Mapping[str, dict[str, Any]],
               default_type: str, **fixed: Any) -> Component:
    """[sampler]/[pruner]: check each argument against the class's signature, then build it once."""
    args = dict(table)
    kind = args.pop("type", default_type)
    if not isinstance(kind, str) or kind not in registry:
        raise ConfigError("type", f"must be one of {', '.join(registry)}, got {kind!r}")
    cls = registry[kind]
    parameters = inspect.signature(cls).parameters
    for key, value in args.items():
        if key in fixed:
            raise ConfigError(key, "is set in [study], for the whole study")
        if key not in parameters:
            raise ConfigError(key, _unknown(f"argument of {cls.__name__}", key, list(parameters)))
        problem = _argument_problem(parameters[key].annotation, value)
        if problem:
            raise ConfigError(key, problem)
    component = Component(kind, cls, {**defaults.get(kind, {}), **args})
    try:
        component.build(**fixed)
    except (TypeError, ValueError) as error:
        culprit = next((key for key in args if _fails(Component(kind, cls, {key: args[key]}), fixed)),
                       ", ".join(component.args))
        raise ConfigError(culprit, f"rejected by {cls.__name__}: {_one_line(error)}") from None
    return component


def _argument_problem(annotation: Any, value: Any) -> str | None:
    """Why `value` cannot go to an Optuna argument annotated `annotation` (annotations are strings there)."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    names = [name.strip() for name in text.split("|")]
    if not all(name in _TOML_KINDS for name in names):
        return f"takes {' | '.join(names)}, which a spec cannot give"
    if not any(is_of(value, _TOML_KINDS[name]) for name in names):
        return f"must be {' or '.join(name for name in names if name != 'None')}, got {value!r}"
    return None


def _fails(component: Component, fixed: Mapping[str, Any]) -> bool:
    try:
        component.build(**fixed)
    except (TypeError, ValueError):
        return True
    return False


def _parse_point(table: Mapping[str, Any], space: Sequence[Param], fixed: Mapping[str, Any],
                 reserved: Sequence[str] = ()) -> dict[str, Any]:
    """[baseline] or a recipe: a value inside the space for every field its choices make active,
    and nothing else. Values are by field (`lr`, even where the space has `lr[sgd]`)."""
    if not table:
        return {}
    fields = list(dict.fromkeys(param.field for param in space))
    for key in table:
        if key not in fields and key not in reserved:
            raise ConfigError(key, _unknown("[space] parameter", key, fields))
    values = {key: _as_field(value, field_type(key)) for key, value in table.items() if key not in reserved}
    for name in fields:
        active = next((param for param in space if param.field == name and param.active(values)), None)
        given = name in values
        if given and active is None:
            described = "; ".join(param.describe() for param in space if param.field == name)
            raise ConfigError(name, f"is not sampled with these values ({described})")
        if active is not None and not given:
            raise ConfigError(name, "missing; a point of the space sets every [space] parameter it activates")
        if given and not active.contains(values[name]):
            raise ConfigError(name, f"{table[name]!r} is outside the space ({active.describe()})")
    TrainConfig.from_dict({**fixed, **values})
    return {name: values[name] for name in fields if name in values}


def _parse_recipes(path: Path, table: Mapping[str, Any], space: Sequence[Param], fixed: Mapping[str, Any],
                   baseline: Mapping[str, Any]) -> tuple[Recipe, ...]:
    """[recipes.NAME] tables: each a point of the space like [baseline], plus its `source`;
    no two seeded points alike (Optuna would run the second one never)."""
    recipes: list[Recipe] = []
    seen = {"[baseline]": dict(baseline)} if baseline else {}
    for name, entry in table.items():
        with _located(path, f"recipes.{name}"):
            if re.fullmatch(r"[\w.-]+", name) is None:
                raise ConfigError("name", f"{name!r} must be letters, digits, '_', '.' or '-'")
            if not isinstance(entry, dict):
                raise ConfigError("source", f"[recipes.{name}] must be a table of a source and the recipe's values")
            source = entry.get("source")
            if not isinstance(source, str) or not source.strip():
                raise ConfigError("source", "required: where the recipe comes from and what was adapted, "
                                            'e.g. source = "mmsegmentation deeplabv3 VOC config; crop 512 -> 513"')
            values = _parse_point(entry, space, fixed, reserved=("source",))
            if not values:
                raise ConfigError("source", "the recipe sets no [space] parameter")
            twin = next((label for label, other in seen.items() if other == values), None)
            if twin is not None:
                raise ConfigError("source", f"the same values as {twin}: a study runs each point once; "
                                            f"remove one of them")
        seen[f"[recipes.{name}]"] = values
        recipes.append(Recipe(name, source.strip(), values))
    return tuple(recipes)
