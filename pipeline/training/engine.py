"""The device-generic training steps and evaluation pass, fed by any iterable of batches (no Ray, no wandb).

`train_steps` (up to a number of optimiser steps from a `BatchStream`), `train_one_epoch` (a whole iterable) and
`evaluate_batches` take batches as dicts of tensors ("clip" uint8 (N, T, H, W, 3), "label" int64 (N,)), wherever
they come from: Ray Data's `iter_torch_batches` in `loop.py`, a plain list in the tests and in `eco check gpu`
(whose GPU machines have no Ray). One code path serves CPU and CUDA:

- bf16 autocast through `torch.autocast(device.type, ...)` (no GradScaler: bf16 has fp32's exponent range);
- channels_last (2D trunk) / channels_last_3d (3D part) through `ECO.to_channels_last`;
- `torch.compile` of the bare model in place (`Module.compile`), before the DDP wrap, so the state-dict keys and
  checkpoints keep the model's own names;
- a BatchNorm policy (`train.batchnorm`): all BN layers train (the authors' published scripts), TSN's partial BN,
  frozen BN, or SyncBatchNorm across ranks.

Nothing here forces the host to wait for the device inside the loop: losses and counts accumulate in device
tensors and are read (one sync) only where a figure is logged, so the GPU's queue never drains between steps.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pipeline.data.transforms import normalize
from pipeline.training.metrics import ClassificationSums
from pipeline.training.optim import Schedule, lr_at, set_lr

BN_POLICIES = ("train", "partial", "frozen", "sync")
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


# --- seeding ---------------------------------------------------------------------------------------------------


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of `rank` for a run seeded with `seed`: distinct per rank (dropout masks and other random
    draws differ between ranks), reproducible from (seed, rank). Initial weights use `seed` itself on every rank."""
    return int(np.random.SeedSequence([int(seed), int(rank), 0xEC0]).generate_state(1, dtype=np.uint64)[0] >> 1)


# --- the model on its device -----------------------------------------------------------------------------------


def check_compile_available(device: torch.device, backend: str = "inductor") -> None:
    """Fail before training starts when `torch.compile` cannot work here (inductor on CPU needs a C++ compiler)."""
    if backend != "inductor" or device.type != "cpu":
        return
    from torch._inductor import config as inductor_config

    compiler = inductor_config.cpp.cxx[-1] if inductor_config.cpp.cxx and inductor_config.cpp.cxx[-1] else None
    found = [c for c in ([compiler] if compiler else []) + ["g++", "c++", "clang++"] if shutil.which(c)]
    if not found:
        raise RuntimeError("train.compile=true on CPU needs a C++ compiler for torch.compile's inductor backend "
                           "(none of g++, c++, clang++ is on PATH): install one (e.g. apt-get install g++), or set "
                           "train.compile=false, or train.compile_backend=aot_eager")


def prepare_model(model: nn.Module, device: torch.device, *, channels_last: bool, compile: bool,
                  compile_backend: str = "inductor", bn_policy: str = "train") -> nn.Module:
    """Move `model` to `device` and apply the BN policy, memory format and compilation, in that order; returns the
    same module object (compiled in place), ready for the DDP wrap."""
    if bn_policy not in BN_POLICIES:
        raise ValueError(f"train.batchnorm: expected one of {', '.join(BN_POLICIES)}, got {bn_policy!r}")
    if bn_policy == "sync":
        if device.type == "cpu":
            # torch's SyncBatchNorm raises on CPU tensors once a process group exists.
            raise ValueError("train.batchnorm=sync needs GPUs (torch's SyncBatchNorm runs on CUDA only); "
                             "use train.batchnorm=train on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    freeze_bn_affine(model, bn_policy)
    model = model.to(device)
    if channels_last:
        # 2D conv weights channels_last, 3D conv weights channels_last_3d (`Module.to(memory_format=...)` alone
        # fails on a model with both); ECO.to_channels_last does the same per sub-network.
        for p in model.parameters():
            if p.dim() in (4, 5):
                p.data = p.data.contiguous(memory_format=torch.channels_last if p.dim() == 4
                                           else torch.channels_last_3d)
    if compile:
        check_compile_available(device, compile_backend)
        # In place: the module keeps its parameter names (no `_orig_mod.` prefix in state dicts), and DDP wraps
        # the compiled module (PyTorch's DDP + compile guidance: DDPOptimizer splits the graph at bucket borders).
        model.compile(backend=compile_backend)
    return model


def _bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _BN_TYPES)]


def freeze_bn_affine(model: nn.Module, policy: str) -> None:
    """`partial`: every BN after the first has its weight and bias frozen (TSN's partial BN, the default of the
    authors' model code, ECO_REFERENCE.md); `frozen`: every BN. Call before the optimiser and the DDP wrap."""
    layers = _bn_layers(model)
    frozen = layers[1:] if policy == "partial" else layers if policy == "frozen" else []
    for m in frozen:
        for p in (m.weight, m.bias):
            if p is not None:
                p.requires_grad_(False)


def set_train_mode(model: nn.Module, policy: str) -> None:
    """`model.train()`, then the BN layers the policy freezes back to eval mode (their running statistics stay
    those of the starting weights)."""
    model.train()
    layers = _bn_layers(model)
    for m in layers[1:] if policy == "partial" else layers if policy == "frozen" else []:
        m.eval()


def broadcast_buffers_from_rank0(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BN running statistics), i.e. those the checkpoint saves.

    DDP broadcasts rank 0's buffers at the start of each forward, but each rank's forward then updates its own
    copy; without this, ranks would evaluate with statistics that differ from each other's and the checkpoint's.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on `device` (CPU or CUDA) when enabled, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


# --- training --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepSettings:
    """What the training step needs from the config (a subset of TrainConfig/OptimConfig/DataConfig)."""

    normalization: str
    grad_accum_steps: int = 1
    clip_grad_norm: float | None = None
    amp: bool = False
    bn_policy: str = "train"
    max_steps: int = 0  # train_one_epoch: stop after this many optimiser steps in total (0: no limit)
    log_every_steps: int = 10


@dataclass
class EpochResult:
    """What steps trained so far in an epoch: exact sums (on the device), the step reached, the timing."""

    sums: ClassificationSums
    step: int
    completed: bool = True  # train_one_epoch: False when max_steps stopped the epoch early
    wait_s: float = 0.0  # host time spent waiting for the next batch
    compute_s: float = 0.0  # the rest of the wall time (device work included: synced at the end of each call)
    clips: int = 0
    micro_batches: int = 0

    @classmethod
    def empty(cls, num_classes: int, device: torch.device, step: int) -> "EpochResult":
        return cls(sums=ClassificationSums(num_classes, device=device), step=step)


class BatchStream:
    """Batches pulled one ahead, so a step knows the stream's last batch (the final accumulation group steps
    short), with the time spent waiting for them; `on_pull` sees each batch as it arrives, `on_batch` as it is
    handed to the step.

    With `group` (a process group), the stream ends on every rank as soon as it ends on one: each pull is
    agreed by an all-reduce (MIN) over the group, so every rank runs the same number of micro-batches and DDP's
    collectives pair up even when a rank's decoders dropped more clips than another's (the surplus batches are
    left, as an equal split would drop them). Use a CPU (gloo) group: the agreement never waits for the device.
    """

    _EMPTY = object()

    def __init__(self, batches: Iterable[Any], *, group: Any = None, on_pull: Callable[[Any], Any] | None = None,
                 on_batch: Callable[[Any], Any] | None = None):
        self._it, self._group, self._on_pull, self._on_batch = iter(batches), group, on_pull, on_batch
        self._next: Any = self._EMPTY
        self._ended = False
        self.wait_s = 0.0

    def has_next(self) -> bool:
        if self._next is self._EMPTY and not self._ended:
            t0 = time.perf_counter()
            item = next(self._it, self._EMPTY)
            self.wait_s += time.perf_counter() - t0
            if item is not self._EMPTY and self._on_pull is not None:
                item = self._on_pull(item)
            if not _all_ranks_agree(item is not self._EMPTY, self._group):
                item, self._ended = self._EMPTY, True
            self._next = item
        return self._next is not self._EMPTY

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> Any:
        if not self.has_next():
            raise StopIteration
        item, self._next = self._next, self._EMPTY
        return self._on_batch(item) if self._on_batch is not None else item

    def close(self) -> None:
        """Stop the source (a Ray Data iterator shuts its execution down), e.g. when batches are left over."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, stream: BatchStream, result: EpochResult, *,
                schedule: Schedule, device: torch.device, settings: StepSettings, steps: int | None = None,
                on_log: Callable[[dict[str, float]], None] | None = None) -> bool:
    """Train on `stream` until `steps` more optimiser steps are done (None: until it ends); adds to `result`
    (sums, step, timing) and returns whether the stream has more batches.

    Gradient accumulation: the optimiser steps every `grad_accum_steps` micro-batches and at the stream's last
    batch. The loss is summed per clip and the accumulated gradient divided by the clips of its group, so a short
    last group (or a short last batch) weighs each clip like every other group does. DDP's all-reduce runs only
    on the micro-batch that ends a group; every rank sees the same number of batches (the stream's agreement),
    so all agree on which one that is. A call ends on a group boundary, so the next call starts a new group.
    """
    set_train_mode(model, settings.bn_policy)
    s = settings
    params = [p for p in model.parameters() if p.requires_grad]
    window_loss = torch.zeros((), dtype=torch.float64, device=device)
    window_clips, window_steps, window_t0, window_wait0 = 0, 0, time.perf_counter(), stream.wait_s
    group_clips = micro = done = 0
    t_start, wait_start = time.perf_counter(), stream.wait_s
    while (steps is None or done < steps) and stream.has_next():
        batch = next(stream)
        is_last = not stream.has_next()  # pulls the following batch: the wait is the stream's
        x = normalize(batch["clip"].to(device, non_blocking=True), s.normalization)  # (N, T, 3, H, W) float32
        y = batch["label"].to(device, non_blocking=True)
        n = int(y.shape[0])
        ends_group = (micro + 1) % s.grad_accum_steps == 0 or is_last
        with _no_sync(model, enabled=not ends_group), autocast(device, s.amp):
            logits = model(x)
        loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
        with _no_sync(model, enabled=not ends_group):
            loss_sum.backward()
        loss_sum = loss_sum.detach()
        result.sums.update(logits.detach(), y, loss_sum)
        micro += 1
        group_clips += n
        window_loss += loss_sum
        window_clips += n
        if not ends_group:
            continue
        # The gradient of the mean loss over the group's clips (DDP has averaged it over ranks).
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / group_clips)
        result.clips += group_clips
        group_clips = 0
        set_lr(optimizer, lr_at(result.step, schedule))
        if s.clip_grad_norm:
            nn.utils.clip_grad_norm_(params, s.clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.step += 1
        done += 1
        window_steps += 1
        if on_log is not None and result.step % s.log_every_steps == 0:
            elapsed = max(time.perf_counter() - window_t0, 1e-9)
            # The one host sync of a logging window: the loss read back from the device.
            on_log({"train/step": result.step, "train/loss": float(window_loss) / window_clips,
                    "train/lr": optimizer.param_groups[0]["lr"],
                    "train/clips_per_s_rank0": window_clips / elapsed,
                    "train/data_wait_frac_rank0": min((stream.wait_s - window_wait0) / elapsed, 1.0),
                    "train/step_time_s": elapsed / window_steps})
            window_loss.zero_()
            window_clips, window_steps, window_t0, window_wait0 = 0, 0, time.perf_counter(), stream.wait_s
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # once per call: the time includes the device's queued work
    waited = stream.wait_s - wait_start
    result.wait_s += waited
    result.compute_s += max(time.perf_counter() - t_start - waited, 0.0)
    result.micro_batches += micro
    return stream.has_next()


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[dict[str, Any]], *,
                    schedule: Schedule, step: int, device: torch.device, settings: StepSettings, num_classes: int,
                    on_log: Callable[[dict[str, float]], None] | None = None) -> EpochResult:
    """One pass over `batches` from optimiser step `step` (at most to `settings.max_steps` in total); `completed`
    says whether the pass reached the end of `batches`."""
    result = EpochResult.empty(num_classes, device, step)
    limit = max(settings.max_steps - step, 0) if settings.max_steps else None
    more = train_steps(model, optimizer, BatchStream(batches), result, schedule=schedule, device=device,
                       settings=settings, steps=limit, on_log=on_log)
    result.completed = not more
    return result


# --- evaluation ------------------------------------------------------------------------------------------------


@dataclass
class Samples:
    """A few evaluation clips for W&B, on the host: uint8 (K, T, H, W, 3), true and predicted class ids."""

    clips: np.ndarray | None = None
    labels: list[int] = field(default_factory=list)
    preds: list[int] = field(default_factory=list)


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Iterable[dict[str, Any]], *, device: torch.device,
                     normalization: str, amp: bool, num_classes: int, keep_samples: int = 0
                     ) -> tuple[ClassificationSums, Samples]:
    """Exact sums over `batches` with `model` in eval mode, and the first `keep_samples` clips (copied to the host
    once: the batch tensors may live on an accelerator, where `.numpy()` raises)."""
    model.eval()
    sums = ClassificationSums(num_classes, device=device)
    kept: list[np.ndarray] = []
    samples = Samples()
    for batch in batches:
        x = normalize(batch["clip"].to(device, non_blocking=True), normalization)
        y = batch["label"].to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x).float()
        sums.update(logits, y, F.cross_entropy(logits, y, reduction="sum"))
        if len(kept) < keep_samples:
            take = keep_samples - len(kept)
            kept.extend(batch["clip"][:take].cpu().numpy())
            samples.labels.extend(y[:take].cpu().tolist())
            samples.preds.extend(logits[:take].argmax(1).cpu().tolist())
    samples.clips = np.stack(kept) if kept else None
    return sums, samples


# --- helpers ---------------------------------------------------------------------------------------------------


def _all_ranks_agree(flag: bool, group: Any) -> bool:
    """True when `flag` is true on every rank of `group` (None: this rank alone decides)."""
    if group is None or not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
    return bool(t.item())


def control_group() -> Any:
    """A CPU process group for the host-side agreements of training (which batch is the last, which rows were
    trained): the default group when it is gloo, else a new gloo group over the same ranks (NCCL collectives
    would wait for the device). None without a process group of more than one rank. Collective: every rank
    calls it once."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    return dist.new_group(backend="gloo")


def _no_sync(model: nn.Module, enabled: bool):
    """DDP's no_sync() (skip the gradient all-reduce) when enabled and `model` is DDP-wrapped."""
    if enabled and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()
