"""Were there enough trials? The expected best search score of n trials (Dodge et al. 2019, "Show Your Work").

Of the search's complete feasible trials' scores v_(1) <= ... <= v_(N), the best of n trials
drawn at random (with replacement) from them is expected to be

    E[max of n] = sum_i v_(i) x ((i / N)^n - ((i - 1) / N)^n),

the curve Dodge et al. report as "expected validation performance". Where it is still rising
at n = N, more trials would likely have found better; where it is flat, they would not. The
search's trials are TPE's, not independent draws, and pruned trials have no final score, so
the curve is a guide to the search's saturation, not an exact law.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import TrialState

from hpo.trials import feasible


def expected_best(values: Sequence[float], n: int) -> float:
    """The expected maximum of `n` draws with replacement from `values`."""
    ordered, count = sorted(values), len(values)
    return sum(v * ((i / count) ** n - ((i - 1) / count) ** n) for i, v in enumerate(ordered, start=1))


def scores(study: optuna.Study) -> list[float]:
    """The final scores of the study's complete feasible trials."""
    return [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)]


def curve(values: Sequence[float]) -> list[tuple[int, float]]:
    """(n, expected best of n trials) for n = 1 .. len(values)."""
    return [(n, expected_best(values, n)) for n in range(1, len(values) + 1)]
