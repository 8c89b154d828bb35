"""Optimiser and learning-rate schedule (pure torch; no Ray, no wandb).

The authors train with SGD, momentum 0.9, Nesterov, weight decay 5e-4 (none on BatchNorm and biases), lr 0.001
for a batch of about 60 clips, and step the lr down x0.1 at fixed epochs (ECO_REFERENCE.md, "Data and training
recipe"). We scale the lr linearly with the real global batch (Goyal et al. 2017, "Accurate, Large Minibatch SGD",
section 2.1) and express the schedule as a pure function of the optimiser step, as in nanoGPT's `get_lr`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights of conv/linear layers (decayed) and BatchNorm parameters plus all biases (not decayed).

    Decaying BN scales and shifts or biases only shrinks them towards zero without regularising the function
    (the authors' TSN/ECO code sets `decay_mult: 0` for them).
    """
    decay, no_decay = [], []
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if is_norm or name == "bias" else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def global_batch_size(num_workers: int, batch_size: int, grad_accum_steps: int) -> int:
    """Clips contributing to one optimiser step."""
    return num_workers * batch_size * grad_accum_steps


def scaled_lr(lr: float, base_batch_size: int, global_batch: int) -> float:
    """Linear scaling rule: `lr` was tuned for `base_batch_size` clips per step."""
    return lr * global_batch / base_batch_size


@dataclass(frozen=True)
class Schedule:
    """Everything `lr_at` needs, in optimiser steps (built once per run by `make_schedule`)."""

    peak_lr: float
    total_steps: int
    steps_per_epoch: int
    warmup_steps: int = 0
    kind: str = "step"  # "step" | "cosine" | "constant"
    milestones: tuple[int, ...] = ()  # in steps, for "step"
    decay: float = 0.1
    min_lr_ratio: float = 0.0


def make_schedule(optim: OptimConfig, *, peak_lr: float, steps_per_epoch: int, epochs: int) -> Schedule:
    """Convert the epoch-based recipe (warmup_epochs, lr_steps) into optimiser steps."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    return Schedule(
        peak_lr=peak_lr,
        total_steps=steps_per_epoch * epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=round(optim.warmup_epochs * steps_per_epoch),
        kind=optim.schedule,
        milestones=tuple(int(e * steps_per_epoch) for e in optim.lr_steps),
        decay=optim.lr_decay,
        min_lr_ratio=optim.min_lr_ratio,
    )


def lr_at(step: int, s: Schedule) -> float:
    """Learning rate for optimiser step `step` (0-based): linear warmup, then step / cosine / constant."""
    if step < s.warmup_steps:
        # Start at peak/warmup rather than 0 so the first step already moves the weights.
        return s.peak_lr * (step + 1) / s.warmup_steps
    if s.kind == "constant":
        return s.peak_lr
    if s.kind == "step":
        return s.peak_lr * s.decay ** sum(step >= m for m in s.milestones)
    if s.kind == "cosine":
        span = max(1, s.total_steps - s.warmup_steps)
        progress = min(1.0, (step - s.warmup_steps) / span)
        floor = s.peak_lr * s.min_lr_ratio
        return floor + (s.peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"optim.schedule: expected one of 'step', 'cosine', 'constant', got {s.kind!r}")


def build_optimizer(model: nn.Module, optim: OptimConfig, lr: float) -> torch.optim.SGD:
    """SGD (Nesterov by default) over `parameter_groups`; the lr is overwritten every step from `lr_at`."""
    return torch.optim.SGD(
        parameter_groups(model, optim.weight_decay),
        lr=lr,
        momentum=optim.momentum,
        nesterov=optim.nesterov and optim.momentum > 0,
        weight_decay=optim.weight_decay,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
