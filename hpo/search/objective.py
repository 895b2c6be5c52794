"""A trial: sampled params -> TrainConfig -> segtrain's train(), reporting mIoU so pruners can stop it.

How trials end, and why:
- complete: the value is the final validation mIoU at the end of the budget.
- pruned: the pruner stopped it at an evaluation point before the last (TrialPruned).
- diverged (NaN/inf loss): COMPLETE with the mIoU of its last evaluation (0 if
  none) and the constraint `finite_loss` violated. Divergence is a real outcome
  of the hyperparameters (usually lr too high): a FAILED trial would be ignored
  by the sampler, which could then keep proposing the same region; an infeasible
  one is ranked below every feasible trial by TPE and never becomes best_trial.
- out of memory: FAIL, reason recorded. It says nothing about segmentation
  quality, only about this GPU, so the sampler should ignore it rather than
  learn "large crops are bad"; such trials fail at their first step, cheaply.
- predicted out of memory (a probe exists: hpo.plan): the cost model says the
  configuration cannot fit the probed device, so it is not trained at all:
  COMPLETE with value 0 and the constraint `fits_memory` violated (by how far it is
  over the limit), so that TPE, which ranks infeasible trials below feasible ones,
  learns where the boundary lies; no device time spent.
- over budget (--budget-hours): the predicted cost exceeds what the study has left;
  not trained, FAIL with reason "budget" (BudgetExhausted), queued again by the search.
- disk full while writing a checkpoint: FAIL with the reason (DiskFull), queued
  again by the search, which stops: the disk needs the user first.

Each trial records its compute as user attributes: `device_seconds`, its wall time on
its one device (GPU or CPU, named in `device`), which budgets and the summary count;
`seconds`, the training run's wall time, and `epochs`, epochs of the train split
trained (decay branches of the wsd schedule included), both as of its last evaluation.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback

from hpo.plan.cost import TrialPricer
from hpo.search.tracking import StudyTracking
from hpo.space import suggest, train_overrides
from hpo.spec import StudySpec
from hpo.trials import (
    DEVICE_SECONDS,
    FINITE_LOSS,
    FITS_MEMORY,
    PREDICTED_SECONDS,
    committed_seconds,
    feasible,
    spent_seconds,
)
from segtrain.config import TrainConfig
from segtrain.device import resolve_device
from segtrain.engine import CHECKPOINT, train
from segtrain.errors import DiskFull
from segtrain.profile import device_name
from segtrain.records import EvalResult, TrainingDiverged

log = logging.getLogger(__name__)


class TrialOutOfMemory(RuntimeError):
    """A trial needed more memory than the device has; the study goes on."""


class BudgetExhausted(RuntimeError):
    """The next trial would cost more device time than the study's budget has left."""


def trial_dir(trials_dir: Path, number: int) -> Path:
    return trials_dir / str(number)


class Objective:
    """Runs one trial. With a `pricer` (the probe's cost model) a configuration predicted not to
    fit the device is not trained, and with `budget_seconds` neither is one that would overrun
    the study's budget. `admitted()` is called once a trial has passed those checks: the search
    holds the study's lock until then, so workers count each other's admitted trials."""

    def __init__(self, spec: StudySpec, trials_dir: Path, pricer: TrialPricer | None = None,
                 budget_seconds: float | None = None, admitted: Callable[[], None] = lambda: None,
                 tracking: StudyTracking | None = None):
        self.spec = spec
        self.trials_dir = trials_dir
        self.pricer = pricer
        self.budget_seconds = budget_seconds
        self.admitted = admitted
        self.interrupted: int | None = None  # the trial Ctrl-C or a full disk stopped, to be re-queued
        self.refused: int | None = None  # the trial the budget refused, to be re-queued
        self.reported: set[int] = set()  # trials whose failure the search reports itself (hpo.search quiets Optuna's)
        self.device = device_name(resolve_device(spec.train_config().device))
        self.tracking = tracking or StudyTracking.of(spec)  # where each trial's curves go

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = self.spec.train_config(train_overrides(self.spec.space, suggest(trial, self.spec.space)))
        trial.set_user_attr("config", cfg.to_dict())
        trial.set_user_attr("device", self.device)
        trial.set_user_attr(DEVICE_SECONDS, 0.0)
        refusal = self.admit(trial, cfg)
        self.admitted()
        if refusal is not None:
            return refusal
        started = time.monotonic()
        try:
            return self.train(trial, cfg, started)
        finally:
            trial.set_user_attr(DEVICE_SECONDS, time.monotonic() - started)

    def admit(self, trial: optuna.Trial, cfg: TrainConfig) -> float | None:
        """None for a trial to train; the value of a trial that ends here, predicted not to fit.
        Raises BudgetExhausted for one the budget cannot pay for."""
        if self.pricer is None:
            return None
        prediction = self.pricer.predict(cfg.to_dict())
        if not prediction.fits:
            limit, device = self.pricer.model.memory_limit_bytes, self.pricer.model.probe.device
            need = (f"~{prediction.memory_bytes / 2 ** 30:.1f} GiB" if math.isfinite(prediction.memory_bytes)
                    else "more (the probe ran out of memory at a smaller crop and batch)")
            trial.set_user_attr("failure", f"predicted out of memory at crop {cfg.crop_size}, batch "
                                           f"{cfg.batch_size}, output stride {cfg.output_stride}: needs {need} of "
                                           f"{limit / 2 ** 30:.1f} GiB on {device}; not trained")
            over = prediction.memory_bytes / limit - 1
            trial.set_constraint(FITS_MEMORY, min(1.0, over) if over > 0 else 1.0)  # how far over the limit
            return 0.0
        seconds = self.pricer.seconds(cfg.to_dict())
        trial.set_user_attr(PREDICTED_SECONDS, seconds)
        if self.budget_seconds is not None:
            study = trial.study
            left = self.budget_seconds - spent_seconds(study) - committed_seconds(study, exclude=trial.number)
            if seconds > left:
                trial.set_user_attr("failure", f"budget: needs ~{seconds / 3600:.2f} h, {max(0.0, left) / 3600:.2f} h "
                                               f"left of {self.budget_seconds / 3600:g} h; not trained")
                self.refused = trial.number
                self.reported.add(trial.number)
                raise BudgetExhausted(f"budget: trial {trial.number} needs ~{seconds / 3600:.2f} h and "
                                      f"{max(0.0, left) / 3600:.2f} h are left of {self.budget_seconds / 3600:g} h")
        return None

    def train(self, trial: optuna.Trial, cfg: TrainConfig, started: float) -> float:
        run_dir = trial_dir(self.trials_dir, trial.number)
        resume = self.adopt_checkpoint(trial, run_dir)
        history: list[EvalResult] = []

        def report(result: EvalResult) -> None:
            history.append(result)
            trial.set_user_attr(DEVICE_SECONDS, time.monotonic() - started)
            trial.set_user_attr("seconds", result.seconds)
            trial.set_user_attr("epochs", result.epochs_trained)
            trial.report(result.miou, result.point)
            # at the last evaluation the budget is spent: pruning would only discard the result
            if result.point < cfg.eval_points and trial.should_prune():
                remove_checkpoint(run_dir)
                raise optuna.TrialPruned(f"pruned at evaluation {result.point} (mIoU {result.miou:.4f})")

        try:
            with self.tracking.run(run_dir, {**trial.params, "trial": trial.number}) as tracker:
                result = train(cfg, on_eval=report, run_dir=run_dir, resume=resume, tracker=tracker)
        except TrainingDiverged as error:
            remove_checkpoint(run_dir)
            trial.set_user_attr("failure", f"diverged: {error}")
            trial.set_constraint(FINITE_LOSS, 1.0)
            log.warning("trial %d diverged: %s", trial.number, error)
            return history[-1].miou if history else 0.0
        except torch.OutOfMemoryError as error:
            remove_checkpoint(run_dir)
            reason = f"out of memory at crop {cfg.crop_size}, batch {cfg.batch_size}, output stride " \
                     f"{cfg.output_stride}: {str(error).splitlines()[0]}"
            trial.set_user_attr("failure", reason)
            self.reported.add(trial.number)
            raise TrialOutOfMemory(reason) from None
        except DiskFull as error:
            self.interrupted = trial.number
            self.reported.add(trial.number)
            trial.set_user_attr("failure", f"disk full: {error}")
            raise
        except KeyboardInterrupt:
            self.interrupted = trial.number
            self.reported.add(trial.number)
            trial.set_user_attr("failure", "interrupted (Ctrl-C)")
            raise
        for key in ("seconds", "images_per_second", "peak_memory_bytes", "best_miou", "parameters"):
            trial.set_user_attr(key, getattr(result, key))
        trial.set_user_attr("epochs", result.history[-1].epochs_trained)
        return result.final_miou

    def adopt_checkpoint(self, trial: optuna.Trial, run_dir: Path) -> bool:
        """A retry of a trial whose worker died continues from that trial's checkpoint."""
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        history = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
        if not history:
            return False
        previous = trial_dir(self.trials_dir, history[-1]) / CHECKPOINT
        if not previous.exists():
            log.info("trial %d retries trial %d from the start (no checkpoint)", trial.number, history[-1])
            return False
        run_dir.mkdir(parents=True, exist_ok=True)
        os.replace(previous, run_dir / CHECKPOINT)
        log.info("trial %d resumes trial %d from its checkpoint", trial.number, history[-1])
        return True


def remove_checkpoint(run_dir: Path) -> None:
    (run_dir / CHECKPOINT).unlink(missing_ok=True)


def keep_best_checkpoints(study: optuna.Study, trials_dir: Path, keep: int) -> None:
    """Delete the checkpoints of finished trials outside the best `keep`, so disk stays bounded.

    Running trials keep theirs (they may be resumed), and so do failed ones: a
    trial failed by the heartbeat is retried from its checkpoint.
    """
    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                        optuna.trial.TrialState.PRUNED))
    ranked = sorted((t for t in finished if t.state == optuna.trial.TrialState.COMPLETE and feasible(t)),
                    key=lambda t: t.value, reverse=True)
    best = {t.number for t in ranked[:keep]}
    for trial in finished:
        if trial.number not in best:
            remove_checkpoint(trial_dir(trials_dir, trial.number))
