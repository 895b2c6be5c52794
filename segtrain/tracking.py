"""A run's curves where labs already look: TensorBoard event files, or an MLflow run.

The engine hands a Tracker each step's loss and learning rate when it reads them on the
host anyway (every SYNC_EVERY steps: tracking adds no device sync), the throughput, and
every evaluation's mIoU, pixel accuracy and per-class IoU. `open_tracker` makes one for a
run, with the parameters to record beside it: TensorBoard event files in <output dir>/tb/<run>
(torch.utils.tensorboard), or an MLflow run through MLflow's client: a run of its own, or the
run already active (optuna-integration's MLflowCallback opens one per trial, so that the
curves and the trial's summary share it). The packages come with the `tracking` extra;
without them the option says so in one line. Imports segtrain.records and data.labels.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from segtrain.data.labels import CLASS_NAMES
from segtrain.errors import UserError
from segtrain.records import EvalResult

TRACKERS = ("none", "tensorboard", "mlflow")
INSTALL = "pip install -e '.[tracking]'"  # the extra that brings tensorboard, mlflow-skinny, optuna-integration
PACKAGES = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow",)}


def require_tracker(kind: str, where: str, packages: Sequence[str] = ()) -> None:
    """UserError naming `where` (a flag or spec key) unless `kind` is known and its packages (and
    `packages`) are installed: bad input found before any training."""
    if kind not in TRACKERS:
        raise UserError(f"{where}: must be one of {', '.join(TRACKERS)}, got {kind!r}")
    missing = [name for name in (*PACKAGES.get(kind, ()), *packages) if not _installed(name)]
    if missing:
        raise UserError(f"{where} = {kind} needs {', '.join(missing)}, which is not installed: {INSTALL}")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # imported already, and its module has no __spec__ (optuna_integration's lazy loader)
        return True


def default_tracking_uri(directory: Path) -> str:
    """$MLFLOW_TRACKING_URI, as MLflow itself reads it, else a SQLite file in `directory`: no server
    needed (MLflow 3.13 and later refuse the old ./mlruns file store)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(directory) / 'mlflow.db').resolve()}"


class Tracker:
    """What a run logs; subclasses say where, through `log` and `close`."""

    def log(self, values: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self, failed: bool = False) -> None:
        raise NotImplementedError

    def log_steps(self, last_step: int, losses: Sequence[float], lrs: Sequence[float],
                  images_per_second: float) -> None:
        """The loss and backbone lr of each step up to `last_step`, and the throughput so far."""
        first_step = last_step - len(losses) + 1
        for offset, (loss, lr) in enumerate(zip(losses, lrs, strict=True)):
            self.log({"train/loss": loss, "train/lr": lr}, first_step + offset)
        self.log({"train/images_per_second": images_per_second}, last_step)

    def log_evaluation(self, result: EvalResult) -> None:
        values = {"val/miou": result.miou, "val/pixel_accuracy": result.pixel_accuracy,
                  "val/mean_class_accuracy": result.mean_class_accuracy, "train/epoch": result.epoch}
        values |= {f"val/iou/{name}": iou for name, iou in zip(CLASS_NAMES, result.per_class_iou) if iou is not None}
        self.log(values, result.step)


class TensorBoardTracker(Tracker):
    """Event files in `log_dir` (`tensorboard --logdir` its parent); the parameters as a text table."""

    def __init__(self, log_dir: Path, params: Mapping[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))
        self.writer.add_text("params", "| parameter | value |\n|---|---|\n"
                             + "".join(f"| {key} | {value} |\n" for key, value in params.items()))

    def log(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    """One MLflow run in `experiment` (the active run, if one is open: it stays open), its metrics sent in
    one batch per call."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, params: Mapping[str, Any]):
        import mlflow
        from mlflow.entities import Metric, Param

        self.metric = Metric
        self.client = mlflow.MlflowClient(tracking_uri)
        active = mlflow.active_run()
        self.owned = active is None
        if active is not None:
            self.run_id = active.info.run_id
        else:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        self.client.log_batch(self.run_id, params=[Param(key, str(value)) for key, value in params.items()])

    def log(self, values: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.metric(key, float(value), now, step)
                                                    for key, value in values.items()])

    def log_steps(self, last_step: int, losses: Sequence[float], lrs: Sequence[float],
                  images_per_second: float) -> None:
        """As Tracker's, in one request instead of one per step."""
        now = int(time.time() * 1000)
        first_step = last_step - len(losses) + 1
        metrics = [self.metric(key, float(value), now, first_step + offset)
                   for offset, (loss, lr) in enumerate(zip(losses, lrs, strict=True))
                   for key, value in (("train/loss", loss), ("train/lr", lr))]
        metrics.append(self.metric("train/images_per_second", images_per_second, now, last_step))
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, failed: bool = False) -> None:
        if self.owned:
            self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def open_tracker(kind: str, directory: Path, run_name: str, params: Mapping[str, Any],
                 experiment: str = "segtrain") -> Tracker | None:
    """A tracker for one run (None for "none"): TensorBoard event files in <directory>/tb/<run_name>, or
    an MLflow run named `run_name` in `experiment` at default_tracking_uri(directory)."""
    require_tracker(kind, "tracking")
    if kind == "tensorboard":
        return TensorBoardTracker(Path(directory) / "tb" / run_name, params)
    if kind == "mlflow":
        return MLflowTracker(default_tracking_uri(directory), experiment, run_name, params)
    return None


@contextmanager
def tracked(kind: str, directory: Path, run_name: str, params: Mapping[str, Any], experiment: str = "segtrain",
            enabled: bool = True) -> Iterator[Tracker | None]:
    """open_tracker's tracker (None when `enabled` is False: torchrun's other processes), closed at the end;
    an MLflow run of its own ends FAILED if the block raised."""
    tracker = open_tracker(kind, directory, run_name, params, experiment) if enabled else None
    try:
        yield tracker
    except BaseException:
        if tracker is not None:
            tracker.close(failed=True)
        raise
    if tracker is not None:
        tracker.close()
