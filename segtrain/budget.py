"""A run's budget in steps: how many, when each evaluation falls, the warm-up, and wsd's decay and branches.

The budget is in epochs of the train split, and the k-th of `eval_points` evaluations
falls after k/eval_points of it, so evaluation k means the same amount of data whatever
the batch size: pruners compare like with like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from segtrain.config import TrainConfig
from segtrain.errors import ConfigError


@dataclass(frozen=True)
class Budget:
    total_steps: int
    eval_steps: tuple[int, ...]  # step of evaluation k, k = 1..eval_points
    warmup_steps: int
    per_process_batch: int
    decay_steps: int  # wsd: the run's decay, its last steps; 0 under poly
    branch_steps: tuple[int, ...]  # wsd: steps of the decay branch before evaluation k; 0 at the last

    @classmethod
    def plan(cls, cfg: TrainConfig, train_images: int, world_size: int) -> Budget:
        if cfg.batch_size % world_size:
            raise ConfigError("batch_size", f"must be divisible by the {world_size} processes, "
                                            f"got {cfg.batch_size}")
        steps_per_epoch = train_images / cfg.batch_size
        total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
        # evaluation k after k/eval_points of the images (to within half a batch), the last at the end
        evals = sorted({max(1, math.floor(cfg.epochs * steps_per_epoch * k / cfg.eval_points + 0.5))
                        for k in range(1, cfg.eval_points)} | {total})
        if len(evals) < cfg.eval_points:
            raise ConfigError("eval_points", f"{cfg.eval_points} evaluations do not fit in "
                                             f"{total} training steps; raise epochs or lower eval_points")
        decay, branches = 0, (0,) * len(evals)
        if cfg.schedule == "wsd":
            decay = max(1, math.floor(cfg.decay_fraction * total + 0.5))
            # a branch of n steps after s makes s + n steps a complete run, n of them decaying
            ratio = cfg.decay_fraction / (1 - cfg.decay_fraction)
            branches = tuple(max(1, math.floor(step * ratio + 0.5)) for step in evals[:-1]) + (0,)
        return cls(total, tuple(evals), round(cfg.warmup_epochs * steps_per_epoch),
                   cfg.batch_size // world_size, decay, branches)
