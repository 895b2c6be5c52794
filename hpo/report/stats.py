"""The statistics of the final table: intervals over seeds, paired comparisons, Holm, Kendall's tau, and the
paired bootstrap over val images.

Plain functions on lists of floats and count arrays (scipy.stats and numpy underneath), so that they can be
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
- where every seed moved by the same amount (no spread), the t statistic is undefined:
  no t p and no t-interval are given, and the exact sign-flip p decides alone (2 / 2^n:
  0.5 at 2 seeds), so identical differences at a few seeds stay inconclusive;
- the smallest difference these seeds could detect: the exact power of the paired
  t-test from the noncentral t distribution, with the observed sd of differences, at
  the level the verdict uses (alpha / m for a Holm family of m, Holm's first step).

The seed interval says how much training noise moves a difference; the paired bootstrap
over val images (`paired_bootstrap`) says how much the choice of val images does.
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
# a spread of the per-seed differences below this (x max(1, |mean|)) is float rounding, not noise: one pixel
# of VOC val moves an mIoU by ~1e-9, so identical differences computed in floats are treated as identical
NO_SPREAD = 1e-12
EXACT_KENDALL_MAX_N = 6  # with ties, the exact permutation p enumerates n! orderings: 720 at 6, ~1 s
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed: the same runs give the same interval on every rerun of the report


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
    ci95: tuple[float, float] | None  # t-interval; None below two pairs or with no spread
    p: float | None  # two-sided paired t-test; None below two pairs or with no spread (t undefined)
    p_permutation: float | None  # exact two-sided sign-flip p: 2 <= n <= 6, or any n with no spread
    mdd: float | None  # smallest |difference| detected with 80% power at mdd_alpha (observed std)
    mdd_alpha: float = ALPHA

    @property
    def no_spread(self) -> bool:
        """Every seed moved by the same amount: no noise to test against."""
        return self.n >= 2 and self.p is None

    @property
    def p_decisive(self) -> float | None:
        """The p a verdict rests on: the t-test's, or the exact sign-flip p where the t-test is undefined."""
        return self.p_permutation if self.no_spread else self.p


def paired(a: Sequence[float], b: Sequence[float], mdd_alpha: float = ALPHA) -> Paired:
    """The paired comparison of a[i] with b[i] (the same seed i); fewer than two pairs give only the mean.

    `mdd_alpha` is the level of the verdict the detectable difference belongs to (alpha / m in a Holm family).
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = x - y
    n = len(d)
    if n < 2:
        return Paired(n, float(d.mean()) if n else None, None, None, None, None, None, mdd_alpha)
    mean, std = float(d.mean()), float(d.std(ddof=1))
    if std <= NO_SPREAD * max(1.0, abs(mean)):
        # the t statistic is 0/0 or d/0: no t p, no interval, no detectable difference; only the two uniform
        # sign assignments reach |mean|, so the exact sign-flip p is 2 / 2^n (1 when every difference is 0)
        return Paired(n, mean, 0.0, None, None, 1.0 if mean == 0 else 2.0 ** (1 - n), None, mdd_alpha)
    return Paired(n, mean, std, _t_interval(mean, std, n), float(stats.ttest_rel(x, y).pvalue),
                  sign_flip_p(d) if n <= EXACT_PERMUTATION_MAX_N else None,
                  minimal_detectable_difference(std, n, mdd_alpha), mdd_alpha)


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


def seeds_needed(difference: float, std: float, alpha: float = ALPHA, power: float = POWER,
                 most: int = 30) -> int | None:
    """The fewest seeds at which a paired t-test detects |difference| with `power` at `alpha`, given the
    std of the per-seed differences (as minimal_detectable_difference); None if more than `most` would."""
    for n in range(2, most + 1):
        if minimal_detectable_difference(std, n, alpha, power) <= abs(difference):
            return n
    return None


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment over a planned family of m = len(pvalues) comparisons.

    The i-th smallest p becomes max over j <= i of min(1, (m - j + 1) p_(j)). A comparison without a p (None:
    fewer than two shared seeds) stays None but still counts in m, as if its p were 1: the family is what was
    planned, not what happened to finish, which is the conservative choice.
    """
    family = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, index) in enumerate(family):
        running = max(running, min(1.0, (len(pvalues) - rank) * p))
        adjusted[index] = running
    return adjusted


def verdict(difference: float | None, p: float | None, alpha: float = ALPHA) -> str:
    """"better" or "worse" (the sign of a - b) when p < alpha, else "inconclusive"."""
    if difference is None or p is None or p >= alpha or difference == 0:
        return "inconclusive"
    return "better" if difference > 0 else "worse"


KENDALL_EXACT = "exact (scipy.stats.kendalltau, method='exact')"
KENDALL_PERMUTATION = "exact permutation over all n! orderings (ties present)"
KENDALL_ASYMPTOTIC = "asymptotic normal approximation (ties present, n > 6)"


@dataclass(frozen=True)
class RankAgreement:
    n: int
    tau: float | None  # Kendall's tau-b; None below two pairs or when either side is all tied
    p: float | None  # two-sided
    method: str = ""  # how p was computed: KENDALL_EXACT, KENDALL_PERMUTATION or KENDALL_ASYMPTOTIC

    @property
    def p_floor(self) -> float | None:
        """The smallest two-sided p any ordering of n untied points can reach: 2 / n! (0.083 at 4, 0.017 at 5)."""
        return None if self.n < 2 else min(1.0, 2 / math.factorial(self.n))


def kendall(x: Sequence[float], y: Sequence[float]) -> RankAgreement:
    """Kendall's tau-b between two scorings of the same items, with its exact two-sided p.

    Without ties, scipy's exact null distribution; with ties (where scipy's exact method does not apply and
    its default falls back to the normal approximation, poor at n this small), the exact permutation
    distribution of tau-b over every pairing of x with y, up to n = 6; above that, the approximation.
    """
    if len(x) != len(y):
        raise ValueError(f"rank agreement needs paired scores, got {len(x)} and {len(y)}")
    n = len(x)
    if n < 2:
        return RankAgreement(n, None, None)
    tau = float(stats.kendalltau(x, y).statistic)
    if math.isnan(tau):
        return RankAgreement(n, None, None)
    if len(set(x)) == n and len(set(y)) == n:
        return RankAgreement(n, tau, float(stats.kendalltau(x, y, method="exact").pvalue), KENDALL_EXACT)
    if n > EXACT_KENDALL_MAX_N:
        return RankAgreement(n, tau, float(stats.kendalltau(x, y).pvalue), KENDALL_ASYMPTOTIC)
    fixed = np.asarray(x, dtype=float)  # one sample, "pairings": every order of y against x, n! of them
    result = stats.permutation_test((np.asarray(y, dtype=float),), lambda v: stats.kendalltau(fixed, v).statistic,
                                    permutation_type="pairings", n_resamples=np.inf)
    return RankAgreement(n, tau, float(min(1.0, result.pvalue)), KENDALL_PERMUTATION)


# --- test-set uncertainty: the paired bootstrap over val images

@dataclass(frozen=True)
class Bootstrap:
    """a - b of the seed-mean mIoU, with its 95% percentile interval over resampled val images."""

    difference: float  # on the images as they are: the mean over runs of a's mIoU minus b's
    ci95: tuple[float, float]
    runs: int  # runs per arm averaged (the seeds both have counts for)
    images: int
    resamples: int = BOOTSTRAP_RESAMPLES
    seed: int = BOOTSTRAP_SEED

    def record(self) -> dict[str, object]:
        return {"difference": self.difference, "ci95": list(self.ci95), "runs": self.runs, "images": self.images,
                "resamples": self.resamples, "seed": self.seed}


def miou_from_counts(counts: np.ndarray) -> np.ndarray:
    """(..., classes, 3) pixel counts of TP, FP, FN -> mIoU (...): TP / (TP + FP + FN) averaged over the classes
    with a non-empty union, as segtrain.metrics.ConfusionMatrix scores one matrix (0 where no class is present)."""
    counts = np.asarray(counts, dtype=float)
    union = counts.sum(axis=-1)
    present = union > 0
    iou = np.divide(counts[..., 0], union, out=np.zeros_like(union), where=present)
    return iou.sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def resampled_images(images: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(resamples, images) image indices drawn with replacement: row r is the r-th resampled val set."""
    return np.random.default_rng(seed).integers(0, images, size=(resamples, images))


def paired_bootstrap(a: Sequence[np.ndarray], b: Sequence[np.ndarray], resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> Bootstrap:
    """The paired bootstrap over val images of the seed-mean mIoU difference.

    a[i], b[i]: per-image counts (images x classes x 3: TP, FP, FN) of each arm's i-th run, on the same images
    in the same order. Each resample draws the images with replacement once, for every run of both arms (so
    the arms are compared on the same images); each run's mIoU is recomputed from its counts summed over the
    drawn images, and averaged over the arm's runs. The interval is the 2.5th and 97.5th percentile of a - b.
    """
    if not a or len(a) != len(b):
        raise ValueError(f"a paired bootstrap needs the same number of runs per arm, got {len(a)} and {len(b)}")
    images = a[0].shape[0]
    if any(run.shape != a[0].shape for run in (*a, *b)):
        raise ValueError("the runs' per-image counts differ in shape: not the same images")
    drawn = resampled_images(images, resamples, seed)
    weights = np.zeros((resamples, images))
    np.add.at(weights, (np.arange(resamples)[:, None], drawn), 1.0)  # how often each image was drawn

    def mean_miou(runs: Sequence[np.ndarray]) -> np.ndarray:
        return np.mean([miou_from_counts(np.tensordot(weights, run.astype(float), axes=(1, 0))) for run in runs],
                       axis=0)

    differences = mean_miou(a) - mean_miou(b)
    observed = float(np.mean([miou_from_counts(run.sum(axis=0)) for run in a])
                     - np.mean([miou_from_counts(run.sum(axis=0)) for run in b]))
    low, high = np.percentile(differences, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return Bootstrap(observed, (float(low), float(high)), len(a), images, resamples, seed)
