"""What a search's trials say once they ran: their outcome, their compute, which are feasible, the ranking.

The search writes these facts (user attributes and constraints, named here), and the plan,
finalize and the report read them; so they live below all of them. Imports optuna only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

DEVICE_SECONDS = "device_seconds"  # user attr: wall seconds of the trial on its one device
PREDICTED_SECONDS = "predicted_device_seconds"  # user attr: the cost model's price of the trial
FITS_MEMORY = "fits_memory"  # constraint: > 0 where the configuration is predicted not to fit the device
FINITE_LOSS = "finite_loss"  # constraint: > 0 where the loss became NaN or infinite (diverged)


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(value <= 0 for value in trial.constraints.values())


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete, feasible trials with distinct params, best score first; ties go to the cheaper one."""
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)]
    trials.sort(key=lambda t: (-t.value, t.user_attrs.get("seconds", float("inf")), t.number))
    distinct: dict[str, FrozenTrial] = {}
    for trial in trials:
        distinct.setdefault(json.dumps(trial.params, sort_keys=True), trial)
    return list(distinct.values())


def spent_seconds(study: optuna.Study) -> float:
    """Device-seconds the study's trials have used, all workers together (running ones so far)."""
    return sum(trial.user_attrs.get(DEVICE_SECONDS, trial.user_attrs.get("seconds", 0.0))  # older trials: wall time
               for trial in study.get_trials(deepcopy=False))


def committed_seconds(study: optuna.Study, exclude: int | None = None) -> float:
    """What the trials running now (but `exclude`) are predicted to need beyond what they used."""
    return sum(max(0.0, trial.user_attrs.get(PREDICTED_SECONDS, 0.0) - trial.user_attrs.get(DEVICE_SECONDS, 0.0))
               for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if trial.number != exclude)


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
                   count(TrialState.RUNNING), violated(FINITE_LOSS), violated(FITS_MEMORY))


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


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


