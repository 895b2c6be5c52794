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
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback

from hpo.space import suggest, train_overrides
from hpo.spec import StudySpec
from segtrain.engine import CHECKPOINT, EvalResult, TrainingDiverged, train

log = logging.getLogger(__name__)


class TrialOutOfMemory(RuntimeError):
    """A trial needed more memory than the device has; the study goes on."""


def trial_dir(trials_dir: Path, number: int) -> Path:
    return trials_dir / str(number)


class Objective:
    def __init__(self, spec: StudySpec, trials_dir: Path):
        self.spec = spec
        self.trials_dir = trials_dir
        self.interrupted: int | None = None  # the trial Ctrl-C stopped, to be re-queued

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = self.spec.train_config(train_overrides(self.spec.space, suggest(trial, self.spec.space)))
        trial.set_user_attr("config", cfg.to_dict())
        run_dir = trial_dir(self.trials_dir, trial.number)
        resume = self.adopt_checkpoint(trial, run_dir)
        history: list[EvalResult] = []

        def report(result: EvalResult) -> None:
            history.append(result)
            trial.set_user_attr("seconds", result.seconds)
            trial.set_user_attr("epochs", result.epoch)
            trial.report(result.miou, result.point)
            # at the last evaluation the budget is spent: pruning would only discard the result
            if result.point < cfg.eval_points and trial.should_prune():
                remove_checkpoint(run_dir)
                raise optuna.TrialPruned(f"pruned at evaluation {result.point} (mIoU {result.miou:.4f})")

        try:
            result = train(cfg, on_eval=report, run_dir=run_dir, resume=resume)
        except TrainingDiverged as error:
            remove_checkpoint(run_dir)
            trial.set_user_attr("failure", f"diverged: {error}")
            trial.set_constraint("finite_loss", 1.0)
            log.warning("trial %d diverged: %s", trial.number, error)
            return history[-1].miou if history else 0.0
        except torch.OutOfMemoryError as error:
            remove_checkpoint(run_dir)
            reason = f"out of memory at crop {cfg.crop_size}, batch {cfg.batch_size}, output stride " \
                     f"{cfg.output_stride}: {str(error).splitlines()[0]}"
            trial.set_user_attr("failure", reason)
            raise TrialOutOfMemory(reason) from None
        except KeyboardInterrupt:
            self.interrupted = trial.number
            trial.set_user_attr("failure", "interrupted (Ctrl-C)")
            raise
        for key in ("seconds", "images_per_second", "peak_memory_bytes", "best_miou", "parameters"):
            trial.set_user_attr(key, getattr(result, key))
        trial.set_user_attr("epochs", result.history[-1].epoch)
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


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(value <= 0 for value in trial.constraints.values())

