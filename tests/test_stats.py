"""hpo.report.stats against values worked out by hand or from scipy's distributions in the test itself."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from hpo.report import stats


def test_sample_is_mean_sample_std_and_t_interval():
    values = [0.70, 0.74, 0.72, 0.76]
    mean = sum(values) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    half_width = scipy_stats.t.ppf(0.975, 3) * std / math.sqrt(4)  # t_{0.975, 3} = 3.182
    result = stats.sample(values)
    assert (result.n, result.mean, result.std) == (4, pytest.approx(0.73), pytest.approx(0.025819889))
    assert result.ci95 == pytest.approx((mean - half_width, mean + half_width))
    assert result.ci95 == pytest.approx((0.73 - 3.182446 * 0.012909944, 0.73 + 3.182446 * 0.012909944))
    assert result.record() == {"mean": result.mean, "std": result.std, "n": 4, "ci95": list(result.ci95)}


def test_sample_below_two_values_has_no_spread():
    assert stats.sample([]) == stats.Sample(0, None, None, None)
    assert stats.sample([0.5]) == stats.Sample(1, 0.5, None, None)
    assert stats.sample([0.5, 0.5]).ci95 == (0.5, 0.5)


def test_paired_is_the_t_test_on_the_per_seed_differences():
    a, b = [0.71, 0.75, 0.74], [0.70, 0.72, 0.735]
    d = [x - y for x, y in zip(a, b)]  # 0.01, 0.03, 0.005
    mean = sum(d) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / 2)
    t = mean / (sd / math.sqrt(3))
    result = stats.paired(a, b)
    assert (result.n, result.difference, result.std) == (3, pytest.approx(0.015), pytest.approx(sd))
    assert result.p == pytest.approx(2 * scipy_stats.t.sf(abs(t), 2))
    half_width = scipy_stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert result.ci95 == pytest.approx((mean - half_width, mean + half_width))
    assert result.p == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)


def test_sign_flip_p_enumerates_every_sign_assignment():
    d = [0.02, -0.005, 0.03, 0.01, -0.012]
    observed = abs(sum(d))
    flips = list(itertools.product((1, -1), repeat=len(d)))
    extreme = sum(abs(sum(s * x for s, x in zip(signs, d))) >= observed - 1e-12 for signs in flips)
    assert stats.sign_flip_p(d) == pytest.approx(extreme / 32)


def test_three_seeds_can_never_give_a_sign_flip_p_below_a_quarter():
    result = stats.paired([0.80, 0.82, 0.81], [0.50, 0.51, 0.52])  # every seed far better
    assert result.p_permutation == pytest.approx(0.25)  # 2 of the 8 sign assignments are as extreme
    assert result.p < 0.001  # while the t-test, assuming normal seed noise, is decisive
    assert stats.paired([0.1] * 7, [0.0, 0.01, 0.0, 0.02, 0.0, 0.01, 0.0]).p_permutation is None  # n > 6


def test_identical_differences_have_no_noise_to_test_against():
    same = stats.paired([0.6, 0.7], [0.5, 0.6])
    assert (same.p, same.ci95, same.mdd) == (0.0, (pytest.approx(0.1), pytest.approx(0.1)), 0.0)
    assert stats.paired([0.6, 0.7], [0.6, 0.7]).p == 1.0


def test_fewer_than_two_pairs_give_no_test():
    assert stats.paired([0.6], [0.5]) == stats.Paired(1, pytest.approx(0.1), None, None, None, None, None)
    assert stats.paired([], []).difference is None
    with pytest.raises(ValueError):
        stats.paired([0.1, 0.2], [0.1])


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_minimal_detectable_difference_has_80_percent_power(n):
    sd = 0.02
    mdd = stats.minimal_detectable_difference(sd, n)
    critical = scipy_stats.t.ppf(0.975, n - 1)
    noncentrality = mdd * math.sqrt(n) / sd
    power = scipy_stats.nct.sf(critical, n - 1, noncentrality) + scipy_stats.nct.cdf(-critical, n - 1, noncentrality)
    assert power == pytest.approx(0.8, abs=1e-6)
    # close to the usual normal-tail shortcut (t_{0.975} + t_{0.8}) sd / sqrt(n), and above it
    shortcut = (critical + scipy_stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert shortcut < mdd < 1.25 * shortcut if n > 2 else mdd > shortcut


def test_minimal_detectable_difference_by_simulation():
    rng = np.random.default_rng(0)
    mdd = stats.minimal_detectable_difference(1.0, 3)
    d = rng.normal(mdd, 1.0, size=(100_000, 3))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(3))
    assert np.mean(np.abs(t) > scipy_stats.t.ppf(0.975, 2)) == pytest.approx(0.8, abs=0.01)


def test_holm_steps_down_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept at 0.06 (monotone)
    assert stats.holm([0.01, 0.04, 0.03, 0.005, None]) == pytest.approx([0.03, 0.06, 0.06, 0.02, None])
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]
    assert stats.holm([]) == []


@pytest.mark.parametrize(("difference", "p", "expected"), [
    (0.02, 0.01, "better"), (-0.02, 0.01, "worse"), (0.02, 0.05, "inconclusive"), (0.02, None, "inconclusive"),
    (None, None, "inconclusive"),
])
def test_verdict_is_the_sign_when_p_is_below_alpha(difference, p, expected):
    assert stats.verdict(difference, p) == expected


def test_the_verdict_agrees_with_the_interval_excluding_zero():
    for a, b in [([0.71, 0.75, 0.74], [0.70, 0.72, 0.735]), ([0.7, 0.71, 0.69], [0.69, 0.72, 0.70])]:
        result = stats.paired(a, b)
        excludes_zero = result.ci95[0] > 0 or result.ci95[1] < 0
        assert (stats.verdict(result.difference, result.p) != "inconclusive") == excludes_zero


def test_kendall_tau_counts_concordant_pairs():
    search, final = [0.9, 0.8, 0.7, 0.6], [0.75, 0.77, 0.70, 0.65]
    pairs = list(itertools.combinations(range(4), 2))
    concordant = sum((search[i] - search[j]) * (final[i] - final[j]) > 0 for i, j in pairs)  # 5 of 6
    result = stats.kendall(search, final)
    assert result.n == 4 and result.tau == pytest.approx((concordant - (6 - concordant)) / 6)  # 2/3
    assert result.p == pytest.approx(scipy_stats.kendalltau(search, final).pvalue)
    assert stats.kendall([0.5], [0.6]) == stats.RankAgreement(1, None, None)
