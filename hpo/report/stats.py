"""The statistics of the final table: intervals over seeds, paired comparisons, Holm, Kendall's tau.

Plain functions on lists of floats (scipy.stats underneath), so that they can be
checked against values computed by hand. Nothing here knows about runs or studies:
hpo.report.results and compare call in; this module imports no other hpo module.

A comparison of two configurations pairs their runs by seed (a seed fixes the
initialisation of the head and the data order, so its two runs share part of their
luck) and tests the mean of the per-seed differences:

- paired t-test and its 95% interval (scipy.stats.ttest_rel);
- beside it, for n <= 6, the exact sign-flip permutation p over all 2^n sign
  assignments (scipy.stats.permutation_test): it assumes no normality, but with
  n seeds it can never fall below 2 / 2^n (0.25 at 3 seeds), so the verdict rests
  on the t-test and on seed-to-seed variation being roughly normal;
- the smallest difference these seeds could detect: the exact power of the paired
  t-test from the noncentral t distribution, with the observed sd of differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.8
EXACT_PERMUTATION_MAX_N = 6  # 2^6 = 64 sign assignments; above that, no permutation p is given


@dataclass(frozen=True)
class Sample:
    """One configuration's values over its finished seeds."""

    n: int
    mean: float | None
    std: float | None  # sample standard deviation (ddof 1); None below two values
    ci95: tuple[float, float] | None  # t-interval of the mean; None below two values

    def record(self) -> dict[str, object]:
        return {"mean": self.mean, "std": self.std, "n": self.n,
                "ci95": list(self.ci95) if self.ci95 is not None else None}


def sample(values: Sequence[float]) -> Sample:
    """Mean, sample std and 95% t-interval (mean +/- t_{0.975, n-1} * std / sqrt(n))."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Sample(0, None, None, None)
    mean = float(x.mean())
    if n == 1:
        return Sample(1, mean, None, None)
    std = float(x.std(ddof=1))
    return Sample(n, mean, std, _t_interval(mean, std, n))


def _t_interval(mean: float, std: float, n: int) -> tuple[float, float]:
    if std == 0:
        return (mean, mean)
    low, high = stats.t.interval(1 - ALPHA, n - 1, loc=mean, scale=std / math.sqrt(n))
    return (float(low), float(high))


@dataclass(frozen=True)
class Paired:
    """a - b over the seeds both finished."""

    n: int
    difference: float | None  # mean of the per-seed differences
    std: float | None  # sample std of the differences
    ci95: tuple[float, float] | None
    p: float | None  # two-sided paired t-test
    p_permutation: float | None  # exact two-sided sign-flip p, for 2 <= n <= 6
    mdd: float | None  # smallest |difference| detected with 80% power at alpha 0.05 (observed std)


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """The paired comparison of a[i] with b[i] (the same seed i); fewer than two pairs give only the mean."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = x - y
    n = len(d)
    if n < 2:
        return Paired(n, float(d.mean()) if n else None, None, None, None, None, None)
    mean, std = float(d.mean()), float(d.std(ddof=1))
    if std == 0:  # every seed moved by exactly the same amount: no noise to test against
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(stats.ttest_rel(x, y).pvalue)
    return Paired(n, mean, std, _t_interval(mean, std, n), p,
                  sign_flip_p(d) if n <= EXACT_PERMUTATION_MAX_N else None,
                  minimal_detectable_difference(std, n))


def sign_flip_p(differences: Sequence[float]) -> float:
    """Exact two-sided p of the mean difference over all 2^n sign flips (the null: symmetric about 0)."""
    d = np.asarray(differences, dtype=float)
    result = stats.permutation_test((d,), lambda x, axis=-1: np.mean(x, axis=axis), vectorized=True,
                                    permutation_type="samples", n_resamples=np.inf)
    return float(result.pvalue)


def minimal_detectable_difference(std: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The |mean difference| a two-sided paired t-test on n pairs detects with `power`, given the std of
    the differences: solves P(|T| > t_{1-alpha/2, n-1}) = power for T ~ noncentral t(n-1, delta sqrt(n) / std)."""
    if n < 2:
        return None
    if std == 0:
        return 0.0
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(noncentrality: float) -> float:  # P(T < -c | nc) as P(T > c | -nc): scipy's cdf there can be NaN
        return stats.nct.sf(critical, df, noncentrality) + stats.nct.sf(critical, df, -noncentrality) - power

    high = 2 * critical + 4
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-10)) * std / math.sqrt(n)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment over the p-values given (None: not part of the family, stays None).

    The i-th smallest of m p-values becomes max over j <= i of min(1, (m - j + 1) p_(j)).
    """
    family = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, index) in enumerate(family):
        running = max(running, min(1.0, (len(family) - rank) * p))
        adjusted[index] = running
    return adjusted


def verdict(difference: float | None, p: float | None, alpha: float = ALPHA) -> str:
    """"better" or "worse" (the sign of a - b) when p < alpha, else "inconclusive"."""
    if difference is None or p is None or p >= alpha or difference == 0:
        return "inconclusive"
    return "better" if difference > 0 else "worse"


@dataclass(frozen=True)
class RankAgreement:
    n: int
    tau: float | None  # Kendall's tau-b; None below two pairs
    p: float | None


def kendall(x: Sequence[float], y: Sequence[float]) -> RankAgreement:
    """Kendall's tau-b between two scorings of the same items, with its two-sided p (scipy.stats.kendalltau)."""
    if len(x) != len(y):
        raise ValueError(f"rank agreement needs paired scores, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return RankAgreement(len(x), None, None)
    result = stats.kendalltau(x, y)
    tau, p = float(result.statistic), float(result.pvalue)
    return RankAgreement(len(x), None if math.isnan(tau) else tau, None if math.isnan(p) else p)
