"""[study] tracking: every trial and final run in TensorBoard or MLflow, and each finished trial's summary.

Each trial and each final run gets a segtrain Tracker (its curves) carrying the study's
parameters and its trial number, in <output dir>/tb/<its run dir> or in the MLflow
experiment named after the study. Each finished trial is also summarised, beside its
curves: under MLflow by optuna-integration's MLflowCallback, whose track_in_mlflow() opens
the trial's run before it trains, so that its curves and its summary (the value under the
metric's name, parameters, state, user attrs) make one run; under TensorBoard by torch's
SummaryWriter.add_hparams in the trial's dir (TensorBoard's HPARAMS tab), because
optuna-integration's TensorBoardCallback writes through TensorFlow. optuna-integration
deprecated both callbacks in 4.9 (to be removed in 6.0, for OptunaHub): the extra keeps it
below 6. Imports hpo.spec and segtrain.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from hpo.spec import StudySpec
from segtrain.tracking import Tracker, default_tracking_uri, require_tracker, tracked

Objective = Callable[[optuna.Trial], float]
Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


@dataclass(frozen=True)
class StudyTracking:
    kind: str  # segtrain.tracking.TRACKERS
    output_dir: Path  # tb/ and mlflow.db go here
    experiment: str  # the study's name
    metric: str  # what a trial's value is: StudySpec.metric_name

    @classmethod
    def of(cls, spec: StudySpec) -> StudyTracking:
        """The spec's tracking, its packages checked first (one line naming the extra if one is missing)."""
        kind = spec.study.tracking
        require_tracker(kind, f"{spec.path}: [study] tracking", ("optuna_integration",) if kind == "mlflow" else ())
        return cls(kind, spec.study.output_dir, spec.study.name, spec.metric_name)

    def run(self, run_dir: Path, params: Mapping[str, Any]) -> AbstractContextManager[Tracker | None]:
        """The tracker of the run in `run_dir` (trials/7, final/top-1-.../seed-0), named after it."""
        return tracked(self.kind, self.output_dir, Path(run_dir).relative_to(self.output_dir).as_posix(), params,
                       self.experiment)

    def trials(self, objective: Objective) -> tuple[Objective, list[Callback]]:
        """The objective to optimize and the callbacks that summarise each finished trial."""
        if self.kind == "mlflow":
            from optuna_integration import MLflowCallback

            with warnings.catch_warnings():  # deprecated for OptunaHub, which has no MLflow callback yet
                warnings.filterwarnings("ignore", message="MLflowCallback has been deprecated", category=FutureWarning)
                callback = MLflowCallback(tracking_uri=default_tracking_uri(self.output_dir), metric_name=self.metric)
            return callback.track_in_mlflow()(objective), [callback]
        if self.kind == "tensorboard":
            return objective, [self.hparams]
        return objective, []

    def hparams(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A complete trial's parameters and value in its TensorBoard dir, for the HPARAMS tab."""
        if trial.value is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(self.output_dir / "tb" / "trials" / str(trial.number))) as writer:
            writer.add_hparams({**trial.params, "trial": trial.number}, {self.metric: trial.value}, run_name=".")

