"""finalize(spec): from the study to the report, the plan printed first.

hpo.finalize.selection picks the configurations (the top-k, the baseline, ResNet-101
pretrained and from scratch with a recipe each, the ablations), the probe prices them
(hpo.plan), hpo.finalize.runs trains and scores them, and hpo.report writes the tables,
statistics, figures and report.md from the runs it is handed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import optuna

from hpo.finalize.runs import run_all, run_dir_for
from hpo.finalize.selection import plan
from hpo.markdown import markdown_table
from hpo.plan.cost import CostModel
from hpo.plan.estimate import Estimator
from hpo.plan.probe import matching_probe
from hpo.finalize.gallery import gallery
from hpo.report.outputs import PREDICTIONS, Outputs, write
from hpo.report.results import RESULT, Configuration, summarize
from hpo.search.loop import open_existing_study
from hpo.search.tracking import StudyTracking
from hpo.spec import FinalizeOptions, StudySpec
from segtrain import crf
from segtrain.data import require_disjoint_splits, require_splits
from segtrain.evaluation import PRESETS

log = logging.getLogger(__name__)


def plan_text(spec: StudySpec, configurations: Sequence[Configuration], options: FinalizeOptions,
              final_dir: Path) -> str:
    """What finalize will train: per configuration, the seeds still to run and their device-hours as the
    spec's probe (python -m hpo.plan) predicts them for these very configurations."""
    probe, why_not = matching_probe(spec)
    estimator = Estimator(spec, CostModel(probe)) if probe is not None else None
    rows, total, todo_runs = [], 0.0, 0
    for c in configurations:
        todo = sum(not (run_dir_for(final_dir, c, seed) / RESULT).exists() for seed in options.seeds)
        hours = estimator.final_run_hours(c.config) if estimator is not None else None
        if estimator is not None and hours is None:
            each, all_ = "does not fit", "-"
        else:
            each, all_ = ("-", "-") if hours is None else (f"{hours:.3g}", f"{hours * todo:.3g}")
        rows.append([c.name, c.description, f"{todo}/{len(options.seeds)}", f"{c.config.epochs:g}", each, all_])
        total += (hours or 0.0) * todo
        todo_runs += todo
    if estimator is None:
        cost = (f"no prediction of device-hours ({why_not}): python -m hpo.plan --study {spec.path} measures "
                f"this machine")
    else:
        unit = "GPU-hours" if probe.device_type == "cuda" else "CPU-hours"
        cost = f"predicted {total:.3g} {unit} on {probe.device} (the probe of {probe.created})"
    done = len(configurations) * len(options.seeds) - todo_runs
    return "\n".join([
        f"finalize: {len(configurations)} configurations x {len(options.seeds)} seeds: {todo_runs} runs to train "
        f"({done} done), each scored under {', '.join(options.eval)}; {cost}",
        markdown_table(["configuration", "what", "seeds to train", "epochs", "hours a run", "hours"], rows)])


def planned(spec: StudySpec, options: FinalizeOptions) -> tuple[optuna.Study, list[Configuration], Path]:
    """The study, the configurations finalize retrains, and where their runs go; bad input checked first."""
    study = open_existing_study(spec)
    configurations = plan(spec, study, options)
    require_splits(configurations[0].config)  # finalize's own splits, before any training
    if any(PRESETS[name].crf for name in options.eval):
        crf.require()  # the [crf] extra, before days of training that would end without it
    require_disjoint_splits(configurations[0].config, f"{spec.path}: [finalize]")
    return study, configurations, spec.study.output_dir / "final"


def finalize(spec: StudySpec, options: FinalizeOptions) -> Outputs:
    """Plan (logged first), train (or reuse) every run, write runs/<study>/final/ and attach it to the study.

    A run that cannot load its pretrained weights (offline, a bad file) gets that as
    its status ("weights unavailable: ...") and everything else still completes.
    """
    tracking = StudyTracking.of(spec)  # a missing package: one line before any training
    study, configurations, final_dir = planned(spec, options)
    log.info("%s", plan_text(spec, configurations, options, final_dir))
    runs = run_all(configurations, options.seeds, final_dir, options.eval, tracking)
    crf = next((name for name in options.eval[1:] if PRESETS[name].crf), None)  # shown beside the best too
    shown = gallery(summarize(runs), options.eval[0], final_dir / PREDICTIONS / "masks", crf)
    return write(spec, study, options, runs, final_dir, shown)
