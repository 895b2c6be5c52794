"""What the search's trials say about each searched parameter: its effect per value or range, and importance.

Effects: for a categorical parameter, per value; for a float or int one, per tercile
of the values the trials sampled (so each range holds about a third of the trials,
wherever TPE concentrated them). Per group: the trials that reached the first
evaluation (complete and pruned alike) with the median and best score there, and the
complete feasible trials with the median and best final score. The trials are not a
controlled experiment (TPE chose each value given the earlier results, parameters
vary together, pruning cuts the trials low at the first evaluation), so these are
descriptions, not effects in the causal sense; the final table and the ablation are.

Importance: Optuna's default evaluator (PED-ANOVA) over the complete trials, and the same
evaluator over every trial that reached the first evaluation, scored there, so the
survivors of pruning do not decide alone. Both over feasible trials only: a trial never
trained (predicted out of memory, recorded with value 0) or diverged says nothing about
how its values train, and its zero would weigh in the region PED-ANOVA contrasts the top
set with. PED-ANOVA's top set is its `target_quantile` of the trials; Optuna's 0.1 leaves
4 of 40 trials, fewer of the complete ones, so the quantile is raised until the top set
holds at least MIN_TOP_TRIALS (`target_quantile`).

Imports optuna, hpo.space and hpo.trials; hpo.report.analysis, tables and figures read it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.space import Param
from hpo.trials import feasible

FIRST_EVALUATION = 1  # the pruners' step of a trial's first evaluation (EvalResult.point)
BINS = 3
# Optuna 5's default importance evaluator, named so that the report can say which one it used
EVALUATOR = optuna.importance.PedAnovaImportanceEvaluator
EVALUATOR_NAME = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator, Optuna's default)"
DEFAULT_TARGET_QUANTILE = 0.1  # PedAnovaImportanceEvaluator's own
MIN_TOP_TRIALS = 8  # PED-ANOVA fits a Parzen estimator to the top set: a handful of trials at least
MAX_TARGET_QUANTILE = 0.5  # the top set stays the better half, whatever the number of trials


def target_quantile(trials: int) -> float:
    """The share of the trials PED-ANOVA's top set takes: 0.1 (Optuna's default), raised so that it holds
    at least MIN_TOP_TRIALS (0.2 at 40 trials: 8), at most half."""
    return min(MAX_TARGET_QUANTILE, max(DEFAULT_TARGET_QUANTILE, MIN_TOP_TRIALS / max(trials, 1)))


@dataclass(frozen=True)
class Group:
    """The trials whose parameter falls in one value or range."""

    label: str
    first: tuple[float, ...]  # scores at the first evaluation
    final: tuple[float, ...]  # final scores of the complete, feasible trials

    @staticmethod
    def _median(values: Sequence[float]) -> float | None:
        return statistics.median(values) if values else None

    @property
    def median_first(self) -> float | None:
        return self._median(self.first)

    @property
    def median_final(self) -> float | None:
        return self._median(self.final)

    @property
    def best_first(self) -> float | None:
        return max(self.first, default=None)

    @property
    def best_final(self) -> float | None:
        return max(self.final, default=None)


@dataclass(frozen=True)
class Effect:
    param: str
    grouping: str  # "per value" or "per tercile of the sampled values"
    groups: tuple[Group, ...]

    def sentence(self) -> str:
        """The groups with the highest and lowest median at the first evaluation, and how they ended."""
        scored = [g for g in self.groups if g.first]
        if len(scored) < 2:
            return f"`{self.param}`: fewer than two of its {self._noun()} reached the first evaluation; no contrast."
        high = max(scored, key=lambda g: g.median_first)
        low = min(scored, key=lambda g: g.median_first)
        if high.median_first == low.median_first:
            return (f"`{self.param}`: every {self._noun()[:-1]} had the same median at the first evaluation "
                    f"({high.median_first:.3f}); no contrast.")
        text = (f"`{self.param}`: {high.label} had the highest median at the first evaluation, "
                f"{high.median_first:.3f} over {len(high.first)} trials, vs {low.median_first:.3f} over "
                f"{len(low.first)} for {low.label} ({high.median_first - low.median_first:+.3f})")
        if high.final and low.final:
            text += (f"; at the end of the search budget, medians {high.median_final:.3f} ({len(high.final)} "
                     f"complete) vs {low.median_final:.3f} ({len(low.final)})")
        else:
            text += "; at the end, " + " and ".join(f"{g.label} has {len(g.final)} complete trials"
                                                     for g in (high, low))
        return text + "."

    def _noun(self) -> str:
        return "values" if self.grouping == "per value" else "ranges"


def first_score(trial: FrozenTrial) -> float | None:
    value = trial.intermediate_values.get(FIRST_EVALUATION)
    return value if value is not None and math.isfinite(value) else None


def effects(study: optuna.Study, space: Sequence[Param]) -> list[Effect]:
    """One Effect per searched parameter that some trial sampled."""
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
              if first_score(t) is not None]
    out = []
    for param in space:
        sampled = [t for t in trials if param.name in t.params]
        if not sampled:
            continue
        if param.type == "categorical":
            labels = {_label(c): [t for t in sampled if _same(t.params[param.name], c)] for c in param.choices}
            grouping = "per value"
        else:
            labels = _terciles(param, sampled)
            grouping = "per tercile of the sampled values"
        groups = tuple(Group(label, tuple(first_score(t) for t in members),
                             tuple(t.value for t in members if t.state == TrialState.COMPLETE and feasible(t)))
                       for label, members in labels.items() if members)
        out.append(Effect(param.name, grouping, groups))
    return out


def _terciles(param: Param, trials: Sequence[FrozenTrial]) -> dict[str, list[FrozenTrial]]:
    """Ranges cut at the sampled values' terciles (on a log scale for a log parameter), low to high."""
    values = np.array([float(t.params[param.name]) for t in trials])
    scale = np.log(values) if param.log else values
    cuts = np.unique(np.quantile(scale, np.linspace(0, 1, BINS + 1)[1:-1]))
    cuts = cuts[(cuts > scale.min()) & (cuts <= scale.max())]  # a cut at the minimum would leave a range empty
    index = np.searchsorted(cuts, scale, side="right")  # range k holds cut[k-1] <= value < cut[k]
    edges = [values.min(), *(np.exp(cuts) if param.log else cuts), values.max()]
    return {f"[{_label(edges[k])}, {_label(edges[k + 1])}{']' if k == len(cuts) else ')'}":
            [t for t, i in zip(trials, index) if i == k] for k in range(len(cuts) + 1)}


def _label(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float | np.floating) else str(value)


def _same(a: Any, b: Any) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


@dataclass(frozen=True)
class Ranking:
    """Importance of each parameter over `n` trials, or why there is none."""

    trials: str  # which trials, in words
    n: int
    importances: dict[str, float] | None
    problem: str = ""
    target_quantile: float = DEFAULT_TARGET_QUANTILE  # PED-ANOVA's top set: this share of the n trials

    @property
    def top(self) -> int:
        """Trials in PED-ANOVA's top set (ties at its edge aside)."""
        return math.ceil(self.target_quantile * self.n - 1e-9)


def scored_study(scored: Sequence[tuple[FrozenTrial, float]]) -> optuna.Study:
    """An in-memory study of these trials, each with this score as its value."""
    study = optuna.create_study(direction="maximize")
    study.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=value)
                      for t, value in scored])
    return study


def feasible_complete(study: optuna.Study) -> optuna.Study:
    """The study's feasible complete trials, with their final scores: what importance is computed over."""
    return scored_study([(t, t.value) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                         if feasible(t) and math.isfinite(t.value)])


def evaluator(trials: int) -> optuna.importance.PedAnovaImportanceEvaluator:
    return EVALUATOR(target_quantile=target_quantile(trials))


def importances(study: optuna.Study) -> list[Ranking]:
    """EVALUATOR over the feasible complete trials, then over the feasible ones that reached the first
    evaluation (scored there)."""
    reached = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
               if feasible(t) and first_score(t) is not None]
    return [_ranking(feasible_complete(study), "feasible complete trials (final score)"),
            _ranking(scored_study([(t, first_score(t)) for t in reached]),
                     "feasible trials that reached the first evaluation, complete and pruned (score there)")]


def _ranking(study: optuna.Study, trials: str) -> Ranking:
    n = len(study.trials)
    quantile = target_quantile(n)
    try:
        found = optuna.importance.get_param_importances(study, evaluator=evaluator(n))
    except (ValueError, RuntimeError, ZeroDivisionError) as error:
        return Ranking(trials, n, None, " ".join(str(error).split()), quantile)
    if not found:
        return Ranking(trials, n, None, "no parameter varies across these trials", quantile)
    return Ranking(trials, n, found, "", quantile)

