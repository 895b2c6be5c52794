"""What a training run reports: an EvalResult at each evaluation point, a TrainResult at its end.

Plain data that round-trips to JSON (result.json, checkpoints, Optuna user attrs), read by
hpo without importing the training loop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from segtrain.config import TrainConfig

# fields that may differ between a checkpoint and the run resuming it: where and how fast, not what
RUNTIME_FIELDS = {"data_root", "device", "workers", "compile"}


@dataclass(frozen=True)
class EvalResult:
    point: int  # k of cfg.eval_points: the step Optuna's pruners see
    step: int  # optimizer steps done
    epoch: float  # epochs of the train split done
    images_seen: int
    miou: float
    pixel_accuracy: float
    mean_class_accuracy: float
    per_class_iou: list[float | None]
    loss: float  # mean training loss since the previous evaluation (of the run, not of a branch)
    seconds: float  # wall time since the run started
    decay_steps: int = 0  # steps of the decay branch this score was taken after (wsd, before the last)
    branch_epochs: float = 0.0  # epochs trained in decay branches so far, this one's included

    @property
    def epochs_trained(self) -> float:
        """The compute spent so far, in epochs: the run's own and its decay branches'."""
        return self.epoch + self.branch_epochs


@dataclass(frozen=True)
class TrainResult:
    config: TrainConfig
    final_miou: float
    best_miou: float
    per_class_iou: list[float | None]  # at the end of training
    pixel_accuracy: float
    mean_class_accuracy: float
    history: list[EvalResult]
    steps: int
    seconds: float  # wall time, training and evaluation
    images_per_second: float  # training throughput
    peak_memory_bytes: int  # this run's: CUDA, the allocator's peak reserved; CPU, peak resident set (segtrain.memory)
    parameters: int
    branch_steps: int = 0  # steps trained in decay branches (wsd), besides `steps`
    eval_protocol: str | None = None  # how the mIoU figures were evaluated: segtrain.evaluation.Protocol.name

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainResult:
        return cls(**{**values, "config": TrainConfig.from_dict(values["config"]),
                      "history": [EvalResult(**h) for h in values["history"]]})


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; usually the learning rate is too high."""

    def __init__(self, step: int, lr: float, loss: float):
        super().__init__(f"loss became {loss} at step {step} (lr {lr:.4g})")
        self.step, self.lr, self.loss = step, lr, loss
