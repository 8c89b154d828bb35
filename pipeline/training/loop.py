"""The per-worker training function that Ray Train runs on every worker.

`train_func_per_worker(config)` reads top to bottom: setup, data, model, optimiser, resume, epochs (train,
evaluate, checkpoint, report). Rank 0 alone writes checkpoints, logs to W&B and logs the epoch line; metrics are
exact sums over all ranks (pipeline.training.metrics).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pipeline.config import Config
from pipeline.data.pipeline import ClipCollate
from pipeline.training import checkpoint as ckpt
from pipeline.training.metrics import ClassificationSums
from pipeline.training.optim import Schedule, build_optimizer, lr_at, set_lr
from pipeline.training.tracking import Tracker

log = logging.getLogger(__name__)


def train_func_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. `config` (built by `run.train`): cfg (Config.to_dict()), label_names, schedule
    (optim.Schedule fields), data_state (DataRunState handle or None).

    Logs one readable line per epoch on rank 0 (Ray Train V2 configures the worker's root logger at INFO and
    streams it to the driver and the job logs).
    """
    # --- setup -------------------------------------------------------------------------------------------------
    cfg = Config.from_dict(config["cfg"])
    label_names: list[str] = list(config["label_names"])
    schedule = Schedule(**config["schedule"])
    data_state = config.get("data_state")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    torch.manual_seed(cfg.train.seed)  # identical initialisation on every rank (DDP also broadcasts rank 0's)
    workers = _gather_worker_info(rank, world)

    # --- data: decoded, cropped uint8 clips from Ray Data; normalised here, on the worker's device ---------------
    from pipeline.data.transforms import normalize

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    preset = cfg.data.normalization

    # --- model: pretrained weights load on every rank before the DDP wrap -------------------------------------
    model = _build_model(cfg, num_classes=len(label_names))

    # --- resume: the latest reported checkpoint (after a worker failure or a resubmission of the same run) ------
    start_epoch, step, resumed_from = 0, 0, None
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = ckpt.load_checkpoint(directory)
        model.load_state_dict(state["model"], strict=True)
        start_epoch, step, resumed_from = state["epoch"], state["step"], state["epoch"]
    if on_gpu and cfg.train.channels_last:
        model.to_channels_last()  # cuDNN's fast paths for the 2D (channels_last) and 3D (channels_last_3d) convs
    model = ray.train.torch.prepare_model(model)  # moves to the device, wraps in DDP when world > 1
    bare = ckpt.unwrap(model)

    # --- optimiser ---------------------------------------------------------------------------------------------
    optimizer = build_optimizer(bare, cfg.optim, lr=lr_at(step, schedule))
    if state is not None and state.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])
    del state
    tracker = Tracker(cfg, rank=rank, extra_config={"schedule": config["schedule"], "world_size": world})
    if rank == 0 and resumed_from is not None:
        log.info("resumed from %s at epoch %d, step %d", checkpoint.path, start_epoch, step)

    # --- epochs ------------------------------------------------------------------------------------------------
    best_val = -1.0
    for epoch in range(start_epoch, cfg.train.epochs):
        if rank == 0 and data_state is not None:
            ray.get(data_state.set_epoch.remote(epoch))  # TSN offsets depend on the epoch
        _barrier()  # no rank starts pulling epoch `epoch` before the epoch is set
        t0 = time.perf_counter()
        train_sums, step, timing = _train_one_epoch(model, optimizer, schedule, train_shard, cfg, step, device,
                                                    preset, normalize, tracker, len(label_names), rank)
        train_metrics = train_sums.all_reduce().compute(prefix="train_")
        metrics: dict[str, float] = {
            "epoch": epoch + 1, "step": step, "lr": lr_at(max(step - 1, 0), schedule),
            **train_metrics, **_reduce_timing(timing, device),
        }
        evaluated = (epoch + 1) % cfg.train.eval_every_epochs == 0 or epoch + 1 == cfg.train.epochs
        stop = cfg.train.max_steps > 0 and step >= cfg.train.max_steps
        if evaluated or stop:
            val_sums, samples = _evaluate(bare, val_shard, cfg, device, preset, normalize, len(label_names), rank)
            val_sums.all_reduce()
            metrics.update(val_sums.compute(prefix="val_"))
            if rank == 0:
                tracker.log_evaluation(epoch + 1, val_sums.confusion.cpu().numpy(), label_names, **samples)
        else:
            # Keep-best ranks checkpoints by val_top1 (run.py); an epoch without evaluation ranks below every
            # evaluated one, and Ray Train always retains the latest checkpoint regardless of its score.
            metrics["val_top1"] = -1.0
        if data_state is not None:
            metrics["decode_failures"] = float(ray.get(data_state.failure_count.remote(epoch)))
            metrics["decode_failures_total"] = float(ray.get(data_state.failure_count.remote()))
        else:
            metrics["decode_failures"] = metrics["decode_failures_total"] = 0.0
        metrics["epoch_time_s"] = time.perf_counter() - t0
        if resumed_from is not None:
            metrics["resumed_from_epoch"] = float(resumed_from)
        best_val = max(best_val, metrics["val_top1"])

        # --- report: rank 0 writes the checkpoint atomically, then hands it to Ray Train with the metrics -----
        with tempfile.TemporaryDirectory(prefix="eco-ckpt-") as tmp:
            reported = None
            if rank == 0:
                log.info("%s", _epoch_line(epoch, cfg.train.epochs, metrics, evaluated or stop))
                tracker.log({"epoch": epoch + 1, **{f"epoch/{k}": v for k, v in metrics.items() if k != "epoch"}})
                state = ckpt.build_state(model, optimizer, epoch=epoch + 1, step=step, config=cfg.to_dict(),
                                         label_names=label_names, data_seed=cfg.train.seed, metrics=metrics,
                                         schedule=config["schedule"])
                directory = ckpt.save_checkpoint(Path(tmp, "checkpoint"), state, extra_json={"workers": workers})
                reported = ray.train.Checkpoint.from_directory(str(directory))
            ray.train.report(metrics, checkpoint=reported, checkpoint_dir_name=f"epoch_{epoch + 1:04d}")
        if stop:
            break
    if rank == 0:
        tracker.summary({"best_val_top1": best_val})
    tracker.finish()


def _train_one_epoch(model, optimizer, schedule, shard, cfg: Config, step: int, device, preset, normalize,
                     tracker: Tracker, num_classes: int, rank: int):
    """One pass over this rank's shard; returns (sums, step, timing). Gradient accumulation, clipping, AMP."""
    model.train()
    sums = ClassificationSums(num_classes, device=device)
    accum = cfg.train.grad_accum_steps
    use_amp = device.type == "cuda" and cfg.train.amp
    wait_s = compute_s = 0.0
    clips = 0
    window_loss, window_clips, window_t0 = 0.0, 0, time.perf_counter()
    batches = shard.iter_torch_batches(batch_size=cfg.train.batch_size, collate_fn=ClipCollate(),
                                       prefetch_batches=cfg.data.prefetch_batches, drop_last=False)
    micro = 0
    for batch, is_last, waited in _lookahead(iter(batches)):
        wait_s += waited
        t0 = time.perf_counter()
        x = normalize(batch["clip"].to(device, non_blocking=True), preset)  # (N, T, 3, H, W) float32
        y = batch["label"].to(device, non_blocking=True)
        sync = (micro + 1) % accum == 0 or is_last
        # Skip DDP's gradient all-reduce on accumulation micro-batches; all ranks see the same number of
        # batches (equal streaming split), so they agree on which micro-batch syncs.
        with _no_sync(model, enabled=not sync), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            (loss / accum).backward()
        sums.update(logits.detach(), y, loss.detach() * y.shape[0])
        micro += 1
        if sync:
            set_lr(optimizer, lr_at(step, schedule))
            if cfg.optim.clip_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # honest step time: CUDA kernels run asynchronously
        compute_s += time.perf_counter() - t0
        clips += y.shape[0]
        window_loss += float(loss) * y.shape[0]
        window_clips += y.shape[0]
        if sync and rank == 0 and step % cfg.train.log_every_steps == 0:
            elapsed = time.perf_counter() - window_t0
            tracker.log({"train/step": step, "train/loss": window_loss / window_clips,
                         "train/lr": optimizer.param_groups[0]["lr"],
                         "train/clips_per_s_rank0": window_clips / max(elapsed, 1e-9)})
            window_loss, window_clips, window_t0 = 0.0, 0, time.perf_counter()
        if cfg.train.max_steps and step >= cfg.train.max_steps and sync:
            break
    return sums, step, {"wait_s": wait_s, "compute_s": compute_s, "clips": clips}


@torch.no_grad()
def _evaluate(model: nn.Module, shard, cfg: Config, device, preset, normalize, num_classes: int, rank: int):
    """This rank's disjoint part of the validation set (unequal split: no dropped or repeated clips).

    Uses the unwrapped model: DDP's forward would broadcast buffers, a collective the ranks cannot match when
    their shards differ in length.
    """
    model.eval()
    sums = ClassificationSums(num_classes, device=device)
    want = cfg.wandb.log_sample_clips if rank == 0 else 0
    kept: list[np.ndarray] = []
    labels: list[int] = []
    preds: list[int] = []
    use_amp = device.type == "cuda" and cfg.train.amp
    for batch in shard.iter_torch_batches(batch_size=cfg.train.eval_batch_size, collate_fn=ClipCollate(),
                                          prefetch_batches=cfg.data.prefetch_batches):
        x = normalize(batch["clip"].to(device), preset)
        y = batch["label"].to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            logits = model(x).float()
        sums.update(logits, y, F.cross_entropy(logits, y, reduction="sum"))
        if len(kept) < want:
            take = want - len(kept)
            kept.extend(batch["clip"][:take].numpy())
            labels.extend(batch["label"][:take].tolist())
            preds.extend(logits[:take].argmax(1).tolist())
    samples = {"clips": np.stack(kept) if kept else None, "labels": labels, "preds": preds}
    return sums, samples


# --- helpers ---------------------------------------------------------------------------------------------------


def _build_model(cfg: Config, num_classes: int) -> nn.Module:
    from pipeline.model import eco_full, eco_lite

    builder = {"lite": eco_lite, "full": eco_full}[cfg.model.variant]
    # The builder loads `pretrained` strictly and re-initialises only the classifier when the class count differs
    # (pipeline.model.weights.load_weights), or starts from the authors' 2D + 3D files (`init_2d`/`init_3d`,
    # load_init_weights); every rank loads them after the same seed, so DDP starts from identical weights.
    return builder(num_classes=num_classes, num_segments=cfg.model.num_segments, dropout=cfg.model.dropout,
                   pretrained=cfg.model.pretrained, init_2d=cfg.model.init_2d, init_3d=cfg.model.init_3d)


def _lookahead(it: Iterator) -> Iterator[tuple[Any, bool, float]]:
    """Yield (item, is_last, seconds spent waiting for it): knowing the last batch lets the final partial
    accumulation group still synchronise its gradients."""
    t0 = time.perf_counter()
    try:
        current = next(it)
    except StopIteration:
        return
    waited = time.perf_counter() - t0
    while True:
        t0 = time.perf_counter()
        try:
            following = next(it)
        except StopIteration:
            yield current, True, waited
            return
        next_wait = time.perf_counter() - t0
        yield current, False, waited
        current, waited = following, next_wait


class _no_sync:
    def __init__(self, model: nn.Module, enabled: bool):
        self.ctx = model.no_sync() if enabled and isinstance(model, nn.parallel.DistributedDataParallel) else None

    def __enter__(self):
        return self.ctx.__enter__() if self.ctx else None

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc) if self.ctx else False


def _reduce_timing(timing: dict[str, float], device) -> dict[str, float]:
    """Global clips/s (sum over ranks) and the data-wait fraction of the slowest-waiting view (mean over ranks)."""
    t = torch.tensor([timing["wait_s"], timing["compute_s"], float(timing["clips"])], dtype=torch.float64,
                     device=device)
    world = 1
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    wait_s, compute_s, clips = (float(v) for v in t.tolist())
    per_rank_time = (wait_s + compute_s) / world
    return {
        "clips_per_s": clips / per_rank_time if per_rank_time > 0 else 0.0,
        "data_wait_frac": wait_s / (wait_s + compute_s) if wait_s + compute_s > 0 else 0.0,
        "train_clips": clips,
    }


def _gather_worker_info(rank: int, world: int) -> list[dict[str, Any]]:
    """Where each rank runs (node id, host, pid): stored next to the checkpoint (workers.json)."""
    info = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
            "pid": os.getpid()}
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return [info]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, info)
    return out


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _epoch_line(epoch: int, epochs: int, m: dict[str, float], evaluated: bool) -> str:
    line = (f"epoch {epoch + 1:>3}/{epochs}  step {int(m['step']):>6}  loss {m['train_loss']:.4f}  "
            f"train top1 {m['train_top1']:6.1%}")
    if evaluated:
        line += (f"  | val top1 {m['val_top1']:6.1%}  top5 {m['val_top5']:6.1%}  "
                 f"mean-class {m['val_mean_class_acc']:6.1%}")
    return line + (f"  | lr {m['lr']:.2e}  {m['clips_per_s']:7.1f} clips/s  data-wait {m['data_wait_frac']:4.0%}  "
                   f"decode failures {int(m['decode_failures'])}  {m['epoch_time_s']:.0f}s")
