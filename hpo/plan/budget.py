"""A study's budget in device-hours: the largest plan that fits one, and what a search has left of it.

The cut (`hpo.plan --budget-hours H`) shrinks the plan one knob at a time, each as
little as fits, in this order:

1. finalize epochs, down to half the spec's (and never below twice a search trial's):
   a full-budget run's accuracy saturates (mmsegmentation's DeepLabV3 on VOC gains
   about a point from 20k to 40k iterations, docs/results.md), and these are the
   largest item of the bill;
2. seeds, down to 3: the fewest that give a mean and a spread;
3. top_k, down to 4: fewer final candidates make it likelier that the short-budget
   ranking's true best is missed;
4. trials, down to the seeded ones + the sampler's startup trials + 10 guided ones: the
   search is what the study is for, so it is cut last;

then, if that is still too much, the same knobs to their hard floors (finalize epochs
to a search trial's, top_k to 1, trials to the seeded ones + 1). A budget below the
smallest of those plans, or below one trial, is refused as bad input.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.plan.cost import CostModel, TrialPricer
from hpo.plan.estimate import Estimator, Plan
from hpo.plan.probe import matching_probe, probe_path
from hpo.space import train_overrides
from hpo.spec import StudySpec
from hpo.trials import committed_seconds, spent_seconds
from segtrain.device import resolve_device
from segtrain.errors import UserError
from segtrain.fileio import write_text_atomic
from segtrain.profile import device_name

log = logging.getLogger(__name__)

GUIDED_TRIALS = 10  # trials after the sampler's startup ones that the cut keeps at least
MIN_SEEDS = 3
MIN_TOP_K = 4


@dataclasses.dataclass(frozen=True)
class Cut:
    """A plan that fits a budget, and what was cut to get there (empty: nothing needed cutting)."""

    plan: Plan
    cuts: tuple[str, ...]
    search_budget_hours: float  # what is left for the search once finalize is paid for (to 0.01 h, down)


def fit_budget(estimator: Estimator, hours: float, trials: int | None = None) -> Cut:
    """The largest plan within `hours`, starting from `trials` (default: [study] trials) and the
    spec's [finalize] (see the module's doc for the order); UserError if none fits."""
    require_one_trial(estimator, hours)
    spec = estimator.spec
    search_epochs = spec.train_config().epochs
    sizes = {"trials": trials or spec.study.trials, "top_k": spec.finalize.top_k, "seeds": len(spec.finalize.seeds),
             "epochs": spec.finalize.epochs}
    startup = spec.sampler.args.get("n_startup_trials", 10 if spec.sampler.type == "tpe" else 0)
    seeded = len(spec.seeded_trials())
    soft = {"epochs": max(2 * search_epochs, sizes["epochs"] / 2), "seeds": MIN_SEEDS, "top_k": MIN_TOP_K,
            "trials": max(seeded, startup) + GUIDED_TRIALS}
    hard = {"epochs": search_epochs, "seeds": MIN_SEEDS, "top_k": 1, "trials": seeded + 1}

    def plan(values: Mapping[str, float]) -> Plan:
        return estimator.plan(int(values["trials"]), int(values["top_k"]), spec.finalize.seeds[:int(values["seeds"])],
                              values["epochs"])

    current = dict(sizes)
    for floors in (soft, hard):
        for knob in ("epochs", "seeds", "top_k", "trials"):
            if plan(current).total_hours <= hours:
                break
            for value in _candidates(current[knob], min(floors[knob], current[knob])):
                current[knob] = value
                if plan(current).total_hours <= hours:
                    break
    final = plan(current)
    if final.total_hours > hours:
        raise UserError(f"--budget-hours {hours:g}: smaller than the smallest plan the cut reaches "
                        f"({final.total_hours:.3g} h: {final.trials} trials, top_k {final.top_k}, "
                        f"{len(final.seeds)} seeds, {final.epochs:g} final epochs); give a larger budget")
    names = {"epochs": "[finalize] epochs", "seeds": "[finalize] seeds", "top_k": "[finalize] top_k",
             "trials": "trials"}  # in the order of the cut
    cuts = [f"{name} {sizes[knob]:g} -> {current[knob]:g}" for knob, name in names.items()
            if current[knob] != sizes[knob]]
    return Cut(final, tuple(cuts), math.floor((hours - final.finalize_hours) * 100) / 100)


def require_one_trial(estimator: Estimator, hours: float) -> None:
    """A budget below the study's first trial is bad input."""
    if hours < estimator.one_trial_hours:
        raise UserError(f"--budget-hours {hours:g}: smaller than one trial ({estimator.one_trial_hours:.3g} h on "
                        f"{estimator.model.probe.device}); give a larger budget")


def _candidates(start: float, floor: float) -> Iterator[float]:
    """start, then whole numbers down to floor, then floor itself."""
    value = math.ceil(start) - 1 if start != math.ceil(start) else start - 1
    while value > floor:
        yield value
        value -= 1
    yield floor


def cut_spec_text(text: str, cut: Cut) -> str:
    """The spec file's text with the cut plan's sizes and the search's budget (comments kept)."""
    plan = cut.plan
    return edit_toml(text, {
        "study": {"trials": plan.trials, "budget_hours": cut.search_budget_hours},
        "finalize": {"top_k": plan.top_k, "seeds": list(plan.seeds), "epochs": float(plan.epochs)},
    })


def write_cut_spec(source: Path, out: Path, cut: Cut) -> Path:
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"{source}: cannot read the study spec: {error.strerror}") from None
    try:
        return write_text_atomic(out, cut_spec_text(text, cut))
    except OSError as error:
        raise UserError(f"--out {out}: cannot write it ({error.strerror})") from None


def edit_toml(text: str, changes: Mapping[str, Mapping[str, Any]]) -> str:
    """`text` with `changes` = {section: {key: value}} set, every other line as it was.

    A key on one line is rewritten in place, its comment kept; a missing key goes right
    under its section's header, a missing section at the end. The result is parsed
    again and must hold exactly the old values plus the changes.
    """
    lines = text.splitlines(keepends=True)
    for section, values in changes.items():
        for key, value in values.items():
            lines = _set_key(lines, section, key, _toml_value(value))
    edited = "".join(lines)
    expected = tomllib.loads(text)
    for section, values in changes.items():
        expected.setdefault(section, {}).update(values)
    if tomllib.loads(edited) != expected:
        raise ValueError("editing the spec changed more than the keys asked for")
    return edited


def _set_key(lines: list[str], section: str, key: str, value: str) -> list[str]:
    header = next((i for i, line in enumerate(lines) if re.fullmatch(rf"\s*\[{re.escape(section)}\]\s*(#.*)?",
                                                                      line.rstrip("\n"))), None)
    if header is None:
        ending = "" if not lines or lines[-1].endswith("\n") else "\n"
        return [*lines, f"{ending}\n[{section}]\n", f"{key} = {value}\n"]
    end = next((i for i in range(header + 1, len(lines)) if re.match(r"\s*\[", lines[i])), len(lines))
    for index in range(header + 1, end):
        match = re.match(rf"(\s*){re.escape(key)}\s*=", lines[index])
        if match:
            comment = _comment(lines[index].rstrip("\n"), key)
            lines[index] = f"{match.group(1)}{key} = {value}{comment}\n"
            return lines
    return [*lines[:header + 1], f"{key} = {value}\n", *lines[header + 1:]]


def _comment(line: str, key: str) -> str:
    """The trailing comment of a one-line `key = value` (with the spaces before it), or ""."""
    for match in re.finditer("#", line):
        try:
            if key in tomllib.loads(line[:match.start()]):
                return " " * (len(line[:match.start()]) - len(line[:match.start()].rstrip())) + line[match.start():]
        except tomllib.TOMLDecodeError:
            continue
    return ""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r} here")


@dataclasses.dataclass(frozen=True)
class SearchBudget:
    """The device-hours a search may spend, all workers together, and how to price its next trial."""

    hours: float
    pricer: TrialPricer
    cheapest_seconds: float  # the cheapest trial that fits: with less left, nothing can start

    def left_seconds(self, study: optuna.Study) -> float:
        return self.hours * 3600 - spent_seconds(study) - committed_seconds(study)

    def stop_reason(self, study: optuna.Study, spec: StudySpec) -> str | None:
        """Why no further trial can start (the next queued one, or any, costs more than is left), or None."""
        left = self.left_seconds(study)
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if waiting:  # Optuna runs the oldest queued trial next
            params = waiting[0].params or waiting[0].system_attrs.get("fixed_params", {})
            need = self.pricer.seconds(spec.train_config(train_overrides(spec.space, params)).to_dict())
            what = f"the next trial (queued as {waiting[0].number})"
        else:
            need, what = self.cheapest_seconds, "the cheapest trial of the space"
        if need <= left:
            return None
        return (f"budget: {what} needs ~{need / 3600:.2f} h and {max(0.0, left) / 3600:.2f} h are left of "
                f"{self.hours:g} h ({spent_seconds(study) / 3600:.2f} h spent); rerun with a larger "
                f"--budget-hours to go on")


def trial_pricer(spec: StudySpec, budget_hours: float | None) -> tuple[TrialPricer | None, SearchBudget | None]:
    """The search's pricing from the spec's probe (None without one), and its budget if it has one.

    A budget needs the probe; a budget below one trial is bad input.
    """
    probe, why_not = matching_probe(spec)
    if probe is None:
        if budget_hours is not None:
            raise UserError(f"{spec.path}: a budget needs the probe of this spec ({why_not}); run python -m "
                            f"hpo.plan --study {spec.path} first, with the same --output-dir if any")
        if "other corners" in why_not:
            log.warning("%s: ignored; run python -m hpo.plan again to predict memory", why_not)
        return None, None
    here = device_name(resolve_device(spec.train_config().device))
    if probe.device != here:
        log.warning("the probe in %s was made on %s, and this is %s: memory and cost are predicted for %s",
                    probe_path(spec), probe.device, here, probe.device)
    estimator = Estimator(spec, CostModel(probe))
    if budget_hours is None:
        return estimator.pricer, None
    require_one_trial(estimator, budget_hours)
    return estimator.pricer, SearchBudget(budget_hours, estimator.pricer, estimator.cheapest_trial_seconds)
