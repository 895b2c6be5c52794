"""The search loop: open (or create) the study, then run trials until it holds enough finished ones.

Trials start one at a time under the study's lock, so several workers on one storage
together stop at exactly the target; a trial that Ctrl-C, a full disk or the budget stops
is queued again, to resume from its checkpoint. hpo.search.objective runs each trial.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path

import optuna
from optuna_dashboard import save_note

from hpo.plan.budget import trial_pricer
from hpo.search.objective import BudgetExhausted, Objective, TrialOutOfMemory, keep_best_checkpoints
from hpo.search.storage import WORKER_ATTR, StudyLock, fail_dead_trials, open_storage, retry_callback, worker_id
from hpo.search.tracking import StudyTracking
from hpo.search.workers import WORKER_ENV
from hpo.space import enqueue_seeded
from hpo.spec import StudySpec
from hpo.storage_urls import dashboard_command, local_path, safe_url
from hpo.trials import Counts, describe, spent_seconds, summary_lines
from segtrain.data import require_disjoint_splits, require_splits
from segtrain.errors import DiskFull, UserError
from segtrain.progress import progress

log = logging.getLogger(__name__)

SEED_STRIDE = 1_000_003  # keeps the sampler seeds of parallel workers apart
# TrainConfig fields that say where the data comes from (and synthetic*)
DATA_FIELDS = ("data_root", "train_split", "val_split")
SEEDED_LABELS = ("baseline", "recipe", "source")  # user attrs that a queued copy of a seeded trial keeps


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
        study.set_metric_names([spec.metric_name])  # the dashboard's name for the value; again if the split changed
        if not study.trials:  # a new study; later, finalize adds its results to the note
            save_note(study, spec.to_markdown())
        enqueue_seeded(study, spec.space, spec.seeded_trials())
    return study


def require_data(spec: StudySpec) -> None:
    """The data every trial reads exists (its root, split files, and each listed image and mask), and the
    split it is scored on shares no image with the split it trains on.

    Skipped when the space searches where the data comes from; each trial checks its own files then.
    """
    if not any(param.name in DATA_FIELDS or param.name.startswith("synthetic") for param in spec.space):
        config = spec.train_config()
        require_splits(config)  # a synthetic set is made here, on first use
        require_disjoint_splits(config, f"{spec.path}: [train]")


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
    tracking = StudyTracking.of(spec)  # likewise: a missing package is one line before any change
    study = prepare(spec)
    output_dir = spec.study.output_dir
    lock = StudyLock(spec.study.storage, spec.study.name)
    objective = Objective(spec, output_dir / "trials", pricer, budget.hours * 3600 if budget else None,
                          admitted=lock.release,  # others may count this trial and its price now
                          tracking=tracking)
    worker = worker_id()

    def start_trial(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker)  # before others see the trial: a retry's is its dead worker's
        return objective(trial)

    tracked_trial, summaries = tracking.trials(start_trial)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        log.info("%s", describe(trial))
        keep_best_checkpoints(study, output_dir / "trials", spec.study.keep_checkpoints)

    quiet = QuietReportedFailures(objective.reported)
    optuna_log = logging.getLogger("optuna.study._optimize")  # where Optuna warns that a trial failed
    optuna_log.addFilter(quiet)
    started = time.monotonic()
    try:
        with progress(total=trials, initial=min(trials, Counts.of(study).finished), unit="trials",
                      desc=f"study {spec.study.name}") as bar:
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
                    study.optimize(tracked_trial, n_trials=1, catch=(TrialOutOfMemory,),
                                   callbacks=[after_trial, *summaries])
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


def summary(spec: StudySpec, study: optuna.Study, budget_hours: float | None = None) -> str:
    return "\n".join([*summary_lines(study, budget_hours), f"dashboard: {dashboard_command(spec.study.storage)}"])


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


