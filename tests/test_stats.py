"""hpo.report.stats against values worked out by hand or from scipy's distributions in the test itself."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
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


@pytest.mark.parametrize(("n", "sign_flip_p"), [(2, 0.5), (3, 0.25), (7, 2 / 128)])
def test_identical_differences_leave_the_verdict_to_the_exact_sign_flip_p(n, sign_flip_p):
    """Every seed 0.1 better: the t statistic is 0.1 / 0, so no t p, no interval, no detectable difference; of
    the 2^n sign assignments only all-plus and all-minus reach |mean|, so the exact p is 2 / 2^n."""
    a, b = [0.5 + 0.1 * k for k in range(n)], [0.4 + 0.1 * k for k in range(n)]  # floats: differences ~1e-17 apart
    same = stats.paired(a, b)
    assert (same.p, same.ci95, same.mdd, same.std, same.no_spread) == (None, None, None, 0.0, True)
    assert same.difference == pytest.approx(0.1)
    assert same.p_permutation == same.p_decisive == pytest.approx(sign_flip_p)
    if n <= stats.EXACT_PERMUTATION_MAX_N:
        assert same.p_permutation == pytest.approx(stats.sign_flip_p([x - y for x, y in zip(a, b)]))
    assert stats.verdict(same.difference, same.p_decisive) == "inconclusive" if n < 6 else "better"


def test_no_difference_at_all_has_p_one():
    none = stats.paired([0.6, 0.7], [0.6, 0.7])
    assert (none.p, none.p_permutation, none.difference) == (None, 1.0, 0.0)


def test_a_real_spread_keeps_the_t_test():
    result = stats.paired([0.6, 0.7, 0.65], [0.5, 0.6, 0.56])  # differences 0.1, 0.1, 0.09
    assert not result.no_spread and result.p_decisive == result.p == pytest.approx(
        scipy_stats.ttest_rel([0.6, 0.7, 0.65], [0.5, 0.6, 0.56]).pvalue)


def test_fewer_than_two_pairs_give_no_test():
    assert stats.paired([0.6], [0.5]) == stats.Paired(1, pytest.approx(0.1), None, None, None, None, None)
    assert not stats.paired([0.6], [0.5]).no_spread and stats.paired([0.6], [0.5]).p_decisive is None
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
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]
    assert stats.holm([]) == []


def test_holm_counts_every_planned_comparison_a_missing_p_included():
    """m is the family planned: a comparison without a p (fewer than 2 shared seeds) counts as p = 1."""
    assert stats.holm([0.01, None]) == pytest.approx([0.02, None])  # m = 2, not the 1 comparison with a p
    # sorted: 0.005 x 5 = 0.025, 0.01 x 4 = 0.04, 0.03 x 3 = 0.09, 0.04 x 2 = 0.08 -> kept at 0.09
    assert stats.holm([0.01, 0.04, 0.03, 0.005, None]) == pytest.approx([0.04, 0.09, 0.09, 0.025, None])
    with_ones = stats.holm([0.01, 0.04, 0.03, 0.005, 1.0])
    assert stats.holm([0.01, 0.04, 0.03, 0.005, None])[:4] == pytest.approx(with_ones[:4])


def test_the_detectable_difference_is_at_the_level_the_verdict_uses():
    """In a Holm family of m, the smallest p is compared with alpha / m: the detectable difference is too."""
    a, b = [0.71, 0.75, 0.74, 0.73], [0.70, 0.72, 0.735, 0.725]
    at_family = stats.paired(a, b, mdd_alpha=0.05 / 3)
    assert at_family.mdd_alpha == pytest.approx(0.05 / 3) and at_family.p == stats.paired(a, b).p
    assert at_family.mdd == pytest.approx(stats.minimal_detectable_difference(at_family.std, 4, 0.05 / 3))
    assert at_family.mdd > stats.paired(a, b).mdd
    critical = scipy_stats.t.ppf(1 - 0.05 / 6, 3)
    noncentrality = at_family.mdd * 2 / at_family.std
    assert scipy_stats.nct.sf(critical, 3, noncentrality) + scipy_stats.nct.cdf(-critical, 3, noncentrality) == \
        pytest.approx(0.8, abs=1e-6)


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
    assert stats.kendall([0.5], [0.6]) == stats.RankAgreement(1, None, None)


def brute_force_kendall_p(x, y):
    """The share of all n! pairings of x with y whose |tau-b| reaches the observed one."""
    observed = abs(scipy_stats.kendalltau(x, y).statistic)
    taus = [abs(scipy_stats.kendalltau(x, order).statistic) for order in itertools.permutations(y)]
    return sum(tau >= observed - 1e-12 for tau in taus) / len(taus)


def test_kendall_p_is_exact_without_ties():
    search, final = [0.9, 0.8, 0.7, 0.6], [0.75, 0.77, 0.70, 0.65]
    result = stats.kendall(search, final)
    assert result.method == stats.KENDALL_EXACT
    assert result.p == pytest.approx(brute_force_kendall_p(search, final))  # 8 of 24 orderings: 0.333
    perfect = [stats.kendall([4, 3, 2, 1], [8, 7, 6, 5]), stats.kendall([5, 4, 3, 2, 1], [9, 8, 7, 6, 5])]
    assert [r.p for r in perfect] == pytest.approx([2 / 24, 2 / 120])  # the floors: 0.083 at 4, 0.017 at 5
    assert [r.p_floor for r in perfect] == pytest.approx([1 / 12, 1 / 60])


def test_kendall_p_with_ties_is_the_exact_permutation_p_not_the_normal_approximation():
    search, final = [0.9, 0.8, 0.8, 0.6, 0.5], [0.75, 0.77, 0.70, 0.70, 0.60]  # ties on both sides
    result = stats.kendall(search, final)
    assert result.method == stats.KENDALL_PERMUTATION
    assert result.p == pytest.approx(brute_force_kendall_p(search, final))
    assert result.p != pytest.approx(scipy_stats.kendalltau(search, final).pvalue, abs=1e-3)  # scipy's asymptotic


def brute_force_miou(counts):
    """counts: list of per-class [tp, fp, fn] summed by hand; mean IoU over classes with a union."""
    ious = [tp / (tp + fp + fn) for tp, fp, fn in counts if tp + fp + fn > 0]
    return sum(ious) / len(ious) if ious else 0.0


def test_paired_bootstrap_against_a_brute_force_computation():
    """Two arms of two runs each on 5 images and 3 classes: for every resample (the images drawn by
    stats.resampled_images), sum each run's counts over the drawn images by hand, take its mIoU, average over the
    arm's runs, and difference; the interval is the 2.5th and 97.5th percentile of those differences."""
    rng = np.random.default_rng(3)
    a = [rng.integers(0, 40, size=(5, 3, 3)) for _ in range(2)]
    b = [rng.integers(0, 40, size=(5, 3, 3)) for _ in range(2)]
    a[0][:, 2] = 0  # class 2 absent from one run: left out of its mIoU, as ConfusionMatrix does
    found = stats.paired_bootstrap(a, b, resamples=300, seed=7)
    drawn = stats.resampled_images(5, 300, 7)
    def seed_mean(runs, images):
        per_run = []
        for run in runs:
            summed = [[sum(int(run[i][c][k]) for i in images) for k in range(3)] for c in range(3)]
            per_run.append(brute_force_miou(summed))
        return sum(per_run) / len(per_run)

    differences = [seed_mean(a, images) - seed_mean(b, images) for images in drawn]
    assert found.ci95 == pytest.approx(tuple(np.percentile(differences, [2.5, 97.5])))
    whole = [[[int(run[:, c, k].sum()) for k in range(3)] for c in range(3)] for run in (*a, *b)]
    assert found.difference == pytest.approx((brute_force_miou(whole[0]) + brute_force_miou(whole[1])) / 2
                                             - (brute_force_miou(whole[2]) + brute_force_miou(whole[3])) / 2)
    assert (found.runs, found.images, found.resamples, found.seed) == (2, 5, 300, 7)
    assert found.record()["ci95"] == list(found.ci95)


def test_paired_bootstrap_resamples_the_same_images_for_both_arms():
    """b is a with one class's false positives doubled on every image: the difference is the same sign on every
    resample, so the paired interval excludes 0; an arm against itself gives exactly 0."""
    rng = np.random.default_rng(0)
    a = [rng.integers(1, 50, size=(40, 4, 3))]
    b = [a[0].copy()]
    b[0][:, 1, 1] *= 2
    found = stats.paired_bootstrap(a, b)
    assert found.ci95[0] > 0 and found.difference > 0 and found.resamples == stats.BOOTSTRAP_RESAMPLES
    assert stats.paired_bootstrap(a, a).ci95 == (0.0, 0.0)
    assert stats.paired_bootstrap(a, b).ci95 == found.ci95  # the fixed seed: the same interval every time
    with pytest.raises(ValueError):
        stats.paired_bootstrap(a, [b[0][:30]])


def test_miou_from_counts_matches_the_confusion_matrix():
    from segtrain.metrics import ConfusionMatrix

    rng = np.random.default_rng(1)
    target = rng.integers(0, 5, size=(3, 11, 13))
    prediction = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 5, size=target.shape))
    matrix = ConfusionMatrix(21)
    matrix.update(torch.from_numpy(prediction), torch.from_numpy(target))
    m = matrix.matrix.numpy()
    tp = np.diag(m)
    counts = np.stack([tp, m.sum(0) - tp, m.sum(1) - tp], axis=-1)
    assert float(stats.miou_from_counts(counts)) == pytest.approx(matrix.compute().miou)


def test_seeds_needed_is_the_fewest_whose_detectable_difference_reaches_the_observed_one():
    std, alpha = 0.02, stats.ALPHA / 4
    for difference in (0.015, 0.02, 0.05, 0.1):  # 24, 15, 5 and 4 seeds
        n = stats.seeds_needed(difference, std, alpha)
        assert stats.minimal_detectable_difference(std, n, alpha) <= difference
        assert n == 2 or stats.minimal_detectable_difference(std, n - 1, alpha) > difference
    assert stats.seeds_needed(-0.05, std, alpha) == stats.seeds_needed(0.05, std, alpha)  # either direction
    assert stats.seeds_needed(0.01, std, alpha, most=30) is None  # too small against the spread: more than 30
