"""The report's opening: what the study found, one sentence a finding, each with its number, interval and verdict.

Everything here is read off the Analysis (and the study, for the search's cost), so each
sentence carries the verdict of the comparison the sections below state at length, and
links to that section. For an inconclusive comparison it also says how many seeds would
detect the difference it observed with 80% power at its family's level (the observed spread
of the per-seed differences, hpo.report.stats.seeds_needed) and what `hpo.finalize --seeds`
would then cost: it trains every configuration on the added seeds and reuses the finished ones.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import optuna

from hpo.report import compare, stats, tables
from hpo.report.analysis import Analysis
from hpo.report.compare import Comparison
from hpo.report.results import Summary, find
from hpo.spec import FinalizeOptions, StudySpec
from hpo.trials import spent_seconds

# the sections the findings link to, as report.md titles them
BASELINE = "Against the baseline"
RANK = "Did the search's ranking hold at full budget?"
R101 = "ResNet-101: ImageNet-pretrained vs from scratch"
ABLATION = "What each factor does: controlled experiments"
FAMILY = "The DeepLab family: DeepLabV3+ and the dense CRF"
COST = "Cost and accuracy"
PICTURES = "Predictions on val images"
MOST_SEEDS = 30  # beyond this, "more than 30": the difference is small against the seeds' spread


def anchor(title: str) -> str:
    """The link to a section, as GitHub and most Markdown viewers name its heading."""
    return "#" + re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def link(title: str) -> str:
    return f"[detail]({anchor(title)})"


def lines(spec: StudySpec, study: optuna.Study, options: FinalizeOptions, analysis: Analysis) -> list[str]:
    """The Findings section's bullet points."""
    primary = [c for c in analysis.comparisons if c.protocol == analysis.primary]
    family = {name: [c for c in primary if c.family == name] for name in
              (compare.TOP_VS_BASELINE, compare.ABLATION, compare.PRETRAINED_VS_SCRATCH, compare.VARIANT)}
    by_name = {s.name: s for s in analysis.summaries}
    found = [*top_lines(family[compare.TOP_VS_BASELINE], by_name),
             *factor_lines(family[compare.ABLATION], by_name, analysis.summaries),
             *r101_lines(family[compare.PRETRAINED_VS_SCRATCH], analysis.summaries),
             *(f"- **{c.a} vs the best DeepLabV3** ({link(FAMILY)}): {finding(c)}; "
               f"{cost_against(by_name[c.a], by_name[c.b])}." for c in family[compare.VARIANT]),
             *(f"- **The dense CRF** ({link(FAMILY)}): {gain.sentence()}."
               for gain in compare.crf_gains(analysis.summaries, analysis.protocols)),
             rank_line(analysis), cost_line(study, analysis.summaries)]
    deciding = seeds_line(spec, options, primary, analysis.summaries)
    return found + ([deciding] if deciding else [])


def finding(c: Comparison) -> str:
    """'+0.1260 mIoU ss (95% CI [+0.0210, +0.2310]), better at 3 seeds (Holm p = 0.031)'."""
    p = c.paired
    if p.difference is None:
        return f"not compared ({c.reason})"
    interval = f" (95% CI [{p.ci95[0]:+.4f}, {p.ci95[1]:+.4f}])" if p.ci95 else ""
    decisive = c.p_holm if c.p_holm is not None else p.p_decisive
    test = f" ({'Holm ' if c.p_holm is not None else ''}p = {decisive:.2g})" if decisive is not None else ""
    return f"{p.difference:+.4f} mIoU {c.protocol}{interval}, {c.verdict} at {p.n} seed{'s' if p.n != 1 else ''}{test}"


def recipe(s: Summary) -> str:
    """The settings that make a configuration, briefly: 'sgd, lr 0.0029, crop 129, batch 2, OS 8'."""
    short = {"crop_size": "crop", "batch_size": "batch", "output_stride": "OS", "optimizer": ""}
    parts = []
    for key, value in s.configuration.params.items():
        text = f"{value:.2g}" if isinstance(value, float) else str(value)
        parts.append(text if short.get(key, key) == "" else f"{short.get(key, key)} {text}")
    return ", ".join(parts)


def top_lines(found: Sequence[Comparison], by_name: dict[str, Summary]) -> list[str]:
    if not found:
        return [f"- **ResNet-50 against the baseline** ({link(BASELINE)}): no top configuration other than the "
                "baseline was retrained."]
    return [f"- **`{c.a}` vs the baseline** ({by_name[c.a].configuration.description}: {recipe(by_name[c.a])}; "
            f"{link(BASELINE)}): {finding(c)}." for c in found]


def factor_lines(found: Sequence[Comparison], by_name: dict[str, Summary], summaries: Sequence[Summary]) -> list[str]:
    """One line per factor of the controlled experiments: what each of its values did against the centre."""
    centre = find(summaries, "ablation-centre")
    if centre is None:
        return [f"- **What each factor does** ({link(ABLATION)}): no controlled experiments (`[finalize.ablation]` "
                "is empty); the search's trials describe the factors, observationally."]
    factors: dict[str, list[str]] = {}
    for c in found:
        field, value = by_name[c.a].configuration.factor
        factors.setdefault(field, []).append(f"{_value(field, value, centre)}: {finding(c)}")
    return [f"- **{field}** (one factor changed around `{centre.name}`; {link(ABLATION)}): " + "; ".join(values) + "."
            for field, values in factors.items()]


def _value(field: str, value: Any, centre: Summary) -> str:
    own = getattr(centre.configuration.config, field)
    if isinstance(value, float) and isinstance(own, float) and own:
        return f"{value:.3g} (x{value / own:.2g} the centre's {own:.3g})"
    return f"{value} (the centre's {own})"


def r101_lines(found: Sequence[Comparison], summaries: Sequence[Summary]) -> list[str]:
    pretrained, scratch = find(summaries, "r101-imagenet"), find(summaries, "r101-scratch")
    if pretrained is None or scratch is None:
        return []
    recipes = (f"pretrained: {pretrained.configuration.description}, a recipe the search tuned on ResNet-50; "
               "scratch: that recipe changed by a fixed rule after He et al. 2019, untuned")
    if not found or found[0].paired.difference is None:
        why = (tables.failure_reference(pretrained, summaries) if pretrained.failed
               else found[0].reason if found else "no seed finished")
        return [f"- **ResNet-101, ImageNet-pretrained vs from scratch** ({link(R101)}): not compared ({why}); "
                f"{recipes}."]
    return [f"- **ResNet-101, ImageNet-pretrained vs from scratch** ({link(R101)}): {finding(found[0])}, at this "
            f"budget and with these recipes ({recipes})."]


def cost_against(a: Summary, b: Summary) -> str:
    """What a costs beside b, per run: '70 s a run against 109 s for `top-1`, 26.7M parameters against 39.6M'."""
    seconds, parameters = a.stats["seconds"].mean, a.stats["parameters"].mean
    if seconds is None or parameters is None or b.stats["seconds"].mean is None:
        return f"no finished run of `{a.name}` to time"
    return (f"{seconds:.0f} s a run against {b.stats['seconds'].mean:.0f} s for `{b.name}` (training and its "
            f"evaluation, mean over seeds), {parameters / 1e6:.1f}M parameters against "
            f"{b.stats['parameters'].mean / 1e6:.1f}M")


def rank_line(analysis: Analysis) -> str:
    rank = analysis.agreement.rank
    if rank.tau is None:
        return (f"- **Did the search's ranking hold at full budget?** ({link(RANK)}) Not measurable: Kendall's tau "
                f"is undefined over {rank.n} configuration{'s' if rank.n != 1 else ''}.")
    held = ("it held (p < 0.05)" if rank.p is not None and rank.p < stats.ALPHA else
            f"neither shown nor refuted: with n = {rank.n} the smallest possible p is {rank.p_floor:.2g}")
    return (f"- **Did the search's ranking hold at full budget?** ({link(RANK)}) Kendall's tau = {rank.tau:+.2f} "
            f"between the search's scores and the full-budget means, n = {rank.n}, p = {rank.p:.2g}: {held}.")


def cost_line(study: optuna.Study, summaries: Sequence[Summary]) -> str:
    search = spent_seconds(study) / 3600
    final = sum(run_seconds(s) for s in summaries) / 3600
    return (f"- **What it cost** ({link(COST)}): the search {search:.2f} device-hours, finalize {final:.2f} "
            f"(training and every evaluation), {search + final:.2f} in all.")


def run_seconds(s: Summary) -> float:
    """The device-seconds of a configuration's finished runs: training, its evaluations, the protocols' scoring."""
    return sum(run.result.seconds + sum(float(e.get("seconds", 0.0)) for e in run.evaluations.values())
               for run in s.ok)


def seeds_line(spec: StudySpec, options: FinalizeOptions, primary: Sequence[Comparison],
               summaries: Sequence[Summary]) -> str | None:
    """How many seeds each inconclusive comparison would need, and what adding them costs."""
    needs = []
    for c in primary:
        p = c.paired
        if c.verdict != "inconclusive" or p.n < 2 or p.std is None or not p.difference:
            continue
        n = stats.seeds_needed(p.difference, p.std, stats.ALPHA / c.family_size, most=MOST_SEEDS)
        needs.append((c, n))
    if not needs:
        return None
    said = "; ".join(f"`{c.a}` vs `{c.b}` ({c.paired.difference:+.4f}) about {n} seeds" if n is not None else
                     f"`{c.a}` vs `{c.b}` ({c.paired.difference:+.4f}) more than {MOST_SEEDS}" for c, n in needs)
    wanted = max((n for _, n in needs if n is not None), default=None)
    text = (f"- **What would decide the inconclusive comparisons** (80% power at each family's level, from the "
            f"observed spread): {said}.")
    if wanted is None or wanted <= len(options.seeds):
        return text
    seeds = more_seeds(options.seeds, wanted, spec.train_config().seed)
    added = wanted - len(options.seeds)
    per_seed = sum(run_seconds(s) / max(1, len(s.ok)) for s in summaries)
    return (text + f" `python -m hpo.finalize --study {spec.path} --seeds {' '.join(map(str, seeds))}` trains "
            f"{added} more seed{'s' if added != 1 else ''} of every configuration, about {added * per_seed / 3600:.2g} "
            "device-hours at this machine's pace (finished seeds are reused).")


def more_seeds(seeds: Sequence[int], count: int, search_seed: int) -> list[int]:
    """`seeds`, then the smallest others (never the search's, whose runs selected the configurations) up to `count`."""
    out, candidate = list(seeds), 0
    while len(out) < count:
        if candidate not in out and candidate != search_seed:
            out.append(candidate)
        candidate += 1
    return out
