"""Early stopping that ranks like full training: each pruner x schedule against a ground truth.

The ground truth: a fixed set of configurations (quasi-random over the study's space,
fixed seed, so spread evenly) each trained at the study's full search budget without
pruning, under each schedule, with an evaluation at every eighth of the budget. Under
"wsd" each evaluation but the last is the annealed score of a short decay branch (what
a pruner sees in a wsd search); under "poly" it is the score of the running model.
A run's main trajectory does not depend on where it is evaluated (evaluations and
branches leave its state untouched: tests/test_engine.py), so the scores at 2/8, 4/8
and 6/8 are exactly those a study with 4 evaluations sees; only the branches differ,
and their cost is charged for the evaluations each candidate uses.

For every pruner x schedule x evaluation count it replays Optuna's own pruner on those
curves, in the configurations' fixed order, and reports:
- compute: epochs trained, branches included, relative to the same configurations
  trained to the end with the poly schedule and no pruning (the study without any of this);
- regret: the best full-budget score of all configurations minus the best of those the
  pruner let finish (0 = it kept the best);
- Kendall tau between each evaluation's scores and the full-budget scores, over all
  configurations: how well an early score ranks them (1 = exactly as the full run).

It runs on two synthetic tasks of different difficulty, so the choice does not rest
on one data set, and ends with the compute ratio of the study file's own pruner and
schedule (the default chosen with it):

    RESULT pruning_compute <ratio> (goal <= 0.40)

    python benchmarks/pruning.py                  # 16 configurations x 2 schedules x 2 tasks
    python benchmarks/pruning.py --configurations 24 --tasks demo
"""

from __future__ import annotations

import logging
import os
import random
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from common import machine, parse_args, print_table, result
from scipy.stats import kendalltau

from hpo.space import suggest, train_overrides
from hpo.spec import StudySpec, load_spec
from segtrain.config import TrainConfig
from segtrain.data import voc_dir_for
from segtrain.data.voc import read_split_ids
from segtrain.engine import train
from segtrain.records import EvalResult, TrainingDiverged

STUDY = Path(__file__).resolve().parents[1] / "studies" / "demo.toml"
GROUND_POINTS = 8  # evaluations of the ground-truth runs; every candidate's evaluations are a subset
QUICK_POINTS = 2
SCHEDULES = ("poly", "wsd")
# the demo study's data, and a harder task: more classes to tell apart (and another draw of scenes)
TASKS: dict[str, dict] = {"demo": {}, "harder": {"synthetic_classes": 12, "synthetic_seed": 1}}
# pruners replayed, beside none; steps are a study's evaluations 1..points
PRUNERS = {
    "none": {"type": "none"},
    "median": {"type": "median", "n_startup_trials": 5, "n_warmup_steps": 1},
    "percentile_75": {"type": "percentile", "percentile": 75.0, "n_startup_trials": 5, "n_warmup_steps": 1},
    "halving_2": {"type": "successive_halving", "min_resource": 1, "reduction_factor": 2},
    "halving_3": {"type": "successive_halving", "min_resource": 1, "reduction_factor": 3},
    "halving_4": {"type": "successive_halving", "min_resource": 1, "reduction_factor": 4},
    "hyperband_3": {"type": "hyperband", "min_resource": 1, "reduction_factor": 3},
}
ORDERS = 20  # shuffled orders each candidate is also replayed in: successive halving favours early trials
# --quick: 2 configurations (made cheap: batch 2, output stride 16) of 2 steps on 5 images of 32 px,
# evaluated twice on 1: seconds, and the figures mean nothing
QUICK_TRAIN = {"synthetic_train_images": 6, "synthetic_val_images": 1, "synthetic_image_size": 32,
               "epochs": 0.8, "crop_size": 33}
QUICK_CONFIGURATION = {"batch_size": 2, "output_stride": 16}


@dataclass(frozen=True)
class Curve:
    """One configuration's ground-truth run: its scores and compute at every eighth of the budget."""

    params: dict
    scores: tuple[float, ...]  # one per evaluation reached (fewer if it diverged)
    main_epochs: tuple[float, ...]  # epochs of the run itself at each evaluation reached
    branch_epochs: tuple[float, ...]  # epochs of the decay branch before each evaluation (wsd)
    diverged_epochs: float | None  # where the loss became NaN, if it did

    @property
    def final(self) -> float:
        """The full-budget score; a diverged run has none (0: below every run that finished)."""
        return 0.0 if self.diverged_epochs is not None else self.scores[-1]

    def score(self, point: int) -> float:
        """The score a pruner sees at `point`; past a divergence, the last one reported (or 0)."""
        return self.scores[min(point, len(self.scores)) - 1] if self.scores else 0.0

    def cost(self, points: Sequence[int], last: int) -> float:
        """Epochs trained up to evaluation `last` (1-based, of the ground truth's) in a study that evaluates
        at `points`: the run itself, and a decay branch before each of those evaluations."""
        reached = min(last, len(self.scores))
        main = self.diverged_epochs if last > len(self.scores) else self.main_epochs[last - 1]
        return main + sum(self.branch_epochs[p - 1] for p in points if p <= reached)


def ground_truth(configurations: list[dict], base: TrainConfig, schedule: str, train_images: int,
                 points: int) -> list[Curve]:
    curves = []
    for index, params in enumerate(configurations, start=1):
        cfg = base.replace(**params, schedule=schedule, eval_points=points)
        history: list[EvalResult] = []
        diverged = None
        try:
            train(cfg, on_eval=history.append, save_checkpoints=False)
        except TrainingDiverged as error:
            diverged = error.step * cfg.batch_size / train_images
        curves.append(Curve(params, tuple(h.miou for h in history), tuple(h.epoch for h in history),
                            tuple(h.decay_steps * cfg.batch_size / train_images for h in history), diverged))
        outcome = "diverged" if diverged is not None else f"final mIoU {curves[-1].final:.4f}"
        print(f"    {schedule} {index}/{len(configurations)}: {outcome}  {params}", flush=True)
    return curves


@dataclass(frozen=True)
class Replay:
    cost: float  # epochs trained, branches included
    regret: float  # best final of all - best final of those the pruner let finish
    finished: int


def replay(curves: Sequence[Curve], pruner: optuna.pruners.BasePruner, points: Sequence[int]) -> Replay:
    """Optuna's `pruner` deciding at `points` (of the ground truth's evaluations) on these runs, in this order."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    cost, kept = 0.0, []
    for curve in curves:
        trial = study.ask()
        for step, point in enumerate(points, start=1):
            if curve.diverged_epochs is not None and point > len(curve.scores):
                study.tell(trial, curve.score(point))  # the objective: complete, infeasible
                cost += curve.cost(points, point)
                break
            trial.report(curve.score(point), step)
            if point < points[-1] and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                cost += curve.cost(points, point)
                break
        else:
            study.tell(trial, curve.final)
            cost += curve.cost(points, points[-1])
            kept.append(curve.final)
    best = max(curve.final for curve in curves)
    return Replay(cost, best - max(kept, default=0.0), len(kept))


def sample_configurations(spec: StudySpec, count: int, seed: int = 0) -> list[dict]:
    """`count` configurations of the study's space (TrainConfig overrides), drawn by Optuna's
    RandomSampler with a fixed seed."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    configurations = []
    for _ in range(count):
        trial = study.ask()
        configurations.append(train_overrides(spec.space, suggest(trial, spec.space)))
        study.tell(trial, 0.0)
    return configurations


def tau(xs: Sequence[float], ys: Sequence[float]) -> float:
    return float(kendalltau(xs, ys).statistic)


def report_task(task: str, spec: StudySpec, curves: dict[str, list[Curve]], ground: int, study_schedule: str,
                study_points: int) -> tuple[float, float]:
    """Print the task's rank fidelity and every candidate; return the study's own candidate's
    (compute ratio, regret)."""
    everywhere = tuple(range(1, ground + 1))
    print_table(["schedule", *(f"tau @{p}/{ground}" for p in everywhere)],
                [(schedule, *(tau([c.score(p) for c in runs], [c.final for c in runs]) for p in everywhere))
                 for schedule, runs in curves.items()],
                title=f"{task}: Kendall tau between each evaluation's scores and the full-budget scores")
    unpruned = sum(c.cost((), ground) for c in curves["poly"])  # poly, no pruning: no branches
    count = len(curves["poly"])
    shuffles = [random.Random(seed).sample(range(count), count) for seed in range(ORDERS)]
    rows, own = [], None
    for schedule, runs in curves.items():
        for points in (ground // 2, ground):  # the same budget, evaluated half as often or at every point
            used = tuple(ground * k // points for k in range(1, points + 1))
            for name, table in PRUNERS.items():
                candidate = load_spec(STUDY, {"pruner": table})
                fixed = replay(runs, candidate.make_pruner(), used)
                shuffled = [replay([runs[i] for i in order], candidate.make_pruner(), used) for order in shuffles]
                ratio = fixed.cost / unpruned
                rows.append((schedule, f"{name}, {points} evaluations", ratio, fixed.regret, fixed.finished,
                             tau([c.score(used[0]) for c in runs], [c.final for c in runs]),
                             statistics.mean(r.cost for r in shuffled) / unpruned,
                             sum(r.regret == 0 for r in shuffled) / ORDERS))
                if (schedule, points, candidate.pruner) == (study_schedule, study_points, spec.pruner):
                    own = (ratio, fixed.regret)
    print_table(["schedule", "pruner", "compute / poly unpruned", "regret", "finished", "tau 1st evaluation",
                 f"compute, {ORDERS} orders", "regret 0 in"], rows,
                title=f"{task}: candidates, replayed in the configurations' order (then in {ORDERS} shuffled orders)")
    if own is None:
        raise SystemExit(f"the study's pruner {spec.pruner.describe()} at {study_points} evaluations is not among "
                         f"the candidates: add it to PRUNERS")
    return own


def main() -> None:
    def options(parser):
        parser.add_argument("--configurations", type=int, default=16, help="ground-truth configurations (default 16)")
        parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS),
                            help="synthetic tasks to run on (default: all)")
    args = parse_args(__doc__, options)
    spec = load_spec(STUDY)
    count, tasks, ground = (2, ["demo"], QUICK_POINTS) if args.quick else (args.configurations, args.tasks,
                                                                             GROUND_POINTS)
    study = spec.train_config()
    print(f"{machine()}\n{STUDY.name}: {count} configurations x {len(SCHEDULES)} schedules x {len(tasks)} tasks, "
          f"{ground} evaluations each; the study: {spec.pruner.describe()}, schedule {study.schedule}, "
          f"{study.eval_points} evaluations")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("segtrain.engine").setLevel(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    configurations = sample_configurations(spec, count)
    if args.quick:
        configurations = [{**c, **QUICK_CONFIGURATION} for c in configurations]
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="pruning-") as cache:
        for task in tasks:
            base = spec.train_config({**TASKS[task], **(QUICK_TRAIN if args.quick else {}), "data_root": cache})
            train_images = len(read_split_ids(voc_dir_for(base), base.train_split))
            print(f"\ntask {task}: {base.synthetic_classes} classes, {train_images} train images", flush=True)
            curves = {schedule: ground_truth(configurations, base, schedule, train_images, ground)
                      for schedule in SCHEDULES}
            outcomes.append(report_task(task, spec, curves, ground, study.schedule, min(study.eval_points, ground)))
    print(f"\nthe study's pruner and schedule: compute {', '.join(f'{r:.3f}' for r, _ in outcomes)} of no pruning, "
          f"regret {', '.join(f'{g:.4f}' for _, g in outcomes)} ({', '.join(tasks)})")
    result("pruning_compute", max(ratio for ratio, _ in outcomes), "<=", 0.4)


if __name__ == "__main__":
    main()
