"""report.md and the study's dashboard note: the sentences and sections, from an Analysis.

Every sentence that compares two configurations comes from a hpo.report.compare.Comparison:
better, worse or inconclusive at n seeds, with its interval and p.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from hpo.markdown import markdown_table
from hpo.report import compare, findings, pareto, tables
from hpo.report.analysis import Analysis
from hpo.report.compare import Comparison
from hpo.report.factors import EVALUATOR_NAME, MIN_TOP_TRIALS, Effect, Ranking
from hpo.report.gallery import Gallery
from hpo.report.published import PUBLISHED, matches
from hpo.report.results import OWN_PROTOCOL, Summary, find, miou_title
from hpo.report.stats import (
    ALPHA,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    EXACT_PERMUTATION_MAX_N,
    RankAgreement,
)
from hpo.spec import FinalizeOptions, StudySpec
from hpo.storage_urls import safe_url
from hpo.trials import Counts, outcome, ranked_trials, summary_lines

DOCS_RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results.md"
HE_ET_AL = "He, Girshick & Dollár (2019, *Rethinking ImageNet Pre-training*, arXiv:1811.08883)"
# the TrainConfig settings that shape each schedule's learning rate, besides warmup_epochs
SCHEDULE_SETTINGS = {"poly": ("poly_power",), "wsd": ("decay_fraction", "decay_shape")}
FACTOR_CAVEAT = ("Observational, not controlled: TPE chose each value given the earlier results, so a value "
                 "travels with the settings it was sampled with, and pruning cut the trials it ranked low at the "
                 "first evaluation, whose ranking agrees only loosely with the end of a run (Kendall tau about "
                 "0.35 on the demo task, docs/performance.md); the controlled experiments above are the evidence.")
FILES = ("report.md", "results.csv", "results.json", "per_class_iou.csv", "figures.html")
INTERVALS = ("Two intervals stand beside each difference. The seed interval (95% CI (seeds)) says how far training "
             "noise, the initialisation and the data order, moves it: where the difference of new runs scored on "
             "these very val images would fall. The val-image interval (95% CI (val images)) says how far the "
             "choice of val images moves it: a paired bootstrap that resamples the val images "
             f"{BOOTSTRAP_RESAMPLES:,} times with replacement (seed {BOOTSTRAP_SEED}), the same images for both "
             "configurations, and recomputes each run's mIoU from its per-image counts, averaged over the seeds; "
             "it is how these runs would score on another set of images drawn like these.")


# --- sentences

def selection_sentence(spec: StudySpec, options: FinalizeOptions) -> str:
    search = spec.train_config()
    if search.val_split == options.val_split:
        return (f"The search selected its configurations on `{search.val_split}`, the split this table reports, "
                "so the top configurations' scores and their gains over the baseline are biased upwards by that "
                "selection.")
    return (f"The search trained on `{search.train_split}` and selected on `{search.val_split}`; this table "
            f"reports `{options.val_split}`, which the search never scored, so the selection does not bias it.")


def seed_overlap_sentence(spec: StudySpec, options: FinalizeOptions) -> str:
    """One sentence where finalize retrains with the seed the search trained every trial with; else ""."""
    seed = spec.train_config().seed
    if any(param.name == "seed" for param in spec.space) or seed not in options.seeds:
        return ""
    return (f"Seed {seed} is also the seed every search trial trained with (`[train] seed`), so each configuration "
            f"taken from the search repeats at seed {seed} the initialisation and data order of the trial that "
            "selected it (over a longer budget): that run is not independent of the selection, which `[finalize] "
            "seeds` disjoint from the search's (the default: 1, 2, 3) would avoid.")


def permutation_note(options: FinalizeOptions) -> str:
    n = len(options.seeds)
    if n > EXACT_PERMUTATION_MAX_N:
        return (f"The exact sign-flip p is given up to {EXACT_PERMUTATION_MAX_N} seeds; with {n}, the t-test "
                "stands alone.")
    return (f"Beside it, the exact sign-flip permutation p assumes nothing about the distribution, but with "
            f"{n} seeds it can never fall below {2 / 2 ** n:.3g}: no distribution-free claim is possible at this "
            "many seeds, so the verdicts rest on the t-test, that is, on roughly normal variation from seed to "
            "seed.")


def search_schedule(spec: StudySpec) -> dict[str, Any]:
    """The learning-rate schedule the search trained its trials with, its settings, its warm-up, and the budget
    (a searched schedule or setting says "searched")."""
    config, searched = spec.train_config(), {param.name for param in spec.space}
    schedule = "searched" if "schedule" in searched else config.schedule
    keys = [*SCHEDULE_SETTINGS.get(schedule, ()), *(["warmup_epochs"] if config.warmup_epochs else [])]
    return {"schedule": schedule, **{key: "searched" if key in searched else getattr(config, key) for key in keys},
            "epochs": config.epochs}


def epochs_text(epochs: float) -> str:
    """'1 epoch', '1.25 epochs'."""
    return f"{epochs:g} epoch{'' if epochs == 1 else 's'}"


def schedule_text(spec: StudySpec) -> str:
    """E.g. 'schedule `poly` (poly_power = 1.0), 4 epochs'."""
    settings = search_schedule(spec)
    schedule, epochs = settings.pop("schedule"), settings.pop("epochs")
    details = ", ".join(f"{key} = {value!r}" for key, value in settings.items())
    return f"schedule `{schedule}`" + (f" ({details})" if details else "") + f", {epochs_text(epochs)}"


def rank_lines(spec: StudySpec, study: optuna.Study, options: FinalizeOptions, analysis: Analysis) -> list[str]:
    rank = analysis.agreement.rank
    names = ", ".join(analysis.agreement.names) or "none"
    search = spec.train_config()
    if rank.tau is None and rank.n < 2:
        agreement = f"Kendall's tau needs two such configurations with a result; there are {rank.n} ({names})."
    elif rank.tau is None:
        agreement = (f"Kendall's tau is undefined over {names}: the search's scores or the full-budget means "
                     "are all tied, so neither ranks them.")
    else:
        p = "-" if rank.p is None else f"{rank.p:.2g}"
        agreement = (f"Kendall's tau = {rank.tau:+.2f} (n = {rank.n}, two-sided p = {p}, {rank.method}) between "
                     f"the search's scores (on `{search.val_split}`) and the full-budget means "
                     f"({miou_title(OWN_PROTOCOL)} on `{options.val_split}`) of the configurations that are search "
                     f"trials: {names}.")
    lines = [agreement, "",
             f"The search's proxy: {schedule_text(spec)} on `{search.train_split}`; finalize: {options.epochs:g} "
             f"epochs on `{options.train_split}`.", ""]
    if rank.tau is not None:
        lines += [small_rank_sample(rank), ""]
    best = find(analysis.summaries, "top")
    if best is not None and best.configuration.search_value is not None:
        complete = len(ranked_trials(study))
        lines += [f"Top-1 (trial {best.configuration.trial}) was chosen as the best of {complete} distinct complete "
                  f"configurations of the search, so its search score ({best.configuration.search_value:.4f}) is "
                  "biased upwards by that choice (the winner's curse) and it is likely to lose ground at full "
                  "budget; its full-budget numbers come from new runs"
                  + (" on images the search never scored." if search.val_split != options.val_split else
                     " on the very images it was selected on, so they keep part of that bias."), ""]
    return lines


def small_rank_sample(rank: RankAgreement) -> str:
    """What a tau over this few configurations can and cannot show, and what its p says."""
    floor = rank.p_floor
    if floor >= ALPHA:
        can = (f"with n = {rank.n} even a perfect agreement has p = {floor:.2g}, so this many configurations cannot "
               "show that the short-budget ranking held, only hint at a reversal")
    else:
        can = (f"with n = {rank.n} the smallest possible p is {floor:.2g}, so only a near-perfect agreement can "
               "show that the ranking held, and a middling tau shows nothing either way")
    held = (f"here p = {rank.p:.2g} < {ALPHA:g}: the full-budget order agrees with the search's more than chance "
            "would" if rank.p is not None and rank.p < ALPHA else
            "here p is not below 0.05: no evidence that the short-budget ranking held, nor that it did not")
    return (f"A tau over so few points is weak evidence: {can}; and the baseline, usually far below the top-k, "
            f"adds concordant pairs whatever the order among the top-k. So {held}.")


def comparison_lines(found: Sequence[Comparison]) -> list[str]:
    return [tables.comparison_table(found), "", *(f"- {c.sentence()}" for c in found), ""] if found else []


def baseline_lines(analysis: Analysis, options: FinalizeOptions) -> list[str]:
    baseline = find(analysis.summaries, "baseline")
    if baseline is None:
        return ["The spec has no [baseline], so there is no baseline row to compare with.", ""]
    found = analysis.family(compare.TOP_VS_BASELINE)
    m = found[0].family_size if found else 0
    lines = [f"Each top-k configuration vs the baseline (`{baseline.name}`), paired by seed: the mean of the "
             "per-seed differences over the seeds both finished, its 95% t-interval, the paired t-test's p and that "
             f"p Holm-adjusted over the {m} planned comparison{'s' if m != 1 else ''} (the top-k were picked "
             "among many trials; a comparison left without a p, for want of two shared seeds, still counts in "
             f"the {m}, the conservative choice). Verdicts are drawn under `{analysis.primary}` alone, the first "
             "protocol of `[finalize] eval`; the other protocols' comparisons are descriptive (intervals, no "
             f"verdict). A verdict is better or worse when the Holm-adjusted p is below {ALPHA:g}, else "
             "inconclusive; where every seed moved by exactly the same amount the t-test is undefined and the "
             "exact sign-flip p decides instead; a pair in which a configuration diverged on a seed is unstable, "
             "never better or worse. \"detectable (80%)\" is the smallest difference a paired t-test on these "
             "seeds finds with 80% power at the observed spread of the differences, at the level of Holm's first "
             f"step, alpha / m = {ALPHA:g} / {max(m, 1)} (exact, from the noncentral t distribution). "
             f"{permutation_note(options)}", "", INTERVALS, ""]
    if baseline.role("top"):
        lines += [f"The baseline recipe is itself one of the top configurations ({baseline.name}).", ""]
    return lines + comparison_lines(found)


def r101_lines(analysis: Analysis) -> list[str]:
    """The two arms' recipes as what they are (one tuned by the search, one a fixed rule), then the comparison."""
    pretrained, scratch = find(analysis.summaries, "r101-imagenet"), find(analysis.summaries, "r101-scratch")
    for s, what in ((pretrained, "ImageNet-pretrained"), (scratch, "from-scratch")):
        if s is None or not s.ok:
            why = tables.failure_reference(s, analysis.summaries) if s else "not planned"
            return [f"No ResNet-101 comparison: the {what} run has no result ({why}).", ""]
    budget = (f"{epochs_text(pretrained.configuration.config.epochs)} pretrained, "
              f"{scratch.configuration.config.epochs:g} from scratch")
    best = find(analysis.summaries, "top")
    searched_on = best.configuration.config.backbone if best is not None else "the study's backbone"
    lines = [f"The pretrained arm's recipe is the best configuration's (trial {pretrained.configuration.trial}), "
             f"tuned by the search on {searched_on} with an ImageNet-pretrained backbone and not re-tuned for "
             "ResNet-101. The scratch arm's recipe is that one changed by a fixed rule, `[finalize.scratch]` (by "
             "default after He et al. 2019: the whole network at the head's learning rate, a linear warm-up, the "
             "same budget), which no search tuned. So the comparison is \"at this budget, with these recipes\": it "
             "does not say what a scratch recipe tuned as hard as the pretrained one would reach. The settings in "
             "which they differ:", "",
             tables.recipe_table(pretrained, scratch), ""]
    for c in analysis.family(compare.PRETRAINED_VS_SCRATCH):
        lines += [f"At this budget ({budget}) and with these recipes, {c.sentence()}", ""]
    lines += [f"Context: {HE_ET_AL} found on COCO detection that networks trained from random initialisation "
              "catch up with ImageNet pre-training given normalisation that suits them (GroupNorm or SyncBN) and "
              "about three times the fine-tuning schedule. A gap here measures pre-training at this budget and "
              "with these recipes, not pre-training as such; `[finalize.scratch] epochs_multiplier` asks the "
              "longer question.", ""]
    return lines


def ablation_lines(analysis: Analysis, options: FinalizeOptions) -> list[str]:
    """The controlled experiments: one table and one forest plot of every factor's effect around the centre."""
    ablation = options.ablation
    centre = find(analysis.summaries, "ablation-centre")
    if not ablation.factors or centre is None:
        return ["No `[finalize.ablation]` in the spec: no controlled one-factor experiments.", ""]
    protocol = analysis.primary
    found = [c for c in analysis.family(compare.ABLATION) if c.protocol == protocol]
    by_name = {s.name: s for s in analysis.summaries}
    cfg = centre.configuration.config
    budget = (f"the search's budget ({epochs_text(cfg.epochs)} of `{cfg.train_split}`, as a trial trains)"
              if ablation.budget == "search" else f"the full budget ({epochs_text(cfg.epochs)} of `{cfg.train_split}`)")
    lines = [f"One factor at a time around `{centre.name}` ({centre.configuration.description}), each value trained "
             f"at {budget} over the same seeds as the centre, which is trained again there, and scored on "
             f"`{cfg.val_split}`, which nothing selected on. Each difference is paired by seed with the centre and "
             f"Holm-adjusted over the {len(found)} experiment{'s' if len(found) != 1 else ''}; what each changed "
             "besides its factor (an optimizer brings its own lr) is in the configuration's description in the "
             "final table. Figure: `ablation-forest` in [figures.html](figures.html).", "",
             tables.ablation_table(centre, [(by_name[c.a], c) for c in found], protocol), ""]
    return lines + [f"- {c.sentence()}" for c in found] + [""]


def gallery_lines(shown: Gallery) -> list[str]:
    """The pictures of final/predictions/, each with why its image was chosen."""
    arms = ", ".join(f"{p.label} (`{p.configuration}`, seed {p.seed}"
                     + (f", under `{p.protocol}`" if p.protocol != shown.protocol else "") + ")" for p in shown.panels)
    lines = [f"Per val image: the image, its ground truth and the prediction of {arms}, under `{shown.protocol}`, in "
             "VOC's colours (void in its cream); each prediction titled with that image's mIoU.", ""]
    for image_id in shown.ids:
        lines += [f"![{image_id}](predictions/{image_id}.png)", "", f"`{image_id}`: {shown.reasons[image_id]}.", ""]
    return lines


def family_lines(analysis: Analysis) -> list[str]:
    """What DeepLab's two additions buy on top of the tuned DeepLabV3: the V3+ decoder ([finalize] variants, a
    retrained configuration) and the dense CRF (a protocol: the same runs post-processed)."""
    variants = [c for c in analysis.family(compare.VARIANT) if c.protocol == analysis.primary]
    gains = compare.crf_gains(analysis.summaries, analysis.protocols)
    lines = []
    if variants:
        by_name = {s.name: s for s in analysis.summaries}
        lines += ["The best configuration retrained as each `[finalize] variants` model over the same seeds, paired by "
                  "seed with the best DeepLabV3 and Holm-adjusted over the variants:", "",
                  *(f"- {c.sentence()} It costs {findings.cost_against(by_name[c.a], by_name[c.b])}."
                    for c in variants),
                  ""]
    if gains:
        lines += ["The dense CRF refines the same runs' averaged probabilities (segtrain.crf, DeepLab v2's settings), "
                  "so each seed is compared with itself without the CRF: what it buys, and at what evaluation time "
                  "(CPU work, in a pool of processes).", "", *(f"- {gain.sentence()}." for gain in gains), ""]
    return lines


def factor_lines(found: Sequence[Effect]) -> list[str]:
    if not found:
        return ["No searched parameter was sampled by a trial that reached its first evaluation.", ""]
    lines = ["For each searched parameter, the search's trials grouped by value (categorical) or by tercile of the "
             "sampled values (float and int; each range holds about a third of the trials): how many reached the "
             "first evaluation and their median and best score there (complete and pruned trials alike), and the "
             "complete trials' median and best score at the end of the search budget.", ""]
    for effect in found:
        lines += [effect.sentence(), "", tables.effect_table(effect), ""]
    return lines + [FACTOR_CAVEAT + " Figure: `factor-effects` in [figures.html](figures.html).", ""]


def importance_lines(rankings: Sequence[Ranking]) -> list[str]:
    counts = "; and over ".join(f"the {r.n} {r.trials} (target_quantile {r.target_quantile:.3g}: a top set of "
                                f"{r.top})" for r in rankings)
    return [f"{EVALUATOR_NAME}, computed twice: over {counts}. Feasible trials only: a trial never trained "
            "(predicted out of memory, recorded as 0) or diverged says nothing about how its values train. The "
            "top set PED-ANOVA contrasts with all the trials is its `target_quantile` of them: Optuna's default "
            f"0.1, raised so that the set holds at least {MIN_TOP_TRIALS} trials (at most half). The second "
            "ranking keeps the trials that pruning stopped, so that the survivors of pruning do not decide alone. "
            "With a few dozen trials, treat small differences between parameters as noise.", "",
            tables.importance_table(rankings), ""]


def recipe_lines(study: optuna.Study) -> list[str]:
    """The published recipes the search ran first ([recipes.NAME]), each with its source and how it did."""
    seeded = [t for t in study.get_trials(deepcopy=False) if "recipe" in t.user_attrs]
    if not seeded:
        return []
    ranked = [t.number for t in ranked_trials(study)]
    rows = [[t.number, t.user_attrs["recipe"], outcome(t),
             f"{ranked.index(t.number) + 1} of {len(ranked)}" if t.number in ranked else "-", t.user_attrs["source"]]
            for t in seeded]
    return ["The published recipes the search ran right after the baseline, each once, as the spec's `[recipes]` "
            "give them (source: what it is and what was adapted to the space):", "",
            markdown_table(["trial", "recipe", "outcome", "rank", "source"], rows), ""]


def cost_lines(spec: StudySpec, study: optuna.Study, summaries: Sequence[Summary]) -> list[str]:
    lines = ["A lab pays in device-hours: a configuration is on the Pareto front when no other reaches at least its "
             "mIoU in at most its hours. Hours are wall time on a run's one device (GPU-hours on a GPU, CPU-hours "
             "on a CPU). Figures `cost-final` and `cost-search` in [figures.html](figures.html).", ""]
    final = pareto.final_points(summaries)
    if final:
        on_front = pareto.front(pareto.cost_study(final))
        lines += [tables.cost_table(final, on_front, miou_title(OWN_PROTOCOL)), "",
                  f"On the front: {', '.join(on_front)}.", ""]
    search = pareto.search_points(study)
    if search:
        lines += [f"In the search ({len(search)} complete feasible trials, scored on "
                  f"`{spec.train_config().val_split}` at the search budget), on the front: "
                  f"{', '.join(pareto.front(pareto.cost_study(search)))}.", ""]
    return lines


def docs_link(final_dir: Path) -> str:
    if DOCS_RESULTS.exists():
        return f"[docs/results.md]({Path(os.path.relpath(DOCS_RESULTS, final_dir.resolve())).as_posix()})"
    return "docs/results.md in the deeplab-hpo repository"


def published_lines(spec: StudySpec, final_dir: Path, summaries: Sequence[Summary]) -> list[str]:
    synthetic = spec.train_config().synthetic
    found = [] if synthetic else matches(summaries)
    caveat = ("This study ran on **synthetic** data: these figures are context, not a target, and none is set "
              "beside its numbers." if synthetic else
              "A configuration appears beside a figure only where backbone (ImageNet-pretrained), splits (trained "
              "on train_aug, scored on val), training output stride and evaluation protocol (output stride, "
              "scales, flip) are the same; what still differs is listed, and the training recipe (crops, batch, "
              "schedule) may differ too. In particular mmsegmentation's single-scale (and multi-scale) figures "
              "score each image resized to a 512 short side first (its VOC test pipeline), where this report "
              "scores it at its own size; and finalize's default 46 epochs are about 30k iterations at batch 16, "
              "between mmsegmentation's 20k and 40k rows, both shown.")
    return ["## Published reference figures (not measured here)", "",
            "Published DeepLabV3 results on PASCAL VOC 2012 **val**, mIoU in **percent** (this report's own numbers "
            "are fractions; beside a figure they are shown in percent), ImageNet-pretrained backbones trained on "
            f"train_aug. Protocols, caveats and how each was checked: {docs_link(final_dir)}. {caveat}", "",
            tables.published_table(PUBLISHED, found), ""]


def report_markdown(spec: StudySpec, study: optuna.Study, options: FinalizeOptions, analysis: Analysis,
                    png_line: str, final_dir: Path, shown: Gallery | None = None) -> str:
    counts = Counts.of(study)
    summaries = analysis.summaries
    final_seconds = sum(run.result.seconds for s in summaries for run in s.ok)
    scratch = options.scratch.epochs_multiplier
    configurations = len(summaries)
    lines = [
        f"# Final results: study `{spec.study.name}`", "",
        f"{configurations} configurations retrained on `{options.train_split}` for {epochs_text(options.epochs)}"
        + (f" ({options.epochs * scratch:g} for the scratch arm)" if scratch != 1 else "")
        + f" with seeds {', '.join(map(str, options.seeds))} after a search of {len(study.trials)} trials, scored "
        f"on `{options.val_split}`; verdicts under `{analysis.primary}`, each at the seeds both arms finished.", "",
        "## Findings", "", *findings.lines(spec, study, options, analysis), "",
        "## Final table", "",
        f"Spec `{spec.path}`, storage `{safe_url(spec.study.storage)}`. {selection_sentence(spec, options)}"
        + (f" {overlap}" if (overlap := seed_overlap_sentence(spec, options)) else ""), "",
        f"Per configuration: seeds finished/planned, the {miou_title(OWN_PROTOCOL)} (single scale, at the output "
        "stride it trained with, no flip) as mean ± sample standard deviation over the finished seeds, and the "
        "95% t-interval of that mean. A seed that failed (diverged, out of memory, weights unavailable) is counted "
        "in its row and its reason given in the notes below the table, and it is left out of the mean, never "
        "dropped silently; a diverged seed is also an outcome "
        "of its configuration, so every comparison of that configuration is unstable rather than judged on the "
        "seeds it survived (out of memory and unavailable weights say nothing of how a configuration trains). "
        "Peak memory is each run's own (CUDA: "
        "the most the allocator reserved; CPU: peak resident set since the run started, what the process already "
        "held included).",
        "",
        tables.final_table(summaries), "",
    ]
    if any("weights unavailable" in s.status for s in summaries):
        lines += ["To run the pretrained ResNet-101 offline, pass a local torchvision ResNet-101 state_dict: "
                  "`--pretrained-weights PATH` (or `[finalize] pretrained_weights`).", ""]
    lines += [
        f"## {findings.BASELINE}", "", *baseline_lines(analysis, options),
        f"## {findings.RANK}", "", *rank_lines(spec, study, options, analysis),
        f"## {findings.R101}", "", *r101_lines(analysis),
        f"## {findings.ABLATION}", "", *ablation_lines(analysis, options),
        *([f"## {findings.FAMILY}", "", *family] if (family := family_lines(analysis)) else []),
        *([f"## {findings.PICTURES}", "", *gallery_lines(shown)] if shown is not None else []),
        f"## {findings.COST}", "", *cost_lines(spec, study, summaries),
        "## Per-class IoU (mean ± std over seeds)", "", tables.per_class_table(summaries), "",
        "## Search summary", "",
        *(f"- {line}" for line in summary_lines(study)),
        f"- trials: {len(study.trials)} in all; {counts.complete} complete, {counts.pruned} pruned, "
        f"{counts.failed} failed",
        f"- final runs: {sum(len(s.ok) for s in summaries)} of {sum(len(s.runs) for s in summaries)} with a "
        f"result, {final_seconds / 3600:.2f} run-hours ({final_seconds:.0f} s)", "",
        f"The search's scores are single short-budget runs on `{spec.train_config().val_split}`: the gap between "
        "its best trial and the baseline trial carries no test; the comparisons above do.", "",
        *recipe_lines(study),
        "## What the search's trials suggest about each factor (observational)", "", *factor_lines(analysis.effects),
        "## Parameter importance", "", *importance_lines(analysis.rankings),
        "## Figures", "",
        "[figures.html](figures.html): the gallery of predictions, optimization history, parameter importance, "
        "the expected best score against the number of trials, the controlled experiments' forest plot, what the "
        "search's trials suggest of each factor, parallel coordinates, slice plots, mIoU against device-hours "
        "(final configurations and search trials, Pareto fronts marked), learning curves of the final runs, "
        "per-class IoU bars and the best configuration's confusion matrix (self-contained, works offline). "
        f"{png_line}.", "",
        "Files: " + ", ".join(f"[{name}]({name})" for name in FILES[1:]) + ".", "",
        *published_lines(spec, final_dir, summaries),
    ]
    return "\n".join(lines)


def key_sentences(analysis: Analysis) -> list[str]:
    """The comparisons under the primary protocol (the verdicts), one sentence each (terminal and note)."""
    return [c.sentence() for c in analysis.comparisons if c.protocol == analysis.primary]


def note_markdown(spec: StudySpec, analysis: Analysis) -> str:
    """The study's dashboard note: the search description, then the final results."""
    return "\n".join([spec.to_markdown(), "## Final results", "", tables.final_table(analysis.summaries), "",
                      *(f"- {sentence}" for sentence in key_sentences(analysis)), "",
                      f"The full report and figures are attached to this study: {', '.join(FILES)}.", ""])
