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
A verdict is "better" or "worse" when the (Holm-adjusted) paired t p < 0.05, else
"inconclusive"; a pair of arms with fewer than two seeds finished in both is
inconclusive with that reason. Also the rank agreement between the search's scores
and the full-budget means.

Reads hpo.report.results and hpo.report.stats; no optuna, never hpo.finalize.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpo.report import stats
from hpo.report.results import OWN_PROTOCOL, Summary, find

TOP_VS_BASELINE = "top-k vs baseline"
PRETRAINED_VS_SCRATCH = "pretrained vs scratch"
ABLATION = "ablation vs centre"
VARIANT = "variant vs best"


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

    def record(self) -> dict[str, object]:
        p = self.paired
        return {"a": self.a, "b": self.b, "protocol": self.protocol, "family": self.family, "n": p.n,
                "seeds": list(self.seeds), "difference": p.difference,
                "ci95": list(p.ci95) if p.ci95 else None, "p": p.p, "p_holm": self.p_holm,
                "p_permutation": p.p_permutation, "mdd": p.mdd, "verdict": self.verdict, "reason": self.reason}

    def evidence(self) -> str:
        """E.g. '+0.0312 mIoU ss (95% CI [+0.0101, +0.0523]; paired t p = 0.012, Holm 0.036; sign-flip p = 0.25)'."""
        p = self.paired
        if p.difference is None:
            return f"no seed finished in both ({self.reason})"
        if p.ci95 is None:
            return f"{p.difference:+.4f} mIoU {self.protocol} from one seed ({self.reason})"
        parts = [f"paired t p = {p.p:.3g}"]
        if self.p_holm is not None:
            parts[0] += f", Holm {self.p_holm:.3g}"
        if p.p_permutation is not None:
            parts.append(f"sign-flip p = {p.p_permutation:.3g}")
        return (f"{p.difference:+.4f} mIoU {self.protocol} (95% CI [{p.ci95[0]:+.4f}, {p.ci95[1]:+.4f}]; "
                + "; ".join(parts) + ")")

    def sentence(self) -> str:
        """E.g. 'top-1 vs baseline: better at 3 seeds, +0.0312 mIoU ss (...).'"""
        text = f"`{self.a}` vs `{self.b}`: {self.verdict} at {self.paired.n} seed{'s' if self.paired.n != 1 else ''}, "
        text += self.evidence()
        if self.verdict == "inconclusive" and self.paired.mdd is not None:
            text += f"; these seeds could detect about {self.paired.mdd:.4f} (80% power)"
        return text + "."


def compare(a: Summary, b: Summary, protocol: str, family: str) -> Comparison:
    """a vs b over the seeds both finished; uncorrected (hpo.report.compare.comparisons applies Holm to a family)."""
    left, right = a.by_seed(protocol), b.by_seed(protocol)
    seeds = tuple(sorted(set(left) & set(right)))
    paired = stats.paired([left[s] for s in seeds], [right[s] for s in seeds])
    reason = "" if paired.n >= 2 else f"{paired.n} seed{'s' if paired.n != 1 else ''} finished in both, a test needs 2"
    return Comparison(a.name, b.name, protocol, family, paired, seeds, None,
                      stats.verdict(paired.difference, paired.p), reason)


def _holm(family: list[Comparison]) -> list[Comparison]:
    adjusted = stats.holm([c.paired.p for c in family])
    return [Comparison(c.a, c.b, c.protocol, c.family, c.paired, c.seeds, p,
                       stats.verdict(c.paired.difference, p), c.reason) for c, p in zip(family, adjusted)]


def comparisons(summaries: Sequence[Summary], protocol: str = OWN_PROTOCOL) -> list[Comparison]:
    """Every comparison the report makes under `protocol`, in report order."""
    out: list[Comparison] = []
    baseline = find(summaries, "baseline")
    if baseline is not None:
        out += _holm([compare(s, baseline, protocol, TOP_VS_BASELINE)
                      for s in summaries if s.role("top") and s is not baseline])
    centre = find(summaries, "ablation-centre")
    if centre is not None:
        out += _holm([compare(s, centre, protocol, ABLATION) for s in summaries if s.role("ablation")])
    best = find(summaries, "top")
    if best is not None:
        out += _holm([compare(s, best, protocol, VARIANT) for s in summaries if s.role("variant") and s is not best])
    pretrained, scratch = find(summaries, "r101-imagenet"), find(summaries, "r101-scratch")
    if pretrained is not None and scratch is not None and pretrained is not scratch:
        out.append(compare(pretrained, scratch, protocol, PRETRAINED_VS_SCRATCH))
    return out


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
