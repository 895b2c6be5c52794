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
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState
from optuna_dashboard import save_note
from tqdm import tqdm

from hpo.budget import DEVICE_SECONDS, spent_seconds, trial_pricer
from hpo.objective import (FITS_MEMORY, BudgetExhausted, Objective, TrialOutOfMemory, feasible,
                           keep_best_checkpoints)
from hpo.space import enqueue_seeded
from hpo.spec import StudySpec, load_spec
from hpo.storage import (WORKER_ATTR, StudyLock, dashboard_command, fail_dead_trials, local_path,
                         open_storage, retry_callback, safe_url, worker_id)
from hpo.workers import WORKER_ENV, run_workers
from segtrain.cli import ArgumentParser, run
from segtrain.data import require_splits
from segtrain.errors import DiskFull, UserError

log = logging.getLogger(__name__)

DEFAULT_STUDY = Path("studies/voc_r50.toml")
SEED_STRIDE = 1_000_003  # keeps the sampler seeds of parallel workers apart
# TrainConfig fields that say where the data comes from (and synthetic*)
DATA_FIELDS = ("data_root", "train_split", "val_split")
SEEDED_LABELS = ("baseline", "recipe", "source")  # user attrs that a queued copy of a seeded trial keeps


@dataclass(frozen=True)
class Counts:
    complete: int
    pruned: int
    failed: int
    running: int
    diverged: int  # complete, with a NaN loss
    too_big: int  # complete, predicted not to fit the device: never trained

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    @classmethod
    def of(cls, study: optuna.Study) -> Counts:
        trials = study.get_trials(deepcopy=False)

        def count(state: TrialState) -> int:
            return sum(t.state == state for t in trials)

        def violated(constraint: str) -> int:
            return sum(t.state == TrialState.COMPLETE and t.constraints.get(constraint, 0) > 0 for t in trials)

        return cls(count(TrialState.COMPLETE), count(TrialState.PRUNED), count(TrialState.FAIL),
                   count(TrialState.RUNNING), violated("finite_loss"), violated(FITS_MEMORY))


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


class QuietReportedFailures(logging.Filter):
    """Drops Optuna's "Trial N failed ..." warnings (and their tracebacks) for the trials whose end the
    search reports in its own words: Ctrl-C, out of memory, budget, full disk."""

    def __init__(self, reported: set[int]):
        super().__init__()
        self.reported = reported

    def filter(self, record: logging.LogRecord) -> bool:
        found = re.match(r"Trial (\d+) failed", record.getMessage())
        return not (found and int(found.group(1)) in self.reported)


def run_search(spec: StudySpec, trials: int, timeout: float | None = None,
               budget_hours: float | None = None) -> optuna.Study:
    """Run trials until the study holds `trials` finished ones (or `timeout` seconds passed, or the
    budget, all workers together, cannot pay for the next trial)."""
    pricer, budget = trial_pricer(spec, budget_hours)  # before the study is touched: bad input leaves it be
    study = prepare(spec)
    output_dir = spec.study.output_dir
    lock = StudyLock(spec.study.storage, spec.study.name)
    objective = Objective(spec, output_dir / "trials", pricer, budget.hours * 3600 if budget else None,
                          admitted=lock.release)  # others may count this trial and its price now
    worker = worker_id()

    def start_trial(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker)  # before others see the trial: a retry's is its dead worker's
        return objective(trial)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        log.info("%s", describe(trial))
        keep_best_checkpoints(study, output_dir / "trials", spec.study.keep_checkpoints)

    quiet = QuietReportedFailures(objective.reported)
    optuna_log = logging.getLogger("optuna.study._optimize")  # where Optuna warns that a trial failed
    optuna_log.addFilter(quiet)
    started = time.monotonic()
    try:
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
                    if budget is not None and (reason := budget.stop_reason(study, spec)):
                        log.warning("%s", reason)
                        break
                    study.optimize(start_trial, n_trials=1, catch=(TrialOutOfMemory,), callbacks=[after_trial])
                except BudgetExhausted as error:
                    requeue_unstarted(study, objective.refused)
                    log.warning("%s; it is queued: rerun with a larger --budget-hours to go on (%.2f h spent)",
                                error, spent_seconds(study) / 3600)
                    break
                except DiskFull as error:
                    requeue(study, objective.interrupted)
                    raise UserError(f"{error}; trial {objective.interrupted} is queued to resume from its last "
                                    f"checkpoint") from None
                except KeyboardInterrupt:
                    if objective.interrupted is not None:
                        requeue(study, objective.interrupted)
                        print(f"interrupted: trial {objective.interrupted} is marked failed and queued to run "
                              f"again from its last checkpoint; rerun the same command to resume", file=sys.stderr)
                    else:
                        print("interrupted: no trial was running; rerun the same command to resume",
                              file=sys.stderr)
                    raise
                finally:
                    lock.release()
                bar.update(min(trials, Counts.of(study).finished) - bar.n)
    finally:
        optuna_log.removeFilter(quiet)
    return study


def requeue(study: optuna.Study, number: int) -> None:
    """Queue a copy of a trial Ctrl-C or a full disk failed, so the next run resumes it from its checkpoint."""
    retry_callback()(study, next(t for t in study.get_trials(deepcopy=False) if t.number == number))


def requeue_unstarted(study: optuna.Study, number: int) -> None:
    """Queue again a trial refused before it trained (the budget): same params and labels, next in line."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    study.enqueue_trial(dict(trial.params), user_attrs={k: v for k, v in trial.user_attrs.items()
                                                        if k in SEEDED_LABELS})


def outcome(trial: optuna.trial.FrozenTrial) -> str:
    """How a trial ended (or that it has not yet), in a few words."""
    if trial.state == TrialState.COMPLETE:
        return f"mIoU {trial.value:.4f}" if feasible(trial) else trial.user_attrs.get("failure", "infeasible")
    if trial.state == TrialState.PRUNED:
        return f"pruned at evaluation {trial.last_step}"
    if trial.state in (TrialState.RUNNING, TrialState.WAITING):
        return "running" if trial.state == TrialState.RUNNING else "queued, not run yet"
    return f"failed: {trial.user_attrs.get('failure', 'see the log above')}"


def describe(trial: optuna.trial.FrozenTrial) -> str:
    """One line per finished trial: its outcome and parameters."""
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    return f"trial {trial.number}: {outcome(trial)}  ({params})"


def summary(spec: StudySpec, study: optuna.Study, budget_hours: float | None = None) -> str:
    return "\n".join([*summary_lines(study, budget_hours), f"dashboard: {dashboard_command(spec.study.storage)}"])


def summary_lines(study: optuna.Study, budget_hours: float | None = None) -> list[str]:
    """What the study holds: trial counts, compute spent (and left of a budget), the best trial and
    the baseline."""
    counts = Counts.of(study)
    trials = study.get_trials(deepcopy=False)
    seconds = spent_seconds(study)
    epochs = sum(t.user_attrs.get("epochs", 0.0) for t in trials)
    devices = {str(t.user_attrs.get("device", "")).startswith("cpu") for t in trials if DEVICE_SECONDS in t.user_attrs}
    unit = {frozenset({True}): "CPU-hours", frozenset({False}): "GPU-hours"}.get(frozenset(devices), "device-hours")
    too_big = f", {counts.too_big} predicted not to fit" if counts.too_big else ""
    lines = [f"study {study.study_name}: {counts.complete} complete ({counts.diverged} diverged{too_big}), "
             f"{counts.pruned} pruned, {counts.failed} failed",
             f"compute: {seconds / 3600:.2f} {unit} ({seconds:.0f} device-seconds), {epochs:.1f} epochs trained"
             + (f"; budget {budget_hours:g} h, {max(0.0, budget_hours - seconds / 3600):.2f} h left"
                if budget_hours is not None else "")]
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


def positive_number(unit: str):
    """An argparse type: a number of `unit` > 0."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = 0.0
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be a number of {unit} > 0, got {text!r}")
        return value
    return parse


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m hpo.search", description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=DEFAULT_STUDY, help=f"study spec (default: {DEFAULT_STUDY})")
    parser.add_argument("--trials", type=positive_int,
                        help="finished (complete + pruned) trials the study should hold (default: [study] trials, "
                             "else 40)")
    parser.add_argument("--storage", help="Optuna storage URL (default: [study] storage, or "
                                          "sqlite:///<output dir>/study.db)")
    add_output_dir_argument(parser)
    parser.add_argument("--timeout", type=positive_number("seconds"), help="start no new trial after this many seconds")
    parser.add_argument("--budget-hours", type=positive_number("hours"), metavar="H",
                        help="start no trial whose predicted cost exceeds what is left of H device-hours, all "
                             "workers together (default: [study] budget_hours); needs the probe of hpo.plan")
    parser.add_argument("--data-root", help="VOC root (overrides [train] data_root and $VOC_ROOT)")
    parser.add_argument("--workers", type=positive_int,
                        help="run this many worker processes on the study, one GPU each if there are GPUs")
    parser.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)  # workers: the parent prints it
    return parser


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The arguments of each worker --workers starts: the parent's, less --workers and the summary."""
    options = {"--study": args.study, "--trials": args.trials, "--storage": args.storage,
               "--output-dir": args.output_dir, "--timeout": args.timeout, "--budget-hours": args.budget_hours,
               "--data-root": args.data_root}
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
    budget_hours = args.budget_hours or spec.study.budget_hours
    if args.workers:
        try:
            return run_pool(spec, args, budget_hours)
        except KeyboardInterrupt:
            print("interrupted: each worker's running trial is marked failed and queued to run again from its "
                  "last checkpoint; rerun the same command to resume", file=sys.stderr)
            raise
    study = run_search(spec, args.trials or spec.study.trials, args.timeout, budget_hours)
    if not args.no_summary:
        print(summary(spec, study, budget_hours))
    return 0


def run_pool(spec: StudySpec, args: argparse.Namespace, budget_hours: float | None) -> int:
    """--workers N: check the input and open the study once, run the workers, then summarise."""
    trial_pricer(spec, budget_hours)  # a budget without a probe is bad input before anything starts
    study = prepare(spec)
    codes = run_workers(worker_argv(args), args.workers)
    print(summary(spec, study, budget_hours))
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
