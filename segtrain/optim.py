"""Optimizer with DeepLab's parameter groups, and the learning-rate schedules: poly and
warmup-stable-decay (wsd), whose decay formulas also drive the decay branches of segtrain.engine."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from segtrain.config import TrainConfig


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Backbone at `lr`, heads at `lr * head_lr_multiplier`; no weight decay on
    BatchNorm weights and biases (1-d tensors), as in the DeepLab recipes."""
    groups = []
    for part, lr in (("backbone", cfg.lr), ("head", cfg.lr * cfg.head_lr_multiplier)):
        params = [(name, p) for name, p in model.named_parameters()
                  if p.requires_grad and name.startswith("backbone.") == (part == "backbone")]
        decay = [p for _, p in params if p.ndim > 1]
        no_decay = [p for _, p in params if p.ndim <= 1]
        groups.append({"params": decay, "lr": lr, "weight_decay": cfg.weight_decay, "name": part})
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{part}-no-decay"})
    return [group for group in groups if group["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def poly_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                  power: float = 0.9) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the base lr, then lr * (1 - progress) ** power; stepped per iteration."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 1.0 - progress) ** power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def linear_decay(progress: float) -> float:
    return 1.0 - progress


def cosine_decay(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def one_minus_sqrt_decay(progress: float) -> float:
    """Drops fast, then lingers near 0: better than linear in Hägele et al. 2024 (arXiv:2405.18392)."""
    return 1.0 - math.sqrt(progress)


# the share of the lr left `progress` (0 -> 1) of the way through a decay; names as in config.DECAY_SHAPES
DECAY_SHAPES: dict[str, Callable[[float], float]] = {
    "1-sqrt": one_minus_sqrt_decay, "linear": linear_decay, "cosine": cosine_decay}


def wsd_factor(step: int, total_steps: int, warmup_steps: int, decay_steps: int, shape: str) -> float:
    """The lr factor of step `step` (0-based) of a warmup-stable-decay run: linear warmup,
    1 until the last `decay_steps` steps, then down to 0 after the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_start = max(warmup_steps, total_steps - decay_steps)  # a rounded warmup may reach into the decay
    if step < decay_start:
        return 1.0
    return DECAY_SHAPES[shape]((step - decay_start) / max(1, total_steps - decay_start))


def wsd_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, decay_steps: int,
                 shape: str) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup-stable-decay (Hu et al. 2024, MiniCPM); stepped per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: wsd_factor(step, total_steps, warmup_steps, decay_steps, shape))


def decay_branch_lrs(start_lrs: list[float], steps: int, shape: str) -> Iterator[list[float]]:
    """The lrs of each step of a decay branch: from `start_lrs` (the run's current ones, one per
    parameter group) to 0 after `steps` steps, as the last `steps` steps of a wsd run decay."""
    for step in range(steps):
        factor = DECAY_SHAPES[shape](step / steps)
        yield [lr * factor for lr in start_lrs]


def build_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int, warmup_steps: int,
                   decay_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """cfg.schedule's per-step scheduler; `decay_steps` is wsd's decay, ignored by poly."""
    if cfg.schedule == "poly":
        return poly_schedule(optimizer, total_steps, warmup_steps, cfg.poly_power)
    if cfg.schedule == "wsd":
        return wsd_schedule(optimizer, total_steps, warmup_steps, decay_steps, cfg.decay_shape)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")
