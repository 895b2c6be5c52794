"""Compute saved by pruning: the demo study with its pruner, with other pruners and with none.

Each arm is a real search of studies/demo.toml (same sampler seed, same number of
finished trials), so the sampler sees what pruning tells it, as in a real study.
Per arm and seed it reports the epochs trained and trial-seconds summed over all
trials (pruned ones count what they trained) and the best full-budget mIoU found;
then, over all seeds, each pruner's compute and best mIoU as ratios to no pruning.
The goal, from the issue: <= 0.4x the compute at >= 0.98x the best mIoU. The RESULT
line is the compute ratio of the study file's own pruner.

Real searches are expensive, so each candidate pruner is also replayed on the
unpruned studies' learning curves: Optuna's pruner decides at each evaluation as if
those trials had run under it. A replay is exact while the sampler does not depend
on earlier trials (TPE's random startup trials) and an estimate after that.

    python benchmarks/pruning.py                    # 3 seeds x 20 trials x 2 arms: about an hour here
    python benchmarks/pruning.py --trials 12 --candidates percentile_75
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
from contextlib import chdir
from dataclasses import dataclass
from pathlib import Path

import optuna

from common import machine, parse_args, print_table, result
from hpo.objective import feasible
from hpo.search import run_search
from hpo.spec import load_spec

STUDY = Path(__file__).resolve().parents[1] / "studies" / "demo.toml"
# pruners tried beside the study's own; steps are evaluation points 1..eval_points
CANDIDATES = {
    "none": {"type": "none"},
    # keeps only the top quarter at each point from the second on
    "percentile_75": {"type": "percentile", "percentile": 75.0, "n_startup_trials": 5, "n_warmup_steps": 2},
    "successive_halving": {"type": "successive_halving", "min_resource": 1, "reduction_factor": 2},
    "hyperband": {"type": "hyperband", "min_resource": 1, "reduction_factor": 2},
}
QUICK_TRAIN = {"synthetic_train_images": 8, "synthetic_val_images": 4, "synthetic_image_size": 64,
               "epochs": 2.0, "eval_points": 2}


def replay(trials: list[optuna.trial.FrozenTrial], table: dict, epochs: float, points: int) -> tuple[float, float]:
    """(epochs trained, best final mIoU) had `table`'s pruner watched these unpruned trials."""
    study = optuna.create_study(direction="maximize", pruner=load_spec(STUDY, {"pruner": table}).make_pruner())
    spent, best = 0.0, 0.0
    for frozen in trials:
        trial, curve = study.ask(), sorted(frozen.intermediate_values.items())
        for step, value in curve:
            trial.report(value, step)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                spent += epochs * step / points
                break
        else:
            study.tell(trial, frozen.value)
            spent += epochs * (curve[-1][0] / points if curve else 1.0)  # a diverged trial stops early
            best = max(best, frozen.value) if feasible(frozen) else best
    return spent, best


@dataclass(frozen=True)
class Arm:
    pruner: str
    seed: int
    trials: int
    pruned: int
    epochs: float
    seconds: float
    best_miou: float


def search(pruner: str, table: dict, seed: int, trials: int, train: dict | None
           ) -> tuple[Arm, list[optuna.trial.FrozenTrial]]:
    """One study in the current directory; its own name, storage and runs/ folder."""
    name = f"pruning-{pruner}-{seed}"
    # a search only: the demo's [finalize] (whose budget is checked against [train]'s) does not apply
    sections = {"study": {"name": name, "seed": seed, "keep_checkpoints": 0}, "pruner": table, "finalize": {}}
    if train is not None:
        sections["train"] = train
    spec = load_spec(STUDY, sections)
    study = run_search(spec, trials)
    finished = study.get_trials(deepcopy=False)
    return Arm(pruner, seed, len(finished),
               sum(t.state == optuna.trial.TrialState.PRUNED for t in finished),
               sum(t.user_attrs.get("epochs", 0.0) for t in finished),
               sum(t.user_attrs.get("seconds", 0.0) for t in finished), study.best_value), finished


def print_replays(unpruned: list[list[optuna.trial.FrozenTrial]], tables: dict[str, dict],
                  epochs: float, points: int) -> None:
    """Each pruner replayed on every seed's unpruned trials, as ratios to not pruning them."""
    rows = []
    for name, table in tables.items():
        replays = [(replay(trials, table, epochs, points), replay(trials, CANDIDATES["none"], epochs, points))
                   for trials in unpruned]
        rows.append((name, sum(r[0][0] for r in replays) / sum(r[1][0] for r in replays),
                     statistics.mean(r[0][1] for r in replays) / statistics.mean(r[1][1] for r in replays)))
    print_table(["pruner", "epochs / none", "best / none"], rows,
                title="replayed on the unpruned studies' learning curves")


def main() -> None:
    def options(parser):
        parser.add_argument("--trials", type=int, default=20, help="finished trials per study (default 20)")
        parser.add_argument("--seeds", type=int, default=3, help="sampler seeds 0..N-1 (default 3)")
        parser.add_argument("--candidates", nargs="*", default=[], choices=list(CANDIDATES),
                            help="pruners also run for real, beside the study's own and none "
                                 "(all are replayed anyway)")
    args = parse_args(__doc__, options)
    spec = load_spec(STUDY)
    trials, seeds = (2, 1) if args.quick else (args.trials, args.seeds)
    train = {**spec.train, **QUICK_TRAIN} if args.quick else None
    arms = {"study": {"type": spec.pruner.type, **spec.pruner.args}, "none": CANDIDATES["none"]}
    arms.update({name: CANDIDATES[name] for name in ([] if args.quick else args.candidates)})
    print(f"{machine()}\n{STUDY.name}: {trials} finished trials a study, seeds 0..{seeds - 1}; "
          f"study's pruner: {spec.pruner.describe()}")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("segtrain.engine").setLevel(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    runs: list[Arm] = []
    unpruned: list[list[optuna.trial.FrozenTrial]] = []  # each seed's trials without pruning
    with tempfile.TemporaryDirectory(prefix="pruning-") as workdir, chdir(workdir):
        for seed in range(seeds):
            for name, table in arms.items():
                arm, finished = search(name, table, seed, trials, train)
                runs.append(arm)
                if name == "none":
                    unpruned.append(finished)
                print(f"  seed {seed}, {name}: {arm.pruned}/{arm.trials} pruned, {arm.epochs:.1f} epochs, "
                      f"{arm.seconds:.0f} trial-s, best mIoU {arm.best_miou:.4f}", flush=True)

    print_table(["pruner", "seed", "pruned", "epochs", "trial-s", "best mIoU"],
                [(a.pruner, a.seed, f"{a.pruned}/{a.trials}", a.epochs, a.seconds, a.best_miou) for a in runs],
                title="per study")

    def total(name: str, key: str) -> float:
        return sum(getattr(a, key) for a in runs if a.pruner == name)

    def best(name: str) -> float:
        return statistics.mean(a.best_miou for a in runs if a.pruner == name)

    rows = [(name, total(name, "epochs") / total("none", "epochs"), total(name, "seconds") / total("none", "seconds"),
             best(name), best(name) / best("none")) for name in arms]
    print_table(["pruner", "epochs / none", "trial-s / none", "mean best mIoU", "best / none"], rows,
                title=f"over {seeds} seeds (goal: compute <= 0.4x at best >= 0.98x)")
    budget = spec.train_config(train)
    print_replays(unpruned, {"study": arms["study"], **CANDIDATES}, budget.epochs, budget.eval_points)
    study_row = rows[0]
    print(f"study's pruner: best mIoU {study_row[4]:.3f}x no pruning (goal >= 0.98)")
    result("pruning", study_row[1], "<=", 0.4)


if __name__ == "__main__":
    main()
