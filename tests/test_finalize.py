"""hpo.finalize end to end on a tiny synthetic study: top-2 over 2 seeds, the baseline, one ablation,
ResNet-101 pretrained (a local state_dict) vs scratch with its own recipe; resume after Ctrl-C; outputs
and their statistics; weights unavailable; bad input.

The search (2 trials) and the finalize runs happen once, in module fixtures; the tests read what
they left. A run trains 2 steps on 4 images of at most 32 px and evaluates twice on 4, then once at output
stride 8.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import math
import re
import tomllib
from pathlib import Path
from urllib.error import URLError

import optuna
import PIL.Image
import plotly.io
import pytest
import scipy.stats
import torch
import torchvision.models._api
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta
from optuna.trial import TrialState
from optuna_dashboard import get_note
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects  # what the dashboard reads
from search_helpers import write_probe, write_spec
from torchvision.models import resnet101

import hpo.finalize.runs
import hpo.report.document
import hpo.search.cli
import segtrain.crf
import segtrain.engine
from hpo.finalize.cli import cli, main
from hpo.plan.cost import CostModel
from hpo.plan.estimate import Estimator
from hpo.plan.probe import matching_probe
from hpo.report.artifacts import DASHBOARD_DRAWS
from hpo.report.gallery import LINE_PIXELS, MARGIN_PIXELS, MIN_CELL_PIXELS
from hpo.spec import load_spec
from segtrain.cli import run
from segtrain.config import TrainConfig
from segtrain.engine import CHECKPOINT, train

TRAIN = """
synthetic = true
synthetic_train_images = 4
synthetic_val_images = 4
synthetic_image_size = 32
pretrained = "none"
head_lr_multiplier = 1.0
crop_size = 33
batch_size = 2
epochs = 1.0
eval_points = 2
workers = 0
device = "cpu"
"""
SPACE = """
lr = {type = "float", low = 1e-3, high = 1e-1, log = true}
optimizer = {type = "categorical", choices = ["sgd", "adam"]}
momentum = {type = "float", low = 0.8, high = 0.95, when = {optimizer = "sgd"}}
"""
BASELINE = 'lr = 0.02\noptimizer = "sgd"\nmomentum = 0.9'
FINALIZE = """
[finalize]
top_k = 2
seeds = [0, 1]
epochs = 1.0
eval = ["ss", "os8"]
[finalize.scratch]
lr_multiplier = 2.0
warmup_fraction = 0.5
[finalize.ablation]
head_lr_multiplier = [1.0, 10.0]
"""
# the baseline is one of the 2 trials; head_lr_multiplier 1 is the best's own ([train])
CONFIGURATIONS = ["top-1", "top-2", "ablation head_lr_multiplier=10.0", "r101-imagenet", "r101-scratch"]
FINAL = Path("runs/fin/final")
OUTPUTS = ("report.md", "results.csv", "results.json", "per_class_iou.csv", "figures.html")


def quiet(argv: list[str]) -> tuple[int, str, str]:
    """run(main, argv): exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(main, argv, prog="hpo.finalize")
    return code, out.getvalue(), err.getvalue()


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def workdir(module_tmp):
    """The module's cwd (runs/ goes there), and one intra-op thread: on tensors this small a second
    thread gains nothing, and on a shared 2-core machine its spin-waits made each run ~4x slower."""
    directory = module_tmp("finalize")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(directory)
            (directory / "runs" / "empty").mkdir(parents=True)
            yield directory
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def spec(workdir) -> Path:
    """A searched study: the baseline and one sampled trial, both complete."""
    path = write_spec(workdir, "fin", workdir / "cache", train=TRAIN, space=SPACE, baseline=BASELINE,
                      pruner='type = "none"', extra=FINALIZE)
    assert run(hpo.search.cli.main, ["--study", str(path), "--trials", "2"]) == 0
    return path


@pytest.fixture(scope="module")
def weights(workdir) -> Path:
    """A ResNet-101 state_dict standing in for ImageNet weights (seeded, so not what a fresh model holds)."""
    torch.manual_seed(1234)
    path = workdir / "resnet101-local.pth"
    torch.save(resnet101().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def finalized(spec, weights):
    """finalize interrupted (Ctrl-C) inside its third run, then run again to the end.

    Returns what each invocation trained, the models built, the output and the files written.
    """
    first, second, built = [], [], []
    evaluated: dict[str, list[tuple[str, bool]]] = {"first": [], "second": []}

    def interrupt(result):
        raise KeyboardInterrupt

    def record(calls):
        def fake_train(cfg, **kwargs):
            calls.append((cfg, kwargs["resume"]))
            if calls is first and len(first) == 3:  # after its first evaluation, so a checkpoint exists
                return train(cfg, on_eval=interrupt, **kwargs)
            return train(cfg, **kwargs)
        return fake_train

    evaluate_run = hpo.finalize.runs.evaluate_run

    def record_evaluation(calls):
        def fake_evaluate_run(run_dir, protocol, **kwargs):
            run_dir = Path(run_dir)
            calls.append((f"{run_dir.parent.name.rsplit('-', 1)[0]}/{run_dir.name}",
                          not (run_dir / f"eval-{protocol.name}.json").exists()))
            return evaluate_run(run_dir, protocol, **kwargs)
        return fake_evaluate_run

    build_model = segtrain.engine.build_model

    def record_model(backbone, output_stride, num_classes, pretrained, aux_loss, model_name):
        model = build_model(backbone, output_stride, num_classes, pretrained, aux_loss, model_name)
        built.append((backbone, pretrained, {k: v.clone() for k, v in model.backbone.state_dict().items()}))
        return model

    argv = ["--study", str(spec), "--pretrained-weights", str(weights)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segtrain.engine, "build_model", record_model)
        patch.setattr(hpo.finalize.runs, "train", record(first))
        patch.setattr(hpo.finalize.runs, "evaluate_run", record_evaluation(evaluated["first"]))
        interrupted = quiet(argv)
        after_interrupt = {p.parent.parent.name.rsplit("-", 1)[0] + "/" + p.parent.name: p.name
                           for p in sorted(FINAL.glob("*/seed-*/*")) if p.name in ("result.json", CHECKPOINT)}
        patch.setattr(hpo.finalize.runs, "train", record(second))
        patch.setattr(hpo.finalize.runs, "evaluate_run", record_evaluation(evaluated["second"]))
        completed = quiet(argv)
    return {"first": first, "second": second, "built": built, "evaluated": evaluated, "interrupted": interrupted,
            "after_interrupt": after_interrupt, "completed": completed,
            "files": {name: (FINAL / name).read_text() for name in OUTPUTS}}


def test_ctrl_c_keeps_finished_runs_and_the_rerun_trains_only_what_is_missing(finalized):
    code, _, err = finalized["interrupted"]
    assert code == 130 and "interrupted" in err
    first, second = finalized["first"], finalized["second"]
    assert len(first) == 3
    # top-1's two seeds finished; top-2 seed 0 stopped after its first evaluation, with a checkpoint
    assert finalized["after_interrupt"] == {"top-1/seed-0": "result.json", "top-1/seed-1": "result.json",
                                            "top-2/seed-0": CHECKPOINT}
    assert finalized["completed"][0] == 0
    assert second[0] == (first[2][0], True)  # the interrupted run resumes from its checkpoint
    assert all(not resume for _, resume in second[1:])  # the rest start fresh
    trained = [cfg for cfg, _ in second]
    assert first[0][0] not in trained and first[1][0] not in trained  # finished runs are reused
    assert len(second) == 2 * len(CONFIGURATIONS) - 2
    assert sorted((cfg.backbone, cfg.seed) for cfg in trained) == \
        [("resnet101", 0), ("resnet101", 0), ("resnet101", 1), ("resnet101", 1),
         ("resnet50", 0), ("resnet50", 0), ("resnet50", 1), ("resnet50", 1)]


def test_results_hold_every_run_and_each_configuration_statistics(finalized, spec):
    records = rows(finalized["files"]["results.csv"])
    runs = [r for r in records if r["kind"] == "run"]
    means = [r for r in records if r["kind"] == "mean"]
    assert [(r["configuration"], r["seed"]) for r in runs] == [(c, s) for c in CONFIGURATIONS for s in "01"]
    assert [r["configuration"] for r in means] == CONFIGURATIONS
    assert all(r["status"] == "ok" for r in records)
    for mean in means:
        own = [r for r in runs if r["configuration"] == mean["configuration"]]
        values = [float(r["miou"]) for r in own]
        assert float(mean["miou"]) == pytest.approx(sum(values) / 2)
        assert float(mean["miou_std"]) == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
        half_width = scipy.stats.t.ppf(0.975, 1) * float(mean["miou_std"]) / 2 ** 0.5
        assert float(mean["miou_ci95_low"]) == pytest.approx(float(mean["miou"]) - half_width)
        assert float(mean["miou_ci95_high"]) == pytest.approx(float(mean["miou"]) + half_width)
        assert mean["runs"] == "2" and mean["miou_n"] == "2"
        assert 0 <= float(mean["pixel_accuracy"]) <= 1 and mean["pixel_accuracy_std"] != ""
        for column in ("seconds", "images_per_second", "peak_memory_bytes", "parameters"):
            assert float(mean[column]) > 0 and mean[f"{column}_std"] != ""
    for run_row in runs:  # each row is its run dir's result
        result = json.loads((Path(run_row["run_dir"]) / "result.json").read_text())
        assert float(run_row["miou"]) == result["final_miou"] and int(run_row["parameters"]) == result["parameters"]
    data = json.loads(finalized["files"]["results.json"])
    assert [c["configuration"] for c in data["configurations"]] == CONFIGURATIONS
    for configuration, mean in zip(data["configurations"], means):
        assert configuration["miou"] == {"mean": float(mean["miou"]), "std": float(mean["miou_std"]), "n": 2,
                                         "ci95": [float(mean["miou_ci95_low"]), float(mean["miou_ci95_high"])]}
        assert (configuration["seeds_planned"], configuration["seeds_finished"], configuration["failed"]) == (2, 2, [])
    assert len(data["runs"]) == 10 and all(len(r["history"]) == 2 for r in data["runs"])
    assert data["seeds"] == [0, 1] and data["epochs"] == 1.0 and data["protocols"] == ["ss", "os8"]
    assert data["splits"] == {"search_train": "train_aug", "search_val": "val", "final_train": "train_aug",
                              "final_val": "val", "selected_on_reported_split": True}
    per_class = rows(finalized["files"]["per_class_iou.csv"])
    assert {r["configuration"] for r in per_class} == set(CONFIGURATIONS) and "background" in per_class[0]


def test_every_run_is_also_scored_at_output_stride_8_once(finalized):
    """[finalize] eval = ["ss", "os8"]: each finished run's checkpoint is scored at output stride 8 (these runs
    trained at 16), in RUN/eval-os8.json; the rerun after Ctrl-C reuses the two the first invocation made."""
    assert finalized["evaluated"]["first"] == [("top-1/seed-0", True), ("top-1/seed-1", True)]
    assert sorted(finalized["evaluated"]["second"]) == sorted(
        (f"{name}/seed-{seed}", name != "top-1") for name in CONFIGURATIONS for seed in (0, 1))
    records = [r for r in rows(finalized["files"]["results.csv"]) if r["kind"] == "run"]
    for record in records:
        evaluation = json.loads((Path(record["run_dir"]) / "eval-os8.json").read_text())
        assert evaluation["protocol"] == {"name": "os8", "output_stride": 8, "scales": [1.0], "flip": False}
        assert float(record["miou_os8"]) == evaluation["miou"] and evaluation["images"] == 4
    data = json.loads(finalized["files"]["results.json"])
    for configuration in data["configurations"]:
        values = [float(r["miou_os8"]) for r in records if r["configuration"] == configuration["configuration"]]
        assert configuration["miou_os8"]["mean"] == pytest.approx(sum(values) / 2)
    assert {c["protocol"] for c in data["comparisons"]} == {"ss", "os8"}
    header = next(line for line in finalized["files"]["report.md"].splitlines() if line.startswith("| configuration"))
    assert "| mIoU ss " in header and "| mIoU os8 " in header


def test_comparisons_are_paired_by_seed_with_scipys_numbers(finalized):
    data = json.loads(finalized["files"]["results.json"])
    by_seed = {name: {r["seed"]: r["miou"] for r in data["runs"] if r["configuration"] == name}
               for name in CONFIGURATIONS}
    comparisons = {(c["a"], c["b"]): c for c in data["comparisons"] if c["protocol"] == "ss"}
    # one of the two tops is the baseline (merged), so the other is the one top-k comparison; the ablation is
    # compared with its centre, top-1, the best; pretrained with scratch. Each family has one member, so Holm leaves p be.
    baseline = next(c["configuration"] for c in data["configurations"] if "baseline" in c["roles"])
    other = next(name for name in ("top-1", "top-2") if name != baseline)
    assert list(comparisons) == [(other, baseline), ("ablation head_lr_multiplier=10.0", "top-1"),
                                 ("r101-imagenet", "r101-scratch")]
    for (a, b), c in comparisons.items():
        x, y = [by_seed[a][s] for s in (0, 1)], [by_seed[b][s] for s in (0, 1)]
        d = [x[0] - y[0], x[1] - y[1]]
        assert c["n"] == 2 and c["seeds"] == [0, 1] and c["protocol"] == "ss"
        assert c["difference"] == pytest.approx(sum(d) / 2)
        if d[0] != d[1]:  # else the t statistic is undefined (scipy: nan) and p is 1 for no difference, else 0
            test = scipy.stats.ttest_rel(x, y)
            assert c["p"] == pytest.approx(test.pvalue)
            assert c["ci95"] == pytest.approx(list(test.confidence_interval(0.95)))
        # the exact sign-flip p: the share of the 4 sign assignments whose |mean| reaches the observed one
        flips = [abs(s0 * d[0] + s1 * d[1]) >= abs(d[0] + d[1]) - 1e-12 for s0 in (1, -1) for s1 in (1, -1)]
        assert c["p_permutation"] == pytest.approx(sum(flips) / 4)
        p = c["p"] if c["p"] is not None else c["p_permutation"]  # no spread: the exact sign-flip p decides
        assert c["p_holm"] == (None if c["family"] == "pretrained vs scratch" else pytest.approx(p))
        decisive = c["p_holm"] if c["p_holm"] is not None else p
        assert c["verdict"] == ("inconclusive" if decisive >= 0.05 else "better" if c["difference"] > 0 else "worse")
        assert c["family_size"] == 1 and c["mdd_alpha"] == 0.05 and c["diverged"] == {}
        assert c["bootstrap"]["runs"] == 2 and c["bootstrap"]["images"] == 4  # over the 4 val images
        assert c["bootstrap"]["difference"] == pytest.approx(c["difference"])
    assert {c["verdict"] for c in data["comparisons"] if c["protocol"] == "os8"} == {"descriptive"}  # not primary
    assert all(c["bootstrap"] for c in data["comparisons"])  # os8's from RUN/eval-os8.npz
    rank = data["rank_agreement"]
    tops = [c for c in data["configurations"] if c["configuration"] in ("top-1", "top-2")]
    tau = scipy.stats.kendalltau([c["search_value"] for c in tops], [c["miou"]["mean"] for c in tops]).statistic
    assert rank["configurations"] == ["top-1", "top-2"] and rank["n"] == 2
    assert rank["tau"] == (None if math.isnan(tau) else pytest.approx(tau))  # undefined when either side ties
    assert rank["search_schedule"] == {"schedule": "poly", "poly_power": 0.9, "epochs": 1.0}  # the search's proxy


def test_top_k_are_the_best_distinct_trials_and_the_baseline_merges_with_its_trial(finalized, spec):
    study = optuna.load_study(study_name="fin", storage="sqlite:///runs/fin/study.db")
    # best mIoU first; on a tie (likely on data this small), the cheaper trial first
    ranked = sorted(study.get_trials(states=(TrialState.COMPLETE,)),
                    key=lambda t: (-t.value, t.user_attrs["seconds"]))
    data = json.loads(finalized["files"]["results.json"])
    tops = data["configurations"][:2]
    assert [c["trial"] for c in tops] == [t.number for t in ranked]
    assert [c["params"] for c in tops] == [t.params for t in ranked]
    baseline = next(c for c in tops if c["trial"] == 0)
    centre = ["ablation-centre"] if baseline is tops[0] else []  # the best is also the ablation's centre
    assert baseline["roles"] == ["top", "baseline", *centre] and "= baseline" in baseline["description"]
    r101 = {c["configuration"]: c["config"] for c in data["configurations"][3:]}
    pretrained, scratch = r101["r101-imagenet"], r101["r101-scratch"]
    assert pretrained["backbone"] == scratch["backbone"] == "resnet101"
    assert pretrained["lr"] == ranked[0].params["lr"] and pretrained["epochs"] == 1.0  # the best trial's recipe
    # scratch: its own recipe from [finalize.scratch]: lr x 2, warm-up over half of its 1 epoch
    assert scratch["pretrained"] is None and scratch["lr"] == pytest.approx(2 * ranked[0].params["lr"])
    assert (scratch["warmup_epochs"], scratch["head_lr_multiplier"], scratch["epochs"]) == (0.5, 1.0, 1.0)
    [experiment] = [e for e in data["experiments"] if e["protocol"] == "ss"]
    assert (experiment["factor"], experiment["value"], experiment["a"], experiment["b"]) == (
        "head_lr_multiplier", 10.0, "ablation head_lr_multiplier=10.0", "top-1")
    assert experiment == {"factor": "head_lr_multiplier", "value": 10.0,
                          **next(c for c in data["comparisons"] if c["a"] == experiment["a"] and c["protocol"] == "ss")}
    ablation = data["configurations"][2]
    assert ablation["roles"] == ["ablation"] and ablation["factor"] == ["head_lr_multiplier", 10.0]
    assert ablation["config"] == {**data["configurations"][0]["config"], "head_lr_multiplier": 10.0}


def test_the_pretrained_resnet101_starts_from_the_given_weights(finalized, weights):
    saved = torch.load(weights, weights_only=True)
    pretrained = [state for backbone, source, state in finalized["built"] if source == str(weights)]
    scratch = [state for backbone, source, state in finalized["built"] if backbone == "resnet101" and source is None]
    assert len(pretrained) == 2 and len(scratch) == 2  # one per seed (the second invocation built them)
    for state in pretrained:
        assert all(torch.equal(state[key], saved[key]) for key in state if key in saved)
        assert state["layer1.0.bn3.weight"].abs().sum() > 0
    for state in scratch:  # a fresh ResNet zero-initialises each block's last BatchNorm
        assert not torch.equal(state["conv1.weight"], saved["conv1.weight"])
        assert state["layer1.0.bn3.weight"].abs().sum() == 0


def test_report_has_the_table_comparisons_factors_importance_and_published_figures(finalized):
    report = finalized["files"]["report.md"]
    data = json.loads(finalized["files"]["results.json"])
    means = {c["configuration"]: c["miou"] for c in data["configurations"]}
    for name in CONFIGURATIONS:
        low, high = means[name]["ci95"]
        assert re.search(rf"^\| {re.escape(name)} +\| .*\| 2/2 +\| {means[name]['mean']:.4f} ± "
                         rf"{means[name]['std']:.4f} +\| \[{low:.4f}, {high:.4f}\] +\|", report, re.M), name
    assert "The search selected its configurations on `val`, the split this table reports" in report
    # finalize's seeds 0, 1 include the search's seed 0: said once, and recorded
    assert report.count("Seed 0 is also the seed every search trial trained with") == 1
    assert (data["search_seed"], data["seeds_shared_with_search"], data["primary_protocol"]) == (0, [0], "ss")
    comparisons = {(c["a"], c["b"]): c for c in data["comparisons"] if c["protocol"] == "ss"}
    for (a, b), c in comparisons.items():  # each comparison's sentence says its verdict, seeds and numbers
        if c["p"] is not None:
            assert f"`{a}` vs `{b}`: {c['verdict']} at 2 seeds, {c['difference']:+.4f} mIoU ss (95% CI over seeds " \
                   f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]; paired t p = {c['p']:.3g}" in report
        else:
            assert f"`{a}` vs `{b}`: {c['verdict']} at 2 seeds, {c['difference']:+.4f} mIoU ss on every seed " \
                   "(no spread" in report
        low, high = c["bootstrap"]["ci95"]
        assert f"over val images (paired bootstrap, 4 images, 2 runs an arm) 95% CI [{low:+.4f}, {high:+.4f}]" \
            in report
    r101 = report.split("## ResNet-101: ImageNet-pretrained vs from scratch")[1].split("\n## ")[0]
    assert "At this budget (1 epoch pretrained, 1 from scratch) and with these recipes, `r101-imagenet` vs " \
           f"`r101-scratch`: {comparisons['r101-imagenet', 'r101-scratch']['verdict']} at 2 seeds" in r101
    assert "arXiv:1811.08883" in r101
    assert re.search(r"^\| warmup_epochs +\| 0 +\| 0.5 +\|", r101, re.M)  # the two recipes side by side
    assert re.search(r"^\| lr +\| 0\.\d+ +\| 0\.\d+ +\|", r101, re.M)
    ablation = report.split("## What each factor does: controlled experiments")[1].split("\n## ")[0]
    # the search budget is the full one here (both 1 epoch of train_aug), so the centre is top-1 itself
    assert re.search(r"^\| \(centre\) +\| +\| top-1 +\| 2/2 ", ablation, re.M)
    ablated = comparisons["ablation head_lr_multiplier=10.0", "top-1"]
    difference = re.escape(f"{ablated['difference']:+.4f}")
    assert re.search(rf"^\| head_lr_multiplier +\| 10 +\| ablation head_lr_multiplier=10.0 +\| 2/2 .*\| "
                     rf"{difference} .*\| {ablated['verdict']} +\|", ablation, re.M)
    rank = report.split("## Did the search's ranking hold at full budget?")[1].split("\n## ")[0]
    tau = data["rank_agreement"]["tau"]
    assert ("Kendall's tau is undefined over top-1, top-2" in rank if tau is None else
            re.search(rf"Kendall's tau = {tau:+.2f} \(n = 2, two-sided p = 1, exact", rank))
    assert "schedule `poly`" in rank
    assert "A tau near 1" not in rank
    assert "winner's curse" in rank
    assert "## Search summary" in report and "study fin: 2 complete (0 diverged), 0 pruned, 0 failed" in report
    cost = report.split("## Cost and accuracy")[1].split("\n## ")[0]
    for configuration in data["configurations"]:  # hours a run: the mean of its runs' seconds
        seconds = [r["seconds"] for r in data["runs"] if r["configuration"] == configuration["configuration"]]
        assert re.search(rf"^\| {re.escape(configuration['configuration'])} +\| {sum(seconds) / 2 / 3600:.3g} +\| "
                         rf"{configuration['miou']['mean']:.4f} +\| (yes)? +\|", cost, re.M), configuration
    assert "On the front: " in cost and "In the search (2 complete feasible trials" in cost
    factors = report.split("## What the search's trials suggest about each factor (observational)")[1].split("\n## ")[0]
    for param in ("lr", "optimizer", "momentum"):
        assert re.search(rf"^\| {param} +\| trials at 1st eval +\|", factors, re.M), param
    assert "Observational, not controlled" in factors and "Kendall tau" in factors
    importance = report.split("## Parameter importance")[1].split("\n## ")[0]
    assert "PED-ANOVA" in importance and "the 2 feasible complete trials (final score)" in importance
    assert "the 2 feasible trials that reached the first evaluation, complete and pruned (score there)" in importance
    assert "target_quantile 0.5: a top set of 1" in importance
    assert re.search(r"^\| (lr|optimizer|momentum) +\| \d\.\d{3} +\| \d\.\d{3} +\|", importance, re.M)
    published = report.split("## Published reference figures (not measured here)")[1]
    assert "77.21" in published and "arxiv.org/abs/1706.05587" in published and "synthetic" in published
    link = re.search(r"\[docs/results.md\]\(([^)]+)\)", published).group(1)
    assert (FINAL / link).resolve() == hpo.report.document.DOCS_RESULTS
    assert "[figures.html](figures.html)" in report and "PNG figures" in report


def test_terminal_table_is_aligned(finalized):
    _, out, _ = finalized["completed"]
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(CONFIGURATIONS)
    assert len({len(line) for line in table}) == 1
    assert [line.split("|")[1].strip() for line in table[2:]] == CONFIGURATIONS
    assert "`r101-imagenet` vs `r101-scratch`: " in out and "PNG figures" in out and "--artifact-dir" in out


def test_figures_html_is_self_contained_and_holds_the_figures_data(finalized):
    page = finalized["files"]["figures.html"]
    assert page.count("Plotly.newPlot(") == 12 and "<script src=" not in page  # plotly.js inlined, once
    for figure_id in ("optimization-history", "param-importances", "expected-best", "ablation-forest",
                      "factor-effects", "parallel-coordinate", "cost-final", "cost-search", "slice", "learning-curves",
                      "per-class-iou", "confusion-matrix"):
        assert f'id="{figure_id}"' in page
    study = optuna.load_study(study_name="fin", storage="sqlite:///runs/fin/study.db")
    for trial in study.trials:
        assert json.dumps(trial.value) in page and json.dumps(trial.params["lr"]) in page
    data = json.loads(finalized["files"]["results.json"])
    for run_record in data["runs"]:
        assert f'"name":"{run_record["configuration"]} seed {run_record["seed"]}"' in page
        assert all(json.dumps(h["miou"]) in page for h in run_record["history"])
    assert '"background"' in page
    assert page.count('<img src="data:image/png;base64,') == len(data["gallery"]["ids"])  # the gallery, inlined


def test_the_gallery_shows_each_chosen_val_image_with_every_arms_prediction(finalized):
    data = json.loads(finalized["files"]["results.json"])
    shown = data["gallery"]
    assert shown["protocol"] == "ss" and shown["split"] == "val"
    assert len(shown["ids"]) == 4 == len(set(shown["ids"]))  # the val set's 4 images: 8 asked, 4 there
    # the baseline is top-1 or top-2 (merged; the two trials may tie, and then the cheaper comes first); the best
    # is top-1; r101-imagenet trained without a download here
    assert [p["label"] for p in shown["panels"]][:2] in (["baseline", "best"], ["baseline = best", "ResNet-101 "
                                                                                                    "pretrained"])
    for image_id in shown["ids"]:
        with PIL.Image.open(FINAL / "predictions" / f"{image_id}.png") as picture:
            width, height = picture.size
        with PIL.Image.open(next(Path("cache").glob(f"**/JPEGImages/{image_id}.jpg"))) as image:  # the data
            panels = 2 + len(shown["panels"])  # the image, its ground truth, one prediction per arm
            rows = -(-panels // 3)
            # each row: its band of titles (whole lines, as many as the longest title needs), then the panels
            band = height / rows - image.height
            # 3 panels a row, each in a cell as wide as the image or as the titles' minimum
            assert width == 3 * max(image.width, MIN_CELL_PIXELS) and band == int(band) > 2 * MARGIN_PIXELS
            assert (band - 2 * MARGIN_PIXELS) % LINE_PIXELS == 0


def test_report_and_figures_are_attached_to_the_study(finalized):
    study = optuna.load_study(study_name="fin", storage="sqlite:///runs/fin/study.db")
    metas = get_all_artifact_meta(study)
    pictures = [f"{image_id}.png" for image_id in json.loads(finalized["files"]["results.json"])["gallery"]["ids"]]
    # once each: the interrupted run attached none
    assert sorted(m.filename for m in metas) == sorted([*OUTPUTS, *pictures])
    store = FileSystemArtifactStore("runs/fin/artifacts")
    report = next(m for m in metas if m.filename == "report.md")
    with store.open_reader(report.artifact_id) as reader:
        assert reader.read().decode() == finalized["files"]["report.md"]
    note = get_note(study)
    assert "Study `fin`" in note and "## Final results" in note and "r101-scratch" in note


def test_the_reports_figures_are_the_studys_graphs_in_the_dashboard(finalized):
    storage = optuna.storages.RDBStorage("sqlite:///runs/fin/study.db")
    system_attrs = storage.get_study_system_attrs(storage.get_study_id_from_name("fin"))
    saved = {key: plotly.io.from_json(value) for key, value in get_plotly_graph_objects(system_attrs).items()}
    assert {"factor-effects", "cost-final", "cost-search", "learning-curves", "per-class-iou"} <= set(saved)
    assert not set(saved) & set(DASHBOARD_DRAWS)  # the dashboard draws those itself, live
    assert saved["learning-curves"].layout.title.text == "Learning curves of the final runs"
    curves = {trace.name: list(trace.y) for trace in saved["learning-curves"].data}
    data = json.loads(finalized["files"]["results.json"])
    for run_record in data["runs"]:
        assert curves[f"{run_record['configuration']} seed {run_record['seed']}"] == [h["miou"] for h in
                                                                                      run_record["history"]]


def test_dry_run_prints_the_runs_to_train_with_their_predicted_hours_and_trains_nothing(finalized, spec, weights,
                                                                                       monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a dry run trained")

    monkeypatch.setattr(hpo.finalize.runs, "train", no_training)
    monkeypatch.setattr(hpo.finalize.runs, "evaluate_run", no_training)
    argv = ["--study", str(spec), "--pretrained-weights", str(weights), "--seeds", "0", "1", "2", "--dry-run"]
    code, out, _ = quiet(argv)
    assert code == 0 and "5 configurations x 3 seeds: 5 runs to train (10 done), each scored under ss, os8" in out
    assert "no prediction of device-hours (no probe at runs/fin/probe.json)" in out
    assert [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")][1:] == CONFIGURATIONS

    write_probe(spec, lambda corner: 0.5)  # every configuration trains at 2 images/s here
    estimator = Estimator(load_spec(spec), CostModel(matching_probe(load_spec(spec))[0]))
    code, out, _ = quiet(argv)
    assert code == 0
    data = json.loads(finalized["files"]["results.json"])
    configs = {c["configuration"]: TrainConfig.from_dict(c["config"]) for c in data["configurations"]}
    hours = {name: estimator.final_run_hours(config) for name, config in configs.items()}
    for name in CONFIGURATIONS:  # seed 2 is new: one run to train each, at its own predicted cost
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} "))
        assert [cell.strip() for cell in row.split("|")[3:7]] == ["1/3", "1", f"{hours[name]:.3g}",
                                                                   f"{hours[name]:.3g}"]
    assert f"predicted {sum(hours.values()):.3g} CPU-hours on test device" in out
    assert not (FINAL / "resnet101-r101-scratch").exists() and not list(FINAL.glob("*/seed-2"))


def test_console_script_is_this_cli():
    scripts = tomllib.loads(Path(__file__).parents[1].joinpath("pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["hpo-finalize"].split(":")
    assert module == "hpo.finalize.cli" and getattr(importlib.import_module(module), function) is cli


def test_weights_unavailable_is_that_rows_status_and_everything_else_completes(finalized, spec, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    calls = []

    def record(cfg, **kwargs):
        calls.append(cfg)
        return train(cfg, **kwargs)

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(hpo.finalize.runs, "train", record)
    code, out, _ = quiet(["--study", str(spec)])  # no --pretrained-weights: torchvision's download
    assert code == 0
    assert [(cfg.pretrained, cfg.seed) for cfg in calls] == [("imagenet", 0)]  # tried once, nothing retrained
    records = {(r["configuration"], r["seed"]): r for r in rows((FINAL / "results.csv").read_text())}
    for seed in ("0", "1"):
        assert records["r101-imagenet", seed]["status"].startswith(
            "weights unavailable: cannot download ImageNet weights"), records["r101-imagenet", seed]
        assert records["r101-imagenet", seed]["miou"] == ""
    mean = records["r101-imagenet", "mean"]
    assert mean["status"].startswith("seeds 0, 1: weights unavailable: cannot download") and mean["miou"] == ""
    assert (mean["runs"], mean["miou_n"]) == ("0", "0")
    assert all(records[name, "mean"]["status"] == "ok" for name in CONFIGURATIONS if name != "r101-imagenet")
    data = json.loads((FINAL / "results.json").read_text())
    failed = next(c for c in data["configurations"] if c["configuration"] == "r101-imagenet")["failed"]
    assert [f["seed"] for f in failed] == [0, 1] and all("cannot download" in f["reason"] for f in failed)
    r101 = next(c for c in data["comparisons"] if c["a"] == "r101-imagenet")
    assert (r101["n"], r101["difference"], r101["p"], r101["verdict"]) == (0, None, None, "inconclusive")
    assert r101["reason"] == "0 seeds finished in both, a test needs 2"
    report = (FINAL / "report.md").read_text()
    # the row counts its failures and points to the note that holds the reason, once for both seeds
    assert re.search(r"^\| r101-imagenet +\| .* \| 0/2 \(2 failed, note 1\) +\|", report, re.M)
    assert re.search(r"^1\. `r101-imagenet` seed 0, `r101-imagenet` seed 1: weights unavailable: cannot download",
                     report, re.M)
    findings = report.split("## Findings")[1].split("\n## ")[0]
    assert "**ResNet-101, ImageNet-pretrained vs from scratch** ([detail](#resnet-101-imagenet-pretrained-vs-from-" \
           "scratch)): not compared (seeds 0, 1: weights unavailable, note 1 under the final table)" in findings
    assert "cannot download" not in findings  # the reason itself only in the note
    assert "No ResNet-101 comparison: the ImageNet-pretrained run has no result (seeds 0, 1: weights " \
           "unavailable, note 1 under the final table)." in report
    assert "--pretrained-weights PATH" in report
    assert re.search(r"^\| r101-imagenet .*\| 0/2 \(2 failed, note 1\) ", out, re.M)  # the terminal's table too
    assert re.search(r"^1\. `r101-imagenet` seed 0, `r101-imagenet` seed 1: weights unavailable", out, re.M)


@pytest.mark.parametrize("argv, words", [
    (["--top-k", "0"], "--top-k: must be >= 1, got 0"),
    (["--seeds", "1", "1"], "--seeds: must not repeat a seed, got [1, 1]"),
    (["--epochs", "0"], "--epochs: must be > 0, got 0.0"),
    (["--seeds", "one"], "argument --seeds: invalid int value: 'one'"),
    (["--pretrained-weights", "missing.pth"], "--pretrained-weights missing.pth: no such file"),
    (["--pretrained-weights", "foreign.pth"], "--pretrained-weights foreign.pth: does not fit this backbone"),
    (["--storage", "sqlite:///runs/nowhere/study.db"], "no study database at runs/nowhere/study.db"),
    (["--storage", "sqlite:///runs/empty/study.db"], "no study 'fin' in sqlite:///runs/empty/study.db "
                                                     "(it holds: empty)"),
    (["--storage", "sqlite:///runs/empty/study.db", "--study", "empty.toml"],
     "study 'empty' in sqlite:///runs/empty/study.db has no complete feasible trial"),
    (["--study", "overlap.toml"],  # differently named splits that share images: compared by id, before training
     "overlap.toml: [finalize]: train_split 'trainval' and val_split 'val' share 4 of the 4 val image ids"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, spec, workdir):
    torch.save({"conv1.weight": torch.zeros(1)}, workdir / "foreign.pth")
    empty = optuna.create_study(study_name="empty", storage="sqlite:///runs/empty/study.db",
                                direction="maximize", load_if_exists=True)
    if not empty.trials:
        empty.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    (workdir / "empty.toml").write_text(spec.read_text().replace('name = "fin"', 'name = "empty"'))
    (workdir / "overlap.toml").write_text(spec.read_text().replace("top_k = 2", 'top_k = 2\ntrain_split = "trainval"'))
    argv = argv if "--study" in argv else ["--study", str(spec), *argv]
    code, _, err = quiet(argv)
    assert code == 2 and words in err and err.count("\n") == 1, err
    assert not Path("runs/nowhere").exists()


def test_a_crf_protocol_without_its_extra_stops_before_any_training(spec, workdir, monkeypatch):
    with_crf = workdir / "fin-crf.toml"
    with_crf.write_text(spec.read_text().replace('eval = ["ss", "os8"]', 'eval = ["ss", "crf"]'))
    assert with_crf.read_text() != spec.read_text()
    monkeypatch.setattr(segtrain.crf, "available", lambda: False)
    monkeypatch.setattr(hpo.finalize.runs, "train", lambda *args, **kwargs: pytest.fail("it trained"))
    for argv in (["--study", str(with_crf), "--dry-run"], ["--study", str(with_crf)]):
        code, _, err = quiet(argv)
        assert code == 2 and "pip install -e '.[crf]'" in err and err.count("\n") == 1, err


def test_the_report_opens_with_findings_that_carry_the_verdicts_of_results_json(finalized):
    report = finalized["files"]["report.md"]
    title, what, heading = report.splitlines()[0], report.splitlines()[2], report.splitlines()[4]
    assert title == "# Final results: study `fin`" and what.startswith("5 configurations retrained") \
        and heading == "## Findings"
    findings = report.split("## Findings")[1].split("\n## ")[0]
    data = json.loads(finalized["files"]["results.json"])
    decided = [c for c in data["comparisons"] if c["protocol"] == "ss" and c["n"] >= 2]
    assert decided
    for c in decided:
        assert f"{c['difference']:+.4f} mIoU ss" in findings and f"{c['verdict']} at {c['n']} seeds" in findings, c
    for title in ("Against the baseline", "What each factor does: controlled experiments", "Cost and accuracy"):
        assert f"## {title}\n" in report and f"(#{re.sub(r'[^a-z0-9 -]', '', title.lower()).replace(' ', '-')})" \
            in findings
    assert "**What it cost**" in findings and len(findings.strip().splitlines()) <= 15
