"""python -m hpo.search: run or resume an Optuna study of DeepLabV3 hyperparameters.

`--trials N` is the number of finished (complete or pruned) trials the study
should hold: a rerun only runs what is missing, and several workers on one
storage together stop at exactly N. `--workers N` runs N worker processes here
(hpo/workers.py); independent invocations on one storage work as well.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState
from optuna_dashboard import save_note
from tqdm import tqdm

from hpo.objective import Objective, TrialOutOfMemory, feasible, keep_best_checkpoints
from hpo.space import enqueue_seeded
from hpo.spec import StudySpec, load_spec
from hpo.storage import (WORKER_ATTR, StudyLock, dashboard_command, fail_dead_trials, local_path,
                         open_storage, retry_callback, safe_url, worker_id)
from hpo.workers import WORKER_ENV, run_workers
from segtrain.cli import ArgumentParser, run
from segtrain.data import require_splits
from segtrain.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_STUDY = Path("studies/voc_r50.toml")
SEED_STRIDE = 1_000_003  # keeps the sampler seeds of parallel workers apart
# TrainConfig fields that say where the data comes from (and synthetic*)
DATA_FIELDS = ("data_root", "train_split", "val_split")


@dataclass(frozen=True)
class Counts:
    complete: int
    pruned: int
    failed: int
    running: int
    diverged: int

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    @classmethod
    def of(cls, study: optuna.Study) -> Counts:
        trials = study.get_trials(deepcopy=False)

        def count(state: TrialState) -> int:
            return sum(t.state == state for t in trials)

        return cls(count(TrialState.COMPLETE), count(TrialState.PRUNED), count(TrialState.FAIL),
                   count(TrialState.RUNNING),
                   sum(t.state == TrialState.COMPLETE and not feasible(t) for t in trials))


def open_study(spec: StudySpec, worker: int = 0) -> optuna.Study:
    """Create or load the study; a sampler seeded apart from earlier runs and other workers."""
    storage = open_storage(spec.study.storage, spec.study.heartbeat_interval, spec.study.grace_period)
    try:
        study = optuna.create_study(storage=storage, study_name=spec.study.name, direction="maximize",
                                    load_if_exists=True, pruner=spec.make_pruner(),
                                    sampler=spec.make_sampler())
    except ValueError as error:  # e.g. an existing study of that name that minimises
        raise UserError(f"study '{spec.study.name}' in {safe_url(spec.study.storage)}: {error}") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise UserError(f"study '{spec.study.name}' in {safe_url(spec.study.storage)} minimises; "
                        f"this tool maximises mIoU: choose another [study] name")
    study.sampler = spec.make_sampler(seed_offset=len(study.trials) + worker * SEED_STRIDE)
    return study


def open_existing_study(spec: StudySpec) -> optuna.Study:
    """Load the spec's study, which must exist already (e.g. for finalize); never creates one."""
    url = spec.study.storage
    path = local_path(url)
    if path is not None and not path.exists():
        raise UserError(f"{spec.path}: no study database at {path}; run the search first: "
                        f"python -m hpo.search --study {spec.path} (or pass --storage URL)")
    storage = open_storage(url, spec.study.heartbeat_interval, spec.study.grace_period)
    try:
        return optuna.load_study(study_name=spec.study.name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise UserError(f"{spec.path}: no study '{spec.study.name}' in {safe_url(url)} (it holds: {names}); "
                        f"run python -m hpo.search --study {spec.path}, or pass the right --storage URL") from None


def prepare(spec: StudySpec) -> optuna.Study:
    """Check everything a user can get wrong, then open the study (created with its baseline if new).

    The checks come first, so that bad input leaves an existing study as it was; the
    study is opened under its lock, so that workers starting at once create it once.
    """
    require_writable(spec.study.output_dir)
    require_data(spec)
    with StudyLock(spec.study.storage, spec.study.name):
        study = open_study(spec, int(os.environ.get(WORKER_ENV, "0")))
        if not study.trials:  # a new study; later, finalize adds its results to the note
            save_note(study, spec.to_markdown())
        enqueue_seeded(study, spec.space, spec.seeded_trials())
    return study


def require_data(spec: StudySpec) -> None:
    """The data every trial reads exists: its root, split files, and each listed image and mask.

    Skipped when the space searches where the data comes from; each trial checks its own then.
    """
    if not any(param.name in DATA_FIELDS or param.name.startswith("synthetic") for param in spec.space):
        require_splits(spec.train_config())


def run_search(spec: StudySpec, trials: int, timeout: float | None = None) -> optuna.Study:
    """Run trials until the study holds `trials` finished ones (or `timeout` seconds passed)."""
    study = prepare(spec)
    output_dir = spec.study.output_dir
    lock = StudyLock(spec.study.storage, spec.study.name)
    objective = Objective(spec, output_dir / "trials")
    worker = worker_id()

    def start_trial(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker)  # before others see the trial: a retry's is its dead worker's
        lock.release()  # Optuna has created this trial: others may count it now
        return objective(trial)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        log.info("%s", describe(trial))
        keep_best_checkpoints(study, output_dir / "trials", spec.study.keep_checkpoints)

    started = time.monotonic()
    with tqdm(total=trials, initial=min(trials, Counts.of(study).finished), unit="trial",
              desc=f"study {spec.study.name}", disable=None, dynamic_ncols=True) as bar:
        while timeout is None or time.monotonic() - started < timeout:
            lock.acquire()
            try:
                fail_dead_trials(study, spec.study.storage)
                counts = Counts.of(study)
                if counts.finished >= trials:
                    break
                if counts.finished + counts.running >= trials:
                    lock.release()  # the last trials run elsewhere; one may yet fail
                    time.sleep(min(5, spec.study.heartbeat_interval))
                    continue
                study.optimize(start_trial, n_trials=1, catch=(TrialOutOfMemory,), callbacks=[after_trial])
            except KeyboardInterrupt:
                if objective.interrupted is not None:
                    requeue(study, objective.interrupted)
                raise
            finally:
                lock.release()
            bar.update(min(trials, Counts.of(study).finished) - bar.n)
    return study


def requeue(study: optuna.Study, number: int) -> None:
    """Queue a copy of a trial Ctrl-C failed, so the next run resumes it from its checkpoint."""
    retry_callback()(study, next(t for t in study.get_trials(deepcopy=False) if t.number == number))


def describe(trial: optuna.trial.FrozenTrial) -> str:
    """One line per finished trial: its outcome and parameters."""
    if trial.state == TrialState.COMPLETE:
        outcome = f"mIoU {trial.value:.4f}" if feasible(trial) else trial.user_attrs.get("failure", "infeasible")
    elif trial.state == TrialState.PRUNED:
        outcome = f"pruned at evaluation {trial.last_step}"
    else:
        outcome = f"failed: {trial.user_attrs.get('failure', 'see the log above')}"
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    return f"trial {trial.number}: {outcome}  ({params})"


def summary(spec: StudySpec, study: optuna.Study) -> str:
    return "\n".join([*summary_lines(study), f"dashboard: {dashboard_command(spec.study.storage)}"])


def summary_lines(study: optuna.Study) -> list[str]:
    """What the study holds: trial counts, compute, the best trial and the baseline."""
    counts = Counts.of(study)
    trials = study.get_trials(deepcopy=False)
    seconds = sum(t.user_attrs.get("seconds", 0.0) for t in trials)
    epochs = sum(t.user_attrs.get("epochs", 0.0) for t in trials)
    lines = [f"study {study.study_name}: {counts.complete} complete ({counts.diverged} diverged), "
             f"{counts.pruned} pruned, {counts.failed} failed",
             f"compute: {seconds / 3600:.2f} trial-hours ({seconds:.0f} s), {epochs:.1f} epochs trained"]
    try:
        best = study.best_trial
    except ValueError:
        lines.append("no feasible trial has completed yet")
    else:
        params = ", ".join(f"{k}={_short(v)}" for k, v in best.params.items())
        lines.append(f"best: trial {best.number}, mIoU {best.value:.4f}  ({params})")
        baseline = next((t for t in trials if t.user_attrs.get("baseline") and t.state == TrialState.COMPLETE), None)
        if baseline is not None:
            lines.append(f"baseline: trial {baseline.number}, mIoU {baseline.value:.4f} "
                         f"({best.value - baseline.value:+.4f} for the best)")
    return lines


def require_writable(directory: Path) -> Path:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UserError(f"{directory}: cannot write outputs there ({error.strerror}); "
                        f"choose another with --output-dir or [study] output_dir") from None
    return directory


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m hpo.search", description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=DEFAULT_STUDY, help=f"study spec (default: {DEFAULT_STUDY})")
    parser.add_argument("--trials", type=positive_int,
                        help="finished (complete + pruned) trials the study should hold (default: [study] trials, "
                             "else 40)")
    parser.add_argument("--storage", help="Optuna storage URL (default: [study] storage, or "
                                          "sqlite:///<output dir>/study.db)")
    add_output_dir_argument(parser)
    parser.add_argument("--timeout", type=positive_float, help="start no new trial after this many seconds")
    parser.add_argument("--data-root", help="VOC root (overrides [train] data_root and $VOC_ROOT)")
    parser.add_argument("--workers", type=positive_int,
                        help="run this many worker processes on the study, one GPU each if there are GPUs")
    parser.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)  # workers: the parent prints it
    return parser


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The arguments of each worker --workers starts: the parent's, less --workers and the summary."""
    options = {"--study": args.study, "--trials": args.trials, "--storage": args.storage,
               "--output-dir": args.output_dir, "--timeout": args.timeout, "--data-root": args.data_root}
    return [*(part for flag, value in options.items() if value is not None for part in (flag, str(value))),
            "--no-summary"]


def add_output_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", type=Path, metavar="DIR",
                        help="where trials/, final/, probe.json and the default study.db go (default: [study] "
                             "output_dir, else runs/<name>); with several machines, shared storage, so that a "
                             "retry finds its dead trial's checkpoint")


def load_with_overrides(args: argparse.Namespace) -> StudySpec:
    """The spec, with the CLI's --data-root, --output-dir and --storage (any it has) applied."""
    spec = load_spec(args.study)
    if getattr(args, "data_root", None):
        spec = spec.with_train(data_root=args.data_root)
    if getattr(args, "output_dir", None):
        spec = spec.with_output_dir(args.output_dir)
    if getattr(args, "storage", None):
        spec = spec.with_storage(args.storage)
    return spec


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours,
    logging.getLogger("segtrain.engine").setLevel(logging.WARNING)  # not one per evaluation
    spec = load_with_overrides(args)
    try:
        if args.workers:
            return run_pool(spec, args)
        study = run_search(spec, args.trials or spec.study.trials, args.timeout)
    except KeyboardInterrupt:
        print("interrupted: the running trial is marked failed and queued to resume on the next run",
              file=sys.stderr)
        raise
    if not args.no_summary:
        print(summary(spec, study))
    return 0


def run_pool(spec: StudySpec, args: argparse.Namespace) -> int:
    """--workers N: check the input and open the study once, run the workers, then summarise."""
    study = prepare(spec)
    codes = run_workers(worker_argv(args), args.workers)
    print(summary(spec, study))
    failed = [(index, code) for index, code in enumerate(codes) if code]
    if failed:
        print(f"hpo.search: error: {', '.join(f'worker {i} exited with code {c}' for i, c in failed)}; "
              f"see its output above", file=sys.stderr)
        return failed[0][1] if failed[0][1] > 0 else 1  # < 0: killed by a signal
    return 0


def cli() -> None:
    sys.exit(run(main, prog="hpo.search"))


if __name__ == "__main__":
    cli()
