"""Optimizer with DeepLab's parameter groups, and the poly learning-rate schedule."""

from __future__ import annotations

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
