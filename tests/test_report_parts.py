"""The final report's parts on hand-made results and in-memory studies (no training): which comparisons are
made and corrected, failed seeds, the words of each verdict, the splits sentence, what each factor does,
both importance rankings, the published figures' protocol matching, and the evaluation-protocol hook."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from scipy import stats as scipy_stats

from hpo.report import compare, document, factors, findings, pareto, stats, tables
from hpo.report.analysis import Analysis
from hpo.report.factors import effects, importances
from hpo.report.published import PUBLISHED, matches
from hpo.report.results import Configuration, FinalRun, protocols_of, summarize
from hpo.space import Param
from hpo.spec import StudySpec, load_spec
from segtrain.config import TrainConfig
from segtrain.evaluation import MULTI_SCALES, PER_IMAGE_COUNTS
from segtrain.metrics import PerImageCounts
from segtrain.records import TrainResult

SEEDS = (0, 1, 2)
PROTOCOLS = {"os8": {"output_stride": 8, "scales": [1.0], "flip": False},  # as evaluate_run records them
             "os8_ms_flip": {"output_stride": 8, "scales": list(MULTI_SCALES), "flip": True},
             "crf": {"output_stride": 16, "scales": [1.0], "flip": False, "crf": True}}


def configuration(name: str, roles: tuple[str, ...], search_value: float | None = None, **config) -> Configuration:
    return Configuration(name, f"the {name} recipe", roles, None, {}, TrainConfig(**config), search_value)


def runs(c: Configuration, mious: list[float | None], status: str = "diverged: loss became nan at step 7",
         **evaluations: list[float]) -> list[FinalRun]:
    """One run per seed; None is a failed seed with `status`. `evaluations`: protocol -> mIoU per seed."""
    out = []
    for seed, miou in zip(SEEDS, mious):
        result = None if miou is None else TrainResult(
            c.config.replace(seed=seed), miou, miou, [miou] + [None] * 20, 0.9, 0.8, [], 10, 60.0, 5.0, 2**30,
            40_000_000)
        extra = {p: {"miou": values[seed], "protocol": PROTOCOLS[p]} for p, values in evaluations.items()}
        out.append(FinalRun(c, seed, Path(f"/runs/{c.name}/seed-{seed}"), result,
                            "ok" if result else status, "trained", extra))
    return out


@pytest.fixture
def summaries():
    """Three top configurations and a baseline; top-3 lost a seed to divergence."""
    top = [configuration("top-1", ("top",), 0.81), configuration("top-2", ("top",), 0.80),
           configuration("top-3", ("top",), 0.79)]
    baseline = configuration("baseline", ("baseline",), 0.70)
    return summarize([*runs(top[0], [0.780, 0.790, 0.772]), *runs(top[1], [0.741, 0.752, 0.745]),
                      *runs(top[2], [0.760, None, 0.700]), *runs(baseline, [0.740, 0.750, 0.744])])


def test_failed_seeds_are_listed_with_their_reason_and_left_out_of_the_mean(summaries):
    top3 = summaries[2]
    assert (top3.seeds, top3.miou["ss"].n, top3.miou["ss"].mean) == ("2/3", 2, pytest.approx(0.73))
    assert top3.status == "seed 1: diverged: loss became nan at step 7"
    record = tables.configuration_record(top3, [0])
    assert record["failed"] == [{"seed": 1, "reason": "diverged: loss became nan at step 7"}]
    assert (record["seeds_planned"], record["seeds_finished"], record["miou"]["n"]) == (3, 2, 2)
    assert "| top-3 " in tables.final_table(summaries) and "seed 1: diverged" in tables.final_table(summaries)


def test_each_top_configuration_is_compared_with_the_baseline_holm_corrected(summaries):
    found = compare.comparisons(summaries)
    assert [(c.a, c.b, c.family) for c in found] == [(f"top-{k}", "baseline", "top-k vs baseline") for k in (1, 2, 3)]
    raw = [scipy_stats.ttest_rel([0.780, 0.790, 0.772], [0.740, 0.750, 0.744]).pvalue,
           scipy_stats.ttest_rel([0.741, 0.752, 0.745], [0.740, 0.750, 0.744]).pvalue,
           scipy_stats.ttest_rel([0.760, 0.700], [0.740, 0.744]).pvalue]  # top-3: the seeds both finished
    assert [c.paired.p for c in found] == pytest.approx(raw)
    assert [c.p_holm for c in found] == pytest.approx(stats.holm(raw))
    assert found[2].seeds == (0, 2) and found[2].paired.n == 2
    top1, top2 = found[0], found[1]
    assert top1.p_holm == pytest.approx(3 * raw[0])  # the smallest p, times the 3 comparisons
    assert top1.verdict == "better" and top2.verdict == "inconclusive"
    assert top1.sentence().startswith("`top-1` vs `baseline`: better at 3 seeds, +0.0360 mIoU ss (95% CI over seeds [")
    assert "; these seeds could detect about" in top2.sentence()
    # two seeds a wide spread apart: no difference within mIoU's range is detectable, and the report says so
    assert found[2].paired.mdd > 1 and compare.detectable(found[2].paired.mdd) == \
        f"no difference mIoU can show (the smallest detectable, {found[2].paired.mdd:.2f}, exceeds its range of 1)"
    assert compare.detectable(0.04123) == "about 0.0412"
    assert re.search(r"^\| top-3 .*\| > 1 +\| unstable \(1 of 3 seeds diverged\) \|$", tables.comparison_table(found),
                     re.M)
    record = top1.record()
    assert set(record) >= {"a", "b", "difference", "ci95", "p", "p_holm", "verdict", "p_permutation", "n", "mdd"}
    assert record["p_permutation"] == 0.25 and record["ci95"][0] > 0


def test_a_comparison_without_two_shared_seeds_is_inconclusive_with_its_reason():
    a, b = configuration("r101-imagenet", ("r101-imagenet",)), configuration("r101-scratch", ("r101-scratch",))
    summaries = summarize([*runs(a, [0.7, None, None], "weights unavailable: offline"),
                           *runs(b, [0.5, 0.52, None], "out of memory: CUDA out of memory")])
    (found,) = compare.comparisons(summaries)
    assert (found.family, found.paired.n, found.verdict, found.p_holm) == ("pretrained vs scratch", 1, "inconclusive",
                                                                          None)
    assert found.reason == "1 seed finished in both, a test needs 2"
    assert "from one seed (1 seed finished in both, a test needs 2)" in found.sentence()


def test_a_failed_configuration_is_referred_to_by_its_failures_kind_and_note_not_its_long_reason():
    a, b = configuration("r101-imagenet", ("r101-imagenet",)), configuration("r101-scratch", ("r101-scratch",))
    summaries = summarize([*runs(a, [0.7, None, None], "weights unavailable: offline, and a paragraph on why"),
                           *runs(b, [None, 0.52, None], "out of memory: CUDA out of memory")])
    assert tables.failure_reference(summaries[0], summaries) == "seeds 1, 2: weights unavailable, note 1 under the final table"
    assert tables.failure_reference(summaries[1], summaries) == "seeds 0, 2: out of memory, note 2 under the final table"


def test_ablation_experiments_are_compared_with_their_centre_only():
    best = configuration("top-1", ("top",), 0.8)
    centre = configuration("ablation centre", ("ablation-centre",), epochs=4.0)  # at the search budget
    ablation = Configuration("ablation output_stride=8", "", ("ablation",), None, {},
                             TrainConfig(output_stride=8, epochs=4.0), None, ("output_stride", 8))
    summaries = summarize([*runs(best, [0.90, 0.91, 0.92]), *runs(centre, [0.70, 0.71, 0.72]),
                           *runs(ablation, [0.75, 0.77, 0.76])])
    (found,) = compare.comparisons(summaries)  # never against top-1, trained at another budget
    assert (found.a, found.b, found.family, found.verdict) == ("ablation output_stride=8", "ablation centre",
                                                               "ablation vs centre", "better")
    table = tables.ablation_table(summaries[1], [(summaries[2], found)], "ss")
    assert re.search(r"^\| \(centre\) +\| +\| ablation centre +\| 3/3 ", table, re.M)
    assert re.search(r"^\| output_stride +\| 8 +\| ablation output_stride=8 +\| 3/3 .*\| \+0\.0500 .*\| better +\|",
                     table, re.M)


def test_a_variant_is_compared_with_the_best_configuration():
    best = configuration("top-1", ("top",), 0.8)
    variant = Configuration("variant deeplabv3plus", "", ("variant",), None, {}, TrainConfig(model="deeplabv3plus"),
                            None, ("model", "deeplabv3plus"))
    plus_runs = [dataclasses.replace(run, result=dataclasses.replace(run.result, seconds=seconds,
                                                                     parameters=26_680_000))
                 for run, seconds in zip(runs(variant, [0.74, 0.77, 0.75]), (69.0, 70.0, 71.0))]
    summaries = summarize([*runs(best, [0.70, 0.71, 0.72]), *plus_runs])
    (found,) = compare.comparisons(summaries)
    assert (found.a, found.b, found.family, found.paired.n) == ("variant deeplabv3plus", "top-1", "variant vs best", 3)
    assert found.paired.difference == pytest.approx(0.0433, abs=1e-4)
    # what it buys and at what cost, in one place: the family section's sentence names both runs' seconds
    analysis = Analysis(summaries, compare.comparisons(summaries, "ss"), compare.rank_agreement(summaries), [], [])
    family = "\n".join(document.family_lines(analysis))
    assert f"- {found.sentence()} It costs 70 s a run against 60 s for `top-1` (training and its evaluation, mean " \
           "over seeds), 26.7M parameters against 40.0M." in family


def test_rank_agreement_is_kendalls_tau_over_the_search_trials(summaries):
    agreement = compare.rank_agreement(summaries)
    assert agreement.names == ("top-1", "top-2", "top-3", "baseline")
    means = [s.miou["ss"].mean for s in summaries]
    assert agreement.rank.tau == pytest.approx(scipy_stats.kendalltau([0.81, 0.80, 0.79, 0.70], means).statistic)


def test_other_protocols_become_columns_and_comparisons_of_their_own():
    """The hook for segtrain.evaluation: a run's evaluations under more protocols are one more mIoU column."""
    best, baseline = configuration("top-1", ("top",)), configuration("baseline", ("baseline",))
    runs_ = [*runs(best, [0.70, 0.71, 0.72], os8=[0.73, 0.74, 0.75]),
             *runs(baseline, [0.60, 0.61, 0.62], os8=[0.66, 0.62, 0.65])]
    assert protocols_of(runs_) == ["ss", "os8"]
    summaries = summarize(runs_)
    assert summaries[0].miou["os8"].mean == pytest.approx(0.74)
    assert "| mIoU ss " in tables.final_table(summaries) and "| mIoU os8 " in tables.final_table(summaries)
    assert {"miou", "miou_os8", "miou_os8_ci95_low"} <= set(tables.summary_record(summaries[0]))
    assert [c.protocol for c in compare.comparisons(summaries, "os8")] == ["os8"]
    assert tables.configuration_record(summaries[0], [0])["miou_os8"]["n"] == 3
    # trained at OS 16: its ss column matches the published OS 16/16 figures, its os8 column (eval OS 8) none
    assert {(m.protocol, m.figure.train_output_stride, m.figure.protocol.output_stride)
            for m in matches(summaries)} == {("ss", 16, 16)}


def test_published_figures_sit_beside_a_column_of_the_same_protocol_only():
    r101 = configuration("r101-imagenet", ("r101-imagenet",), backbone="resnet101", output_stride=16)
    r50 = configuration("top-1", ("top",), output_stride=8)  # ImageNet-pretrained ResNet-50 at OS 8
    scratch = configuration("r101-scratch", ("r101-scratch",), backbone="resnet101", pretrained=None)
    on_train = configuration("baseline", ("baseline",), train_split="train")  # VOC train, not train_aug
    plus = configuration("variant deeplabv3plus", ("variant",), model="deeplabv3plus", backbone="resnet101")
    summaries = summarize([*runs(r101, [0.77, 0.78, 0.76], os8=[0.78, 0.79, 0.77], os8_ms_flip=[0.8, 0.8, 0.8]),
                           *runs(r50, [0.75, 0.76, 0.77]), *runs(scratch, [0.5, 0.5, 0.5]),
                           *runs(on_train, [0.7, 0.7, 0.7]), *runs(plus, [0.79, 0.79, 0.79], crf=[0.8, 0.8, 0.8])])
    found = {(m.figure.source.split(" ")[0], m.figure.backbone, m.configuration, m.protocol, m.figure.miou_percent)
             for m in matches(summaries)}
    # the paper's OS 16 model at eval OS 16, 8 and 8 with 6 scales + flip beside the column of that protocol; its
    # multi-scale row without flip (79.45) has no such column; the mmseg multi-scale rows need an OS 8 model's
    assert found == {("DeepLabV3", "resnet101", "r101-imagenet", "ss", 77.21),
                     ("DeepLabV3", "resnet101", "r101-imagenet", "os8", 78.51),
                     ("DeepLabV3", "resnet101", "r101-imagenet", "os8_ms_flip", 79.77),
                     ("VainF/DeepLabV3Plus-Pytorch", "resnet101", "r101-imagenet", "ss", 77.3),
                     # V3+ beside VainF's V3+ figure alone, and its crf column beside none
                     ("VainF/DeepLabV3Plus-Pytorch", "resnet101", "variant deeplabv3plus", "ss", 78.3),
                     ("open-mmlab/mmsegmentation", "resnet50", "top-1", "ss", 76.17),  # 20k iterations
                     ("open-mmlab/mmsegmentation", "resnet50", "top-1", "ss", 77.68)}  # 40k
    table = tables.published_table(PUBLISHED, matches(summaries))
    assert "r101-imagenet mIoU ss = 77.00" in table and "top-1 mIoU ss = 76.00" in table
    assert "r101-imagenet mIoU os8_ms_flip = 80.00" in table


def test_the_splits_sentence_says_whether_selection_biases_the_table(tmp_path):
    held_out = tmp_path / "held.toml"
    held_out.write_text('[train]\ntrain_split = "train_aug_search"\nval_split = "holdout"\n'
                        '[space]\nlr = {type = "float", low = 0.001, high = 0.1}\n')
    same = tmp_path / "same.toml"
    same.write_text('[space]\nlr = {type = "float", low = 0.001, high = 0.1}\n'
                    '[finalize]\ntrain_split = "train"\n')
    spec = load_spec(held_out)
    assert document.selection_sentence(spec, spec.finalize) == (
        "The search trained on `train_aug_search` and selected on `holdout`; this table reports `val`, which the "
        "search never scored, so the selection does not bias it.")
    spec = load_spec(same)
    assert document.selection_sentence(spec, spec.finalize).startswith(
        "The search selected its configurations on `val`, the split this table reports, so")
    assert "finalize retrains on `train` and reports on `val`, the split the search selected on." in spec.to_markdown()


@pytest.mark.parametrize(("train", "expected"), [
    ("epochs = 2", "schedule `poly` (poly_power = 0.9), 2 epochs"),
    ("epochs = 1", "schedule `poly` (poly_power = 0.9), 1 epoch"),
    ('epochs = 4\nschedule = "wsd"\nwarmup_epochs = 0.5', "schedule `wsd` (decay_fraction = 0.2, "
                                                         "decay_shape = '1-sqrt', warmup_epochs = 0.5), 4 epochs"),
])
def test_the_search_schedule_is_named_with_its_settings(tmp_path, train, expected):
    path = tmp_path / "s.toml"
    path.write_text(f'[train]\n{train}\n[space]\nlr = {{type = "float", low = 0.001, high = 0.1}}\n')
    assert document.schedule_text(load_spec(path)) == expected


@pytest.fixture
def spec(tmp_path) -> StudySpec:
    """A study file with [finalize]'s defaults."""
    path = tmp_path / "study.toml"
    path.write_text('[space]\nlr = {type = "float", low = 0.001, high = 0.1}\n')
    return load_spec(path)


SPACE = (Param("lr", "float", low=1e-4, high=1e-1, log=True), Param("output_stride", "categorical", choices=(8, 16)))
DISTRIBUTIONS = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "output_stride": CategoricalDistribution([8, 16])}


@pytest.fixture
def searched() -> optuna.Study:
    """Twelve trials: stride 8 scores 0.1 higher at the first evaluation; lr from 1e-4 to 1e-1; the low
    halves are pruned there. Values are chosen so that medians can be read off by hand."""
    study = optuna.create_study(direction="maximize")
    for index in range(12):
        stride, lr = (8, 16)[index % 2], 10 ** (-4 + 3 * index / 11)
        first = 0.3 + 0.1 * (stride == 8) + 0.01 * index
        pruned = index < 6
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.PRUNED if pruned else TrialState.COMPLETE, value=None if pruned else first + 0.3,
            params={"lr": lr, "output_stride": stride}, distributions=DISTRIBUTIONS,
            intermediate_values={1: first} if pruned else {1: first, 2: first + 0.3}))
    return study


def test_what_each_factor_does_per_value_and_per_tercile(searched):
    lr, stride = effects(searched, SPACE)
    assert stride.grouping == "per value" and [g.label for g in stride.groups] == ["8", "16"]
    eight, sixteen = stride.groups
    # stride 8: trials 0, 2, ..., 10: first = 0.4 + 0.01 i, median over i = 0..10 step 2 = 0.45
    assert (len(eight.first), eight.median_first, eight.best_first) == (6, pytest.approx(0.45), pytest.approx(0.5))
    assert (len(eight.final), eight.median_final) == (3, pytest.approx(0.4 + 0.08 + 0.3))  # trials 6, 8, 10
    assert sixteen.median_first == pytest.approx(0.36)
    assert stride.sentence().startswith("`output_stride`: 8 had the highest median at the first evaluation, "
                                        "0.450 over 6 trials, vs 0.360 over 6 for 16 (+0.090); at the end")
    assert lr.grouping == "per tercile of the sampled values" and [len(g.first) for g in lr.groups] == [4, 4, 4]
    assert [len(g.final) for g in lr.groups] == [0, 2, 4]  # the low-lr trials were the pruned ones
    assert lr.groups[0].label.startswith("[0.0001, ") and lr.groups[-1].label.endswith(", 0.1]")
    assert "| output_stride | trials at 1st eval |" in tables.effect_table(stride)


def test_importance_is_computed_on_complete_trials_and_on_every_trial_at_the_first_evaluation(searched):
    complete, first = importances(searched)
    assert (complete.n, first.n) == (6, 12)
    assert "complete trials" in complete.trials and "complete and pruned" in first.trials
    assert set(complete.importances) == set(first.importances) == {"lr", "output_stride"}
    assert sum(first.importances.values()) == pytest.approx(1.0)
    table = tables.importance_table([complete, first])
    assert "(final score), n = 6 |" in table and "(score there), n = 12 |" in table


def test_results_json_holds_the_statistics_the_issue_names(summaries):
    found = compare.comparisons(summaries)
    data = json.loads(json.dumps(tables.results_json({"study": "s"}, summaries, found, {"rank_agreement": {}})))
    top1 = data["configurations"][0]["miou"]
    assert set(top1) == {"mean", "std", "n", "ci95"} and len(top1["ci95"]) == 2
    assert [set(c) >= {"a", "b", "difference", "ci95", "p", "p_holm", "verdict"} for c in data["comparisons"]] == \
        [True] * 3
    assert {c["verdict"] for c in data["comparisons"]} == {"better", "inconclusive", "unstable (1 of 3 seeds diverged)"}
    assert data["protocols"] == ["ss"] and len(data["runs"]) == 12


def test_the_pareto_front_is_what_no_other_configuration_beats_on_both_hours_and_miou():
    cheap, better, dominated, best = (configuration(name, ("top",)) for name in ("cheap", "better", "worse", "best"))
    summaries = summarize([*runs(cheap, [0.60, 0.60, 0.60]), *runs(better, [0.70, 0.70, 0.70]),
                           *runs(dominated, [0.65, 0.65, 0.65]), *runs(best, [0.80, 0.80, 0.80])])
    hours = {"cheap": 1.0, "better": 2.0, "worse": 3.0, "best": 4.0}
    points = {name: (hours[name], miou) for name, (_, miou) in pareto.final_points(summaries).items()}
    assert pareto.final_points(summaries)["best"] == (pytest.approx(60.0 / 3600), pytest.approx(0.80))  # runs' 60 s
    assert pareto.front(pareto.cost_study(points)) == ["cheap", "better", "best"]  # "worse" costs more, scores less
    table = tables.cost_table(points, ["cheap", "better", "best"], "mIoU ss")
    assert "| worse         | 3           | 0.6500  |              |" in table
    assert "| best          | 4           | 0.8000  | yes          |" in table


def test_the_seeded_recipes_are_listed_with_their_source_outcome_and_rank():
    study = optuna.create_study(direction="maximize")
    distributions = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}

    def trial(value, lr, state=TrialState.COMPLETE, **attrs):
        return optuna.trial.create_trial(state=state, value=value, params={"lr": lr}, distributions=distributions,
                                         user_attrs={"seconds": 1.0, **attrs}, intermediate_values={1: 0.1})

    study.add_trials([trial(0.6, 0.001, baseline=True), trial(0.7, 0.007, recipe="paper", source="Chen et al."),
                      trial(None, 0.02, TrialState.PRUNED, recipe="torchvision", source="references/segmentation"),
                      trial(0.8, 0.05)])
    text = "\n".join(document.recipe_lines(study))
    assert re.search(r"^\| 1 +\| paper +\| mIoU 0\.7000 +\| 2 of 3 +\| Chen et al\. +\|", text, re.M)
    assert re.search(r"^\| 2 +\| torchvision +\| pruned at evaluation 1 +\| - +\| references/segmentation +\|",
                     text, re.M)
    assert document.recipe_lines(optuna.create_study()) == []  # no [recipes]: no section


def test_a_diverged_seed_makes_its_comparisons_unstable_and_is_named():
    """top-1 diverges on one seed in three and is far better on the other two: today's t-test on the
    survivors would call it better; a divergence is an outcome, so the verdict is unstable."""
    top, baseline = configuration("top-1", ("top",), 0.8), configuration("baseline", ("baseline",), 0.7)
    oom = configuration("top-2", ("top",), 0.79)
    summaries = summarize([*runs(top, [0.80, None, 0.81]), *runs(oom, [0.80, 0.81, None], "out of memory: CUDA"),
                           *runs(baseline, [0.70, 0.71, 0.70])])
    unstable, excluded = compare.comparisons(summaries)
    assert stats.paired([0.80, 0.81], [0.70, 0.70]).p < 0.05  # what the survivors alone would say
    assert unstable.verdict == "unstable (1 of 3 seeds diverged)" and unstable.diverged == {"top-1": (1,)}
    assert "`top-1` diverged on seed 1" in unstable.sentence()
    assert unstable.sentence().startswith("`top-1` vs `baseline`: unstable (1 of 3 seeds diverged) at 2 seeds")
    assert unstable.record()["diverged"] == {"top-1": [1]}
    assert tables.configuration_record(summaries[0], [0])["diverged_seeds"] == [1]
    # out of memory says nothing about how top-2 trains: left out, and its two seeds are tested as before
    assert excluded.diverged == {} and excluded.verdict == stats.verdict(
        excluded.paired.difference, excluded.p_holm) and excluded.paired.n == 2
    assert tables.configuration_record(summaries[1], [0])["diverged_seeds"] == []
    data = tables.results_json({}, summaries, [unstable, excluded], {})
    assert data["comparisons"][0]["verdict"].startswith("unstable") and data["comparisons"][0]["diverged"]


def test_holm_counts_the_planned_family_and_the_detectable_difference_uses_its_level(spec):
    """Three top-k vs baseline comparisons planned, one without two shared seeds (weights unavailable): the other
    two are corrected over all 3, and their detectable difference is at alpha / 3."""
    tops = [configuration(f"top-{k}", ("top",), 0.8) for k in (1, 2, 3)]
    baseline = configuration("baseline", ("baseline",), 0.7)
    summaries = summarize([*runs(tops[0], [0.75, 0.77, 0.74]), *runs(tops[1], [0.71, 0.73, 0.705]),
                           *runs(tops[2], [0.7, None, None], "weights unavailable: offline"),
                           *runs(baseline, [0.70, 0.71, 0.70])])
    found = compare.comparisons(summaries)
    p = [c.paired.p for c in found]
    assert p[2] is None and [c.family_size for c in found] == [3, 3, 3]
    low, high = sorted(p[:2])
    assert sorted(c.p_holm for c in found[:2]) == pytest.approx([3 * low, max(3 * low, 2 * high)])
    first = found[0]
    assert first.paired.mdd_alpha == pytest.approx(0.05 / 3)
    assert first.paired.mdd == pytest.approx(stats.minimal_detectable_difference(first.paired.std, 3, 0.05 / 3))
    inconclusive = next(c for c in found if c.verdict == "inconclusive" and c.paired.mdd is not None)
    assert "(80% power at alpha 0.05 / 3 = 0.0167, Holm's first step)" in inconclusive.sentence()
    analysis = Analysis(summaries, found, compare.rank_agreement(summaries), [], [])
    text = "\n".join(document.baseline_lines(analysis, spec.finalize))
    assert "Holm-adjusted over the 3 planned comparisons" in text and "still counts in the 3" in text
    assert "alpha / m = 0.05 / 3" in text and "Verdicts are drawn under `ss` alone" in text


def test_identical_differences_are_inconclusive_at_two_seeds_and_say_why():
    a, b = configuration("top-1", ("top",), 0.8), configuration("baseline", ("baseline",), 0.7)
    (found,) = compare.comparisons(summarize([*runs(a, [0.6, 0.7, None], "out of memory: CUDA"),
                                              *runs(b, [0.5, 0.6, 0.5])]))
    assert (found.paired.p, found.paired.p_permutation, found.p_holm, found.verdict) == \
        (None, 0.5, 0.5, "inconclusive")
    assert "on every seed (no spread, so the t-test is undefined and the exact sign-flip p = 0.5, Holm 0.5 " \
           "decides: with 2 seeds it cannot go below 0.5)" in found.sentence()
    assert tables.comparison_table([found]).count("| -  ") >= 1  # no t p, no seed interval


def test_only_the_primary_protocol_draws_verdicts():
    best, baseline = configuration("top-1", ("top",)), configuration("baseline", ("baseline",))
    summaries = summarize([*runs(best, [0.70, 0.72, 0.71], os8=[0.80, 0.81, 0.82]),
                           *runs(baseline, [0.60, 0.61, 0.62], os8=[0.60, 0.615, 0.62])])
    (primary,), (other,) = compare.comparisons(summaries, "ss"), compare.comparisons(summaries, "os8", primary=False)
    assert primary.verdict == "better" and primary.p_holm is not None
    assert (other.verdict, other.p_holm, other.primary) == ("descriptive", None, False)
    assert other.paired.p < 0.05 and other.paired.ci95 is not None  # its numbers stay; no verdict is drawn
    assert other.sentence().startswith("`top-1` vs `baseline`: descriptive (no verdict under this protocol) at 3 "
                                       "seeds, +0.1983 mIoU os8 (95% CI over seeds [")


def runs_with_counts(c: Configuration, counts: list[np.ndarray], root: Path) -> list[FinalRun]:
    """One run per seed whose own evaluation kept these per-image counts (its mIoU is theirs)."""
    out = []
    for seed, per_image in enumerate(counts):
        run_dir = root / c.name / f"seed-{seed}"
        kept = PerImageCounts(per_image.shape[0], per_image.shape[1])
        kept.counts = torch.from_numpy(per_image.astype(np.int32))
        kept.save(run_dir / PER_IMAGE_COUNTS, [f"image{i}" for i in range(per_image.shape[0])])
        miou = float(stats.miou_from_counts(per_image.sum(axis=0)))
        result = TrainResult(c.config.replace(seed=seed), miou, miou, [miou] + [None] * 20, 0.9, 0.8, [], 10,
                             60.0, 5.0, 2**30, 40_000_000)
        out.append(FinalRun(c, seed, run_dir, result, "ok", "trained"))
    return out


def test_each_comparison_has_a_paired_bootstrap_over_val_images_beside_the_seed_interval(tmp_path):
    rng = np.random.default_rng(5)
    base = [rng.integers(1, 60, size=(30, 21, 3)) for _ in range(3)]
    better = [b.copy() for b in base]
    for b in better:
        b[:, :, 2] //= 2  # half the false negatives: a higher mIoU on every image
    best, baseline = configuration("top-1", ("top",), 0.8), configuration("baseline", ("baseline",), 0.7)
    summaries = summarize([*runs_with_counts(best, better, tmp_path), *runs_with_counts(baseline, base, tmp_path)])
    (found,) = compare.comparisons(summaries)
    expected = stats.paired_bootstrap(better, base)
    assert found.bootstrap == expected and found.bootstrap.ci95[0] > 0
    assert found.bootstrap.difference == pytest.approx(found.paired.difference)  # the seed-mean difference
    assert (found.bootstrap.images, found.bootstrap.runs, found.bootstrap.resamples) == (30, 3, 2000)
    low, high = expected.ci95
    assert f"over val images (paired bootstrap, 30 images, 3 runs an arm) 95% CI [{low:+.4f}, {high:+.4f}]" \
        in found.sentence()
    assert found.record()["bootstrap"] == expected.record()
    table = tables.comparison_table([found])
    assert "95% CI (val images)" in table and f"[{low:+.4f}, {high:+.4f}]" in table
    assert "95% CI (seeds)" in table
    # a run without counts (trained before they were kept) leaves the others' seeds, or says why there are none
    (summaries[0].runs[0].run_dir / PER_IMAGE_COUNTS).unlink()
    assert compare.comparisons(summaries)[0].bootstrap == stats.paired_bootstrap(better[1:], base[1:])
    for run in summaries[0].runs[1:]:
        (run.run_dir / PER_IMAGE_COUNTS).unlink()
    (no_counts,) = compare.comparisons(summaries)
    assert no_counts.bootstrap is None and "no per-image counts" in no_counts.bootstrap_reason
    assert "over val images" not in no_counts.sentence()
    assert "paired bootstrap that resamples the val images 2,000 times" in document.INTERVALS


def test_the_rank_agreement_says_its_exact_p_and_what_so_few_points_can_show():
    exact = stats.kendall([0.9, 0.8, 0.7, 0.6], [0.75, 0.74, 0.73, 0.72])  # perfect agreement at n = 4
    text = document.small_rank_sample(exact)
    assert exact.p == pytest.approx(1 / 12) and "even a perfect agreement has p = 0.083" in text
    assert "cannot show that the short-budget ranking held" in text and "the baseline" in text
    assert "here p is not below 0.05" in text
    five = document.small_rank_sample(stats.kendall([5, 4, 3, 2, 1], [9, 8, 7, 6, 5]))
    assert "the smallest possible p is 0.017" in five and "here p = 0.017 < 0.05" in five


def test_seeds_shared_with_the_search_get_one_sentence(spec):
    assert spec.finalize.seeds == (1, 2, 3) and document.seed_overlap_sentence(spec, spec.finalize) == ""
    overlapping = dataclasses.replace(spec.finalize, seeds=(0, 1, 2))
    sentence = document.seed_overlap_sentence(spec, overlapping)
    assert sentence.startswith("Seed 0 is also the seed every search trial trained with") and sentence.count(". ") == 0


def test_importance_leaves_out_infeasible_trials_and_names_its_quantile(searched):
    """Eight trials never trained (predicted out of memory: value 0) or diverged change nothing."""
    before = importances(searched)
    for index in range(8):
        searched.add_trial(optuna.trial.create_trial(
            value=0.0, params={"lr": 10 ** (-4 + index / 4), "output_stride": 8}, distributions=DISTRIBUTIONS,
            constraints={"fits_memory": 1.0} if index % 2 else {"finite_loss": 1.0},
            intermediate_values={} if index % 2 else {1: 0.0}))
    complete, first = importances(searched)
    assert (complete.n, first.n) == (before[0].n, before[1].n) == (6, 12)
    assert complete.importances == pytest.approx(before[0].importances)
    assert first.importances == pytest.approx(before[1].importances)
    # Optuna's 0.1, raised to hold 8 trials (0.2 at 40), at most half
    assert [factors.target_quantile(n) for n in (6, 12, 40, 80, 200)] == pytest.approx([0.5, 0.5, 0.2, 0.1, 0.1])
    assert (first.target_quantile, first.top) == (0.5, 6)
    text = "\n".join(document.importance_lines([complete, first]))
    assert "target_quantile 0.5: a top set of 3" in text and "Feasible trials only" in text


def test_the_findings_carry_each_comparisons_number_and_verdict_and_what_would_decide_it(spec):
    top1 = dataclasses.replace(configuration("top-1", ("top",), 0.8), params={"lr": 0.03, "output_stride": 8})
    top2, baseline = configuration("top-2", ("top",), 0.79), configuration("baseline", ("baseline",), 0.7)
    centre = configuration("ablation centre", ("ablation-centre",), epochs=4.0, lr=0.03)
    faster = Configuration("ablation lr=0.09", "", ("ablation",), None, {}, TrainConfig(epochs=4.0, lr=0.09), None,
                           ("lr", 0.09))
    summaries = summarize([*runs(top1, [0.80, 0.82, 0.81], crf=[0.82, 0.845, 0.83]), *runs(top2, [0.715, 0.73, 0.725]),
                           *runs(baseline, [0.70, 0.71, 0.72]), *runs(centre, [0.60, 0.61, 0.62]),
                           *runs(faster, [0.50, 0.52, 0.51])], ["ss", "crf"])
    analysis = Analysis(summaries, compare.comparisons(summaries, "ss"), compare.rank_agreement(summaries), [], [])
    text = "\n".join(findings.lines(spec, optuna.create_study(), spec.finalize, analysis))
    by_pair = {(c.a, c.b): c for c in analysis.comparisons}
    for (a, b), c in by_pair.items():
        assert f"{c.paired.difference:+.4f} mIoU ss (95% CI [{c.paired.ci95[0]:+.4f}, {c.paired.ci95[1]:+.4f}]), " \
               f"{c.verdict} at 3 seeds (Holm p = {c.p_holm:.2g})" in text, (a, b)
    assert by_pair["top-1", "baseline"].verdict == "better" and by_pair["top-2", "baseline"].verdict == "inconclusive"
    assert "**`top-1` vs the baseline** (the top-1 recipe: lr 0.03, OS 8; [detail](#against-the-baseline))" in text
    assert "**lr** (one factor changed around `ablation centre`" in text and "0.09 (x3 the centre's 0.03)" in text
    assert "**The dense CRF** ([detail](#the-deeplab-family-deeplabv3-and-the-dense-crf)): `crf` vs `ss` on " \
           "`top-1`: +0.0217 mIoU" in text
    undecided = by_pair["top-2", "baseline"].paired
    needed = stats.seeds_needed(undecided.difference, undecided.std, stats.ALPHA / 2)
    assert f"`top-2` vs `baseline` ({undecided.difference:+.4f}) about {needed} seeds" in text
    seeds = [1, 2, 3, *(s for s in range(4, needed + 2) if s != 0)][:needed]  # never the search's seed 0
    assert f"--seeds {' '.join(map(str, seeds))}` trains {needed - 3} more seeds of every configuration" in text
    assert findings.anchor("Did the search's ranking hold at full budget?") == \
        "#did-the-searchs-ranking-hold-at-full-budget"
