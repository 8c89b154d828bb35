"""The optimiser's parameter groups and the lr schedule (pure, milliseconds)."""

import math

import pytest
import torch
from torch import nn

from pipeline.config import OptimConfig
from pipeline.training.optim import (
    Schedule, build_optimizer, global_batch_size, lr_at, make_schedule, parameter_groups, scaled_lr,
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, bias=True)
        self.bn = nn.BatchNorm3d(4)
        self.conv2d = nn.Conv2d(4, 4, 1, bias=False)
        self.bn2d = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)


def test_no_weight_decay_on_batchnorm_and_biases():
    m = Tiny()
    decay, no_decay = parameter_groups(m, weight_decay=5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == ids([m.conv.weight, m.conv2d.weight, m.fc.weight])
    assert ids(no_decay["params"]) == ids([m.conv.bias, m.bn.weight, m.bn.bias, m.bn2d.weight, m.bn2d.bias,
                                          m.fc.bias])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def test_sgd_nesterov_and_groups():
    opt = build_optimizer(Tiny(), OptimConfig(momentum=0.9, nesterov=True, weight_decay=1e-4), lr=0.1)
    assert isinstance(opt, torch.optim.SGD)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    assert all(g["nesterov"] and g["momentum"] == 0.9 and g["lr"] == 0.1 for g in opt.param_groups)


def test_linear_scaling_rule():
    # The authors: lr 0.001 for 15 clips x 4 accumulation = 60 clips per step.
    assert global_batch_size(num_workers=8, batch_size=16, grad_accum_steps=2) == 256
    assert scaled_lr(0.001, 60, 60) == pytest.approx(0.001)
    assert scaled_lr(0.001, 60, 240) == pytest.approx(0.004)
    assert scaled_lr(0.01, 64, 16) == pytest.approx(0.0025)


def test_step_schedule_table():
    s = make_schedule(OptimConfig(schedule="step", lr_steps=(2, 4), lr_decay=0.1), peak_lr=1.0,
                      steps_per_epoch=10, epochs=6)
    assert (s.total_steps, s.milestones, s.warmup_steps) == (60, (20, 40), 0)
    table = {0: 1.0, 19: 1.0, 20: 0.1, 39: 0.1, 40: 0.01, 59: 0.01}
    for step, lr in table.items():
        assert lr_at(step, s) == pytest.approx(lr), step


def test_warmup_then_cosine():
    s = make_schedule(OptimConfig(schedule="cosine", warmup_epochs=1, min_lr_ratio=0.1), peak_lr=2.0,
                      steps_per_epoch=4, epochs=5)
    assert s.warmup_steps == 4 and s.total_steps == 20
    assert [lr_at(i, s) for i in range(4)] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert lr_at(4, s) == pytest.approx(2.0)  # cosine starts at the peak
    mid = 4 + 8  # half-way through the 16 decay steps
    assert lr_at(mid, s) == pytest.approx(0.2 + 1.8 * 0.5)
    assert lr_at(20, s) == pytest.approx(0.2)
    assert lr_at(1000, s) == pytest.approx(0.2)  # clamps past the end
    values = [lr_at(i, s) for i in range(4, 21)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_constant_and_pure():
    s = Schedule(peak_lr=0.3, total_steps=10, steps_per_epoch=5, kind="constant")
    assert {lr_at(i, s) for i in range(10)} == {0.3}
    # Pure: the lr of a step does not depend on which steps were computed before or in which order (a resumed run
    # starts computing at its checkpoint's step). A hidden counter or cache would make these disagree.
    c = make_schedule(OptimConfig(schedule="cosine", warmup_epochs=1.0), peak_lr=1.0, steps_per_epoch=7, epochs=3)
    forward = [lr_at(i, c) for i in range(21)]
    fresh = make_schedule(OptimConfig(schedule="cosine", warmup_epochs=1.0), peak_lr=1.0, steps_per_epoch=7,
                          epochs=3)
    backward = [lr_at(i, fresh) for i in reversed(range(21))][::-1]
    resumed = [lr_at(i, make_schedule(OptimConfig(schedule="cosine", warmup_epochs=1.0), peak_lr=1.0,
                                      steps_per_epoch=7, epochs=3)) for i in range(21)]
    assert forward == backward == resumed
    assert forward[10] == pytest.approx(0.5 * (1 + math.cos(math.pi * (10 - 7) / 14)))


def test_unknown_schedule_names_the_key():
    with pytest.raises(ValueError, match="optim.schedule"):
        lr_at(0, Schedule(peak_lr=1, total_steps=1, steps_per_epoch=1, kind="linear"))
