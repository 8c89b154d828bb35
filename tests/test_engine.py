"""The device-generic training step and evaluation pass (pipeline.training.engine), fed by plain lists of batches:
gradient accumulation, accelerator residency, host syncs, BatchNorm policies, AMP / channels_last / compile on CPU,
per-rank seeds. No Ray: these are the functions the Ray Train worker and `eco check gpu` both call."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import OptimConfig
from pipeline.model import eco_lite
from pipeline.training import engine
from pipeline.training.optim import make_schedule
from residency import DeviceResident, HostOnlyOperation, resident_batch

CPU = torch.device("cpu")


class TinyNet(nn.Module):
    """(N, T, 3, H, W) -> (N, C): a mean over time and space, then a linear layer. Enough to check arithmetic."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.fc = nn.Linear(3, classes)

    def forward(self, x):
        return self.fc(x.mean(dim=(1, 3, 4)))  # (N, T, 3, H, W) -> (N, 3) -> (N, C)


def _batches(sizes: list[int], seed: int = 0, classes: int = 3, t: int = 2, hw: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"clip": torch.randint(0, 256, (n, t, hw, hw, 3), dtype=torch.uint8, generator=g),
             "label": torch.randint(0, classes, (n,), generator=g)} for n in sizes]


def _constant_schedule(lr: float, steps: int):
    return make_schedule(OptimConfig(lr=lr, schedule="constant"), peak_lr=lr, steps_per_epoch=steps, epochs=1)


def _settings(**kw) -> engine.StepSettings:
    return engine.StepSettings(normalization="unit", **kw)


def test_gradient_accumulation_weighs_every_clip_alike_including_a_short_last_group():
    sizes = [2, 2, 2, 2, 1]  # accumulation 2 -> groups of 4, 4 and 1 clips (the last one short)
    batches = _batches(sizes)
    torch.manual_seed(0)
    model = TinyNet()
    reference = TinyNet()
    reference.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    result = engine.train_one_epoch(model, opt, batches, schedule=_constant_schedule(1.0, 3), step=0, device=CPU,
                                    settings=_settings(grad_accum_steps=2), num_classes=3)
    assert (result.step, result.micro_batches, result.clips, result.completed) == (3, 5, 9, True)

    # Independently: each group's mean cross-entropy over its clips, one plain SGD step per group.
    ref_opt = torch.optim.SGD(reference.parameters(), lr=1.0)
    from pipeline.data.transforms import normalize

    for group in ([0, 1], [2, 3], [4]):
        x = torch.cat([normalize(batches[i]["clip"], "unit") for i in group])
        y = torch.cat([batches[i]["label"] for i in group])
        ref_opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        ref_opt.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"{name} differs from the per-group reference")


def test_loops_accept_accelerator_resident_batches_and_sync_only_to_log():
    batches = [resident_batch(b) for b in _batches([2, 2, 2, 2])]
    # The guard itself: a host-only operation on a resident tensor fails as it would on a GPU.
    with pytest.raises(HostOnlyOperation):
        batches[0]["clip"].numpy()
    assert batches[0]["clip"].cpu().numpy().shape == (2, 2, 4, 4, 3)

    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    logged: list[dict] = []
    DeviceResident.reset()
    result = engine.train_one_epoch(model, opt, batches, schedule=_constant_schedule(0.1, 4), step=0, device=CPU,
                                    settings=_settings(log_every_steps=2), num_classes=3, on_log=logged.append)
    # 4 optimiser steps, a log every 2: the loss is read back from the device twice, never per step.
    assert result.step == 4 and [row["train/step"] for row in logged] == [2, 4]
    assert DeviceResident.total_syncs() == len(logged), DeviceResident.syncs
    assert all(math.isfinite(row["train/loss"]) for row in logged)

    DeviceResident.reset()
    sums, samples = engine.evaluate_batches(model, batches, device=CPU, normalization="unit", amp=False,
                                            num_classes=3, keep_samples=3)
    assert DeviceResident.total_syncs() == 0, DeviceResident.syncs  # samples are copied with .cpu() first
    assert samples.clips.shape == (3, 2, 4, 4, 3) and samples.clips.dtype == np.uint8
    assert samples.labels == torch.cat([b["label"].cpu() for b in batches])[:3].tolist()
    assert sums.count == 8


def test_max_steps_stops_inside_the_epoch_and_says_so():
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = engine.train_one_epoch(model, opt, _batches([2, 2, 2]), schedule=_constant_schedule(0.1, 3), step=0,
                                    device=CPU, settings=_settings(max_steps=2), num_classes=3)
    assert (result.step, result.completed, result.clips) == (2, False, 4)
    full = engine.train_one_epoch(model, opt, _batches([2, 2]), schedule=_constant_schedule(0.1, 3), step=1,
                                  device=CPU, settings=_settings(max_steps=3), num_classes=3)
    assert (full.step, full.completed) == (3, True)  # the limit falls on the epoch's last batch


def _bn_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4),
                         nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))


@pytest.mark.parametrize("policy, trains", [("train", [True, True, True]), ("partial", [True, False, False]),
                                             ("frozen", [False, False, False])])
def test_batchnorm_policies(policy, trains):
    torch.manual_seed(0)
    model = engine.prepare_model(_bn_model(), CPU, channels_last=False, compile=False, bn_policy=policy)
    bns = [m for m in model if isinstance(m, nn.BatchNorm2d)]
    before = [(bn.running_mean.clone(), bn.weight.detach().clone()) for bn in bns]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    engine.set_train_mode(model, policy)
    assert [bn.training for bn in bns] == trains
    assert [bn.weight.requires_grad for bn in bns] == trains
    model(torch.randn(4, 3, 5, 5)).pow(2).mean().backward()
    opt.step()
    for bn, (mean, weight), learns in zip(bns, before, trains):
        assert (not torch.equal(bn.running_mean, mean)) == learns  # statistics update only in train mode
        assert (not torch.equal(bn.weight, weight)) == learns  # affine parameters frozen with them


def test_sync_batchnorm_is_refused_on_cpu_and_keeps_checkpoint_keys():
    with pytest.raises(ValueError, match="train.batchnorm=sync needs GPUs"):
        engine.prepare_model(_bn_model(), CPU, channels_last=False, compile=False, bn_policy="sync")
    model = eco_lite(num_classes=4, num_segments=4)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(eco_lite(num_classes=4, num_segments=4))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())
    assert list(converted.state_dict()) == list(model.state_dict())  # checkpoints load either way


def test_rank_seeds_differ_per_rank_and_repeat_per_run():
    seeds = [engine.rank_seed(0, r) for r in range(8)]
    assert len(set(seeds)) == 8 and seeds == [engine.rank_seed(0, r) for r in range(8)]
    assert engine.rank_seed(1, 0) != seeds[0]
    assert all(0 <= s < 2**63 for s in seeds)


class SmallConvNet(nn.Module):
    """A 2D conv per frame, then a 3D conv over time, like ECO's two halves, small enough for inductor to compile in
    seconds on 2 cores (ECO itself takes minutes of C++ compilation there)."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv2d = nn.Conv2d(3, 8, 3, padding=1)
        self.bn2d = nn.BatchNorm2d(8)
        self.conv3d = nn.Conv3d(8, 8, 3, padding=1)
        self.bn3d = nn.BatchNorm3d(8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        n, t = x.shape[:2]
        y = torch.relu(self.bn2d(self.conv2d(x.flatten(0, 1))))  # (N*T, 8, H, W)
        y = y.view(n, t, *y.shape[1:]).transpose(1, 2)  # (N, T, 8, H, W) -> (N, 8, T, H, W)
        y = torch.relu(self.bn3d(self.conv3d(y)))
        return self.fc(y.mean(dim=(2, 3, 4)))  # (N, 8) -> (N, C)


def _fast_path_trains_and_matches_eager(eager: nn.Module, fast: nn.Module, backend: str, hw: int, tol: float):
    fast.load_state_dict(eager.state_dict())
    fast = engine.prepare_model(fast, CPU, channels_last=True, compile=True, compile_backend=backend,
                                bn_policy="train")
    eager.eval()
    batch = _batches([4], classes=4, t=4, hw=hw)[0]
    from pipeline.data.transforms import normalize

    fast.eval()
    with torch.no_grad(), engine.autocast(CPU, True):
        got = fast(normalize(batch["clip"], "unit")).float()
    with torch.no_grad():
        want = eager(normalize(batch["clip"], "unit"))
    # bf16 keeps 8 bits of mantissa: logits agree to a few percent of their scale.
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= tol * scale + 0.02, (got, want)

    opt = torch.optim.SGD([p for p in fast.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    logged: list[dict] = []
    engine.train_one_epoch(fast, opt, [batch] * 6, schedule=_constant_schedule(0.05, 6), step=0, device=CPU,
                           settings=_settings(amp=True, log_every_steps=1), num_classes=4, on_log=logged.append)
    losses = [row["train/loss"] for row in logged]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses


def test_inductor_compile_amp_channels_last_on_cpu():
    """torch.compile's default backend (inductor: generated C++ built with this machine's compiler) + bf16 autocast +
    channels_last through the training step: finite, decreasing loss; logits within bf16 tolerance of fp32 eager."""
    torch.manual_seed(0)
    _fast_path_trains_and_matches_eager(SmallConvNet(), SmallConvNet(), "inductor", hw=16, tol=0.05)
