"""Which configurations the final table compares, with what statistics, and the words for each verdict.

Four families of paired-by-seed comparisons (hpo.report.stats), per evaluation protocol:
- each top-k configuration vs the baseline, Holm-corrected over the family (the top-k
  were chosen from many trials, and any one of them beating the baseline by luck
  would be reported as a finding);
- each ablation experiment vs its centre (the best configuration or the baseline, at the
  same budget and seeds), Holm-corrected over the experiments;
- each variant (the best configuration as another DeepLab model: [finalize] variants) vs the
  best configuration, Holm-corrected over the variants;
- ResNet-101 ImageNet-pretrained vs from scratch, one comparison, uncorrected.
A Holm family is the m comparisons planned, whether or not each got a p (the
conservative choice), and the detectable difference is computed at alpha / m, the
level of Holm's first step.

Verdicts are drawn under one primary protocol (the first of [finalize] eval): "better" or
"worse" when the (Holm-adjusted) p < 0.05, else "inconclusive"; the p is the paired
t-test's, or the exact sign-flip p where every seed moved by the same amount and the
t-test is undefined. A pair of arms with fewer than two seeds finished in both is
inconclusive with that reason; a pair where either arm diverged on a seed is "unstable
(k of n seeds diverged)", never better or worse: leaving the diverged seed out would
judge the configuration on the seeds it survived. The other protocols' comparisons are
descriptive (their intervals, no verdict). Beside the seed interval, each comparison
carries a paired bootstrap over the val images where the runs kept per-image counts.
Also the rank agreement between the search's scores and the full-budget means.

Reads hpo.report.results and hpo.report.stats; no optuna, never hpo.finalize.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hpo.report import stats
from hpo.report.results import OWN_PROTOCOL, Summary, find

TOP_VS_BASELINE = "top-k vs baseline"
PRETRAINED_VS_SCRATCH = "pretrained vs scratch"
ABLATION = "ablation vs centre"
VARIANT = "variant vs best"
DESCRIPTIVE = "descriptive"  # the verdict of a comparison under a protocol other than the primary one


@dataclass(frozen=True)
class Comparison:
    a: str  # configuration names; the difference is a - b
    b: str
    protocol: str
    family: str
    paired: stats.Paired
    seeds: tuple[int, ...]  # the seeds both finished
    p_holm: float | None  # None where the family is not corrected, or there is no p
    verdict: str
    reason: str  # why it is inconclusive without a test ("" when tested)
    family_size: int = 1  # m, the comparisons planned in its Holm family
    diverged: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # arm -> its diverged seeds
    planned: int = 0  # seeds planned for the two arms
    bootstrap: stats.Bootstrap | None = None  # over the val images, under this protocol
    bootstrap_reason: str = ""  # why there is none

    @property
    def primary(self) -> bool:
        return self.verdict != DESCRIPTIVE

    def record(self) -> dict[str, object]:
        p = self.paired
        return {"a": self.a, "b": self.b, "protocol": self.protocol, "family": self.family, "n": p.n,
                "seeds": list(self.seeds), "difference": p.difference,
                "ci95": list(p.ci95) if p.ci95 else None, "p": p.p, "p_holm": self.p_holm,
                "p_permutation": p.p_permutation, "mdd": p.mdd, "mdd_alpha": p.mdd_alpha,
                "family_size": self.family_size, "verdict": self.verdict, "reason": self.reason,
                "diverged": {arm: list(seeds) for arm, seeds in self.diverged.items()},
                "bootstrap": self.bootstrap.record() if self.bootstrap else None,
                "bootstrap_reason": self.bootstrap_reason}

    def evidence(self) -> str:
        """E.g. '+0.0312 mIoU ss (95% CI over seeds [+0.0101, +0.0523]; paired t p = 0.012, Holm 0.036;
        sign-flip p = 0.25)'."""
        p = self.paired
        if p.difference is None:
            return f"no seed finished in both ({self.reason})"
        if p.n < 2:
            return f"{p.difference:+.4f} mIoU {self.protocol} from one seed ({self.reason})"
        if p.no_spread:
            holm = f", Holm {self.p_holm:.3g}" if self.p_holm is not None else ""
            return (f"{p.difference:+.4f} mIoU {self.protocol} on every seed (no spread, so the t-test is "
                    f"undefined and the exact sign-flip p = {p.p_permutation:.3g}{holm} decides: with {p.n} seeds "
                    f"it cannot go below {2.0 ** (1 - p.n):.3g})")
        parts = [f"paired t p = {p.p:.3g}"]
        if self.p_holm is not None:
            parts[0] += f", Holm {self.p_holm:.3g}"
        if p.p_permutation is not None:
            parts.append(f"sign-flip p = {p.p_permutation:.3g}")
        return (f"{p.difference:+.4f} mIoU {self.protocol} (95% CI over seeds [{p.ci95[0]:+.4f}, {p.ci95[1]:+.4f}]; "
                + "; ".join(parts) + ")")

    def sentence(self) -> str:
        """E.g. '`top-1` vs `baseline`: better at 3 seeds, +0.0312 mIoU ss (...); over val images [...].'"""
        n = self.paired.n
        verdict = self.verdict if self.primary else "descriptive (no verdict under this protocol)"
        text = f"`{self.a}` vs `{self.b}`: {verdict} at {n} seed{'s' if n != 1 else ''}, " + self.evidence()
        if self.diverged:
            text += ("; " + ", ".join(f"`{arm}` diverged on seed{'s' if len(seeds) > 1 else ''} "
                                      f"{', '.join(map(str, seeds))}" for arm, seeds in self.diverged.items())
                     + ": a diverged seed is an outcome of the configuration, and a verdict on the seeds it "
                     "survived would flatter it")
        if self.bootstrap is not None:
            low, high = self.bootstrap.ci95
            text += (f"; over val images (paired bootstrap, {self.bootstrap.images} images, "
                     f"{self.bootstrap.runs} run{'s' if self.bootstrap.runs != 1 else ''} an arm) 95% CI "
                     f"[{low:+.4f}, {high:+.4f}]")
        if self.verdict == "inconclusive" and self.paired.mdd is not None:
            text += (f"; these seeds could detect {detectable(self.paired.mdd)} (80% power at alpha "
                     + (f"0.05 / {self.family_size} = {self.paired.mdd_alpha:.3g}, Holm's first step)"
                        if self.family_size > 1 else f"{self.paired.mdd_alpha:g})"))
        return text + "."


MIOU_RANGE = 1.0  # no mIoU difference is larger: a detectable difference beyond it means none is detectable


def detectable(mdd: float) -> str:
    """The smallest detectable difference in words: 'about 0.0412', or, past mIoU's whole range, that none is."""
    if mdd >= MIOU_RANGE:
        return f"no difference mIoU can show (the smallest detectable, {mdd:.2f}, exceeds its range of 1)"
    return f"about {mdd:.4f}"


def compare(a: Summary, b: Summary, protocol: str, family: str, family_size: int = 1) -> Comparison:
    """a vs b over the seeds both finished, with no correction and no verdict drawn yet (see `comparisons`)."""
    left, right = a.by_seed(protocol), b.by_seed(protocol)
    seeds = tuple(sorted(set(left) & set(right)))
    paired = stats.paired([left[s] for s in seeds], [right[s] for s in seeds], stats.ALPHA / family_size)
    reason = "" if paired.n >= 2 else f"{paired.n} seed{'s' if paired.n != 1 else ''} finished in both, a test needs 2"
    diverged = {s.name: s.diverged for s in (a, b) if s.diverged}
    planned = len({run.seed for s in (a, b) for run in s.runs})
    found, why_not = image_bootstrap(a, b, protocol, seeds)
    return Comparison(a.name, b.name, protocol, family, paired, seeds, None, "inconclusive", reason, family_size,
                      diverged, planned, found, why_not)


def image_bootstrap(a: Summary, b: Summary, protocol: str, seeds: Sequence[int]
                    ) -> tuple[stats.Bootstrap | None, str]:
    """The paired bootstrap over val images of a - b (seed-mean), over the shared seeds whose runs kept
    per-image counts; or None and why. The seed-mean, as the seed interval beside it is of the mean."""
    runs_a, runs_b = ({run.seed: run for run in s.ok} for s in (a, b))
    counts = [(seed, runs_a[seed].per_image_counts(protocol), runs_b[seed].per_image_counts(protocol))
              for seed in seeds]
    kept = [(seed, left, right) for seed, left, right in counts if left is not None and right is not None]
    if not kept:
        return None, ("no seed finished in both" if not seeds else
                      "no per-image counts (runs trained or evaluated before they were kept)")
    ids = kept[0][1][0]
    if any(left[0] != ids or right[0] != ids for _, left, right in kept):
        return None, "the runs were scored on different val images"
    return stats.paired_bootstrap([left[1] for _, left, _ in kept], [right[1] for _, _, right in kept]), ""


def _decided(family: list[Comparison], primary: bool, corrected: bool) -> list[Comparison]:
    """The family with its Holm-adjusted p (when corrected) and each verdict."""
    decisive = [c.paired.p_decisive for c in family]
    adjusted = stats.holm(decisive) if corrected else [None] * len(family)
    out = []
    for c, p_holm, p in zip(family, adjusted, decisive):
        if not primary:
            verdict = DESCRIPTIVE
        elif c.diverged:
            hit = {seed for seeds in c.diverged.values() for seed in seeds}
            verdict = f"unstable ({len(hit)} of {c.planned} seeds diverged)"
        else:
            verdict = stats.verdict(c.paired.difference, p_holm if corrected else p)
        out.append(dataclasses.replace(c, p_holm=p_holm if primary else None, verdict=verdict))
    return out


def comparisons(summaries: Sequence[Summary], protocol: str = OWN_PROTOCOL, primary: bool = True) -> list[Comparison]:
    """Every comparison the report makes under `protocol`, in report order; verdicts only if it is the primary."""
    out: list[Comparison] = []
    baseline = find(summaries, "baseline")
    if baseline is not None:
        tops = [s for s in summaries if s.role("top") and s is not baseline]
        out += _decided([compare(s, baseline, protocol, TOP_VS_BASELINE, len(tops)) for s in tops], primary, True)
    centre = find(summaries, "ablation-centre")
    if centre is not None:
        ablations = [s for s in summaries if s.role("ablation")]
        out += _decided([compare(s, centre, protocol, ABLATION, len(ablations)) for s in ablations], primary, True)
    best = find(summaries, "top")
    if best is not None:
        variants = [s for s in summaries if s.role("variant") and s is not best]
        out += _decided([compare(s, best, protocol, VARIANT, len(variants)) for s in variants], primary, True)
    pretrained, scratch = find(summaries, "r101-imagenet"), find(summaries, "r101-scratch")
    if pretrained is not None and scratch is not None and pretrained is not scratch:
        out += _decided([compare(pretrained, scratch, protocol, PRETRAINED_VS_SCRATCH)], primary, False)
    return out


@dataclass(frozen=True)
class CrfGain:
    """What the dense CRF adds to one configuration's runs: `protocol` (a crf one) against `base` (the same
    without the CRF), paired by seed, uncorrected (one question per protocol), and the evaluation seconds."""

    configuration: str
    protocol: str
    base: str
    paired: stats.Paired
    verdict: str
    seconds: float | None  # mean seconds of a run's `protocol` evaluation
    base_seconds: float | None

    def sentence(self) -> str:
        p = self.paired
        if p.difference is None or p.n < 2:
            return f"`{self.protocol}` vs `{self.base}` on `{self.configuration}`: {p.n} seed(s) scored under both"
        interval = f" (95% CI over seeds [{p.ci95[0]:+.4f}, {p.ci95[1]:+.4f}])" if p.ci95 else ""
        cost = "" if self.seconds is None else f", at {self.seconds:.1f} s an evaluation of val" + (
            f" against {self.base_seconds:.1f} s without it" if self.base_seconds is not None else "")
        return (f"`{self.protocol}` vs `{self.base}` on `{self.configuration}`: {p.difference:+.4f} mIoU{interval}, "
                f"{self.verdict} at {p.n} seeds (p = {p.p_decisive:.2g}){cost}")


def crf_gains(summaries: Sequence[Summary], protocols: Sequence[str]) -> list[CrfGain]:
    """For the best configuration, each crf protocol scored against the same protocol without the CRF."""
    best = find(summaries, "top")
    if best is None:
        return []
    gains = []
    for protocol in protocols:
        base = protocol.removesuffix("_crf") if protocol != "crf" else OWN_PROTOCOL
        if protocol == base or base not in protocols:
            continue
        with_crf, without = best.by_seed(protocol), best.by_seed(base)
        seeds = sorted(set(with_crf) & set(without))
        paired = stats.paired([with_crf[s] for s in seeds], [without[s] for s in seeds])
        gains.append(CrfGain(best.name, protocol, base, paired, stats.verdict(paired.difference, paired.p_decisive),
                             _mean_seconds(best, protocol), _mean_seconds(best, base)))
    return gains


def _mean_seconds(s: Summary, protocol: str) -> float | None:
    """Mean seconds of the runs' `protocol` evaluations (the run's own: its final evaluation, not recorded apart)."""
    seconds = [float(run.evaluations[protocol]["seconds"]) for run in s.ok
               if "seconds" in run.evaluations.get(protocol, {})]
    return sum(seconds) / len(seconds) if seconds else None


@dataclass(frozen=True)
class Agreement:
    """Kendall's tau between the search's scores and the full-budget means of the same configurations."""

    names: tuple[str, ...]
    rank: stats.RankAgreement


def rank_agreement(summaries: Sequence[Summary], protocol: str = OWN_PROTOCOL) -> Agreement:
    """Over the configurations that are search trials (the top-k and the baseline) with a full-budget mean."""
    chosen = [s for s in summaries if s.configuration.search_value is not None and s.miou[protocol].mean is not None]
    return Agreement(tuple(s.name for s in chosen),
                     stats.kendall([s.configuration.search_value for s in chosen],
                                   [s.miou[protocol].mean for s in chosen]))
