"""The per-worker training function that Ray Train runs on every worker.

`train_func_per_worker(config)` reads top to bottom: setup, data, model, resume, optimiser, epochs (train,
evaluate, checkpoint, report). The step and the evaluation pass themselves are device-generic and Ray-free
(pipeline.training.engine). Rank 0 alone writes checkpoints, logs to W&B and logs the epoch line; metrics are
exact sums over all ranks (pipeline.training.metrics).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from pipeline.config import Config
from pipeline.data.pipeline import ClipCollate
from pipeline.training import checkpoint as ckpt
from pipeline.training import engine
from pipeline.training.optim import Schedule, build_optimizer, lr_at
from pipeline.training.tracking import Tracker

log = logging.getLogger(__name__)


def train_func_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. `config` (built by `run.train`): cfg (Config.to_dict()), label_names, schedule
    (optim.Schedule fields), data_state (DataRunState handle or None), and optionally batch_hook (a picklable
    function applied to every batch before the model sees it: tests wrap batch tensors to emulate accelerator
    residency with it, see tests/residency.py).

    Logs one readable line per epoch on rank 0 (Ray Train V2 configures the worker's root logger at INFO and
    streams it to the driver and the job logs).
    """
    # --- setup -------------------------------------------------------------------------------------------------
    cfg = Config.from_dict(config["cfg"])
    label_names: list[str] = list(config["label_names"])
    schedule = Schedule(**config["schedule"])
    data_state = config.get("data_state")
    hook = config.get("batch_hook")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    t = cfg.train
    if t.compile:
        engine.check_compile_available(device, t.compile_backend)  # before any work, with a message that says why
    torch.manual_seed(t.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)

    # --- data: decoded, cropped uint8 clips from Ray Data; normalised on the worker's device ---------------------
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    def batches(shard, batch_size: int, drop_last: bool = False):
        it = shard.iter_torch_batches(batch_size=batch_size, collate_fn=ClipCollate(),
                                      prefetch_batches=cfg.data.prefetch_batches, drop_last=drop_last)
        return map(hook, it) if hook is not None else it

    # --- model and resume: the latest reported checkpoint (after a worker failure or a resubmission of the same
    # run) replaces every weight, so the starting weights (model.pretrained / init_2d / init_3d) are read only for a
    # fresh run; otherwise each rank loads them before the DDP wrap ------------------------------------------------
    checkpoint = ray.train.get_checkpoint()
    model = _build_model(cfg, num_classes=len(label_names), starting_weights=checkpoint is None)
    start_epoch, step, resumed_from, best_val = 0, 0, None, -1.0
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = ckpt.load_checkpoint(directory)
        model.load_state_dict(state["model"], strict=True)
        start_epoch, step, resumed_from = state["epoch"], state["step"], state["epoch"]
        best_val = float(state["metrics"].get("best_val_top1", state["metrics"].get("val_top1", -1.0)))
    # Distinct random streams per rank from here on (dropout masks, augmentation on the device), reproducible.
    torch.manual_seed(engine.rank_seed(t.seed, rank))
    workers = _gather_worker_info(rank, world, torch_seed=torch.initial_seed())
    model = engine.prepare_model(model, device, channels_last=t.channels_last, compile=t.compile,
                                 compile_backend=t.compile_backend, bn_policy=t.batchnorm)
    # DDP wrap when world > 1. Gradients as views of DDP's buckets: no copy per step, and no "grad strides do not
    # match bucket view strides" warning for channels_last weights.
    model = ray.train.torch.prepare_model(model, move_to_device=False,
                                          parallel_strategy_kwargs={"gradient_as_bucket_view": True})
    bare = ckpt.unwrap(model)

    # --- optimiser ---------------------------------------------------------------------------------------------
    optimizer = build_optimizer(bare, cfg.optim, lr=lr_at(step, schedule))
    if state is not None and state.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])
    del state
    tracker = Tracker(cfg, rank=rank, extra_config={"schedule": config["schedule"], "world_size": world})
    if rank == 0 and resumed_from is not None:
        log.info("resumed from %s at epoch %d, step %d", checkpoint.path, start_epoch, step)
    settings = engine.StepSettings(normalization=cfg.data.normalization, grad_accum_steps=t.grad_accum_steps,
                                   clip_grad_norm=cfg.optim.clip_grad_norm, amp=t.amp, bn_policy=t.batchnorm,
                                   max_steps=t.max_steps, log_every_steps=t.log_every_steps)

    # --- epochs ------------------------------------------------------------------------------------------------
    for epoch in range(start_epoch, t.epochs):
        if rank == 0 and data_state is not None:
            ray.get(data_state.set_epoch.remote(epoch))  # TSN offsets depend on the epoch
        _barrier()  # no rank starts pulling epoch `epoch` before the epoch is set
        t0 = time.perf_counter()
        result = engine.train_one_epoch(model, optimizer, batches(train_shard, t.batch_size), schedule=schedule,
                                        step=step, device=device, settings=settings, num_classes=len(label_names),
                                        on_log=tracker.log if rank == 0 else None)
        step = result.step
        metrics: dict[str, float] = {
            "epoch": epoch + 1, "step": step, "lr": lr_at(max(step - 1, 0), schedule),
            **result.sums.all_reduce().compute(prefix="train_"), **_reduce_timing(result, device),
        }
        stop = not result.completed or (t.max_steps > 0 and step >= t.max_steps)
        evaluated = (epoch + 1) % t.eval_every_epochs == 0 or epoch + 1 == t.epochs or stop
        if evaluated:
            # Every rank scores with rank 0's BN statistics: the ones the checkpoint saves.
            engine.broadcast_buffers_from_rank0(bare)
            val_sums, samples = engine.evaluate_batches(
                bare, batches(val_shard, t.eval_batch_size), device=device, normalization=cfg.data.normalization,
                amp=t.amp, num_classes=len(label_names), keep_samples=cfg.wandb.log_sample_clips if rank == 0 else 0)
            metrics.update(val_sums.all_reduce().compute(prefix="val_"))
            if rank == 0:
                tracker.log_evaluation(epoch + 1, val_sums.confusion.cpu().numpy(), label_names,
                                       clips=samples.clips, labels=samples.labels, preds=samples.preds)
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
        if t.compile:
            # Graphs dynamo captured so far in this worker: > 0 shows the model really runs compiled.
            from torch._dynamo.utils import counters

            metrics["compiled_graphs"] = float(counters["stats"]["unique_graphs"])
        if resumed_from is not None:
            metrics["resumed_from_epoch"] = float(resumed_from)
        best_val = max(best_val, metrics["val_top1"])
        metrics["best_val_top1"] = best_val
        # A max_steps stop inside an epoch is recorded as such: the checkpoint counts only complete epochs, so a
        # resume runs that epoch again instead of skipping its unseen clips.
        metrics["epoch_complete"] = float(result.completed)
        done_epochs = epoch + 1 if result.completed else epoch

        # --- report: rank 0 writes the checkpoint atomically, then hands it to Ray Train with the metrics -----
        with tempfile.TemporaryDirectory(prefix="eco-ckpt-") as tmp:
            reported = None
            if rank == 0:
                log.info("%s", _epoch_line(epoch, t.epochs, metrics, evaluated, result.completed))
                tracker.log({"epoch": epoch + 1, **{f"epoch/{k}": v for k, v in metrics.items() if k != "epoch"}})
                state = ckpt.build_state(bare, optimizer, epoch=done_epochs, step=step, config=cfg.to_dict(),
                                         label_names=label_names, data_seed=t.seed, metrics=metrics,
                                         schedule=config["schedule"])
                directory = ckpt.save_checkpoint(Path(tmp, "checkpoint"), state, extra_json={"workers": workers})
                reported = ray.train.Checkpoint.from_directory(str(directory))
            name = f"epoch_{epoch + 1:04d}" if result.completed else f"epoch_{epoch + 1:04d}-step_{step:07d}"
            ray.train.report(metrics, checkpoint=reported, checkpoint_dir_name=name)
        if stop:
            break
    if rank == 0:
        tracker.summary({"best_val_top1": best_val})
    tracker.finish()


# --- helpers ---------------------------------------------------------------------------------------------------


def _build_model(cfg: Config, num_classes: int, *, starting_weights: bool = True) -> nn.Module:
    from pipeline.model import eco_full, eco_lite

    builder = {"lite": eco_lite, "full": eco_full}[cfg.model.variant]
    # The builder loads `pretrained` strictly and re-initialises only the classifier when the class count differs
    # (pipeline.model.weights.load_weights), or starts from the authors' 2D + 3D files (`init_2d`/`init_3d`,
    # load_init_weights); every rank loads them after the same seed, so DDP starts from identical weights.
    m = cfg.model
    weights = {"pretrained": m.pretrained, "init_2d": m.init_2d, "init_3d": m.init_3d} if starting_weights else {}
    return builder(num_classes=num_classes, num_segments=m.num_segments, dropout=m.dropout, **weights)


def _reduce_timing(result: engine.EpochResult, device) -> dict[str, float]:
    """Global clips/s (sum over ranks) and the data-wait fraction of the slowest-waiting view (mean over ranks)."""
    t = torch.tensor([result.wait_s, result.compute_s, float(result.clips)], dtype=torch.float64, device=device)
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


def _gather_worker_info(rank: int, world: int, **extra: Any) -> list[dict[str, Any]]:
    """Where each rank runs (node id, host, pid, its torch seed): stored next to the checkpoint (workers.json)."""
    info = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
            "pid": os.getpid(), **extra}
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return [info]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, info)
    return out


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _epoch_line(epoch: int, epochs: int, m: dict[str, float], evaluated: bool, complete: bool = True) -> str:
    line = (f"epoch {epoch + 1:>3}/{epochs}{'' if complete else ' (stopped at train.max_steps)'}  "
            f"step {int(m['step']):>6}  loss {m['train_loss']:.4f}  "
            f"train top1 {m['train_top1']:6.1%}")
    if evaluated:
        line += (f"  | val top1 {m['val_top1']:6.1%}  top5 {m['val_top5']:6.1%}  "
                 f"mean-class {m['val_mean_class_acc']:6.1%}")
    return line + (f"  | lr {m['lr']:.2e}  {m['clips_per_s']:7.1f} clips/s  data-wait {m['data_wait_frac']:4.0%}  "
                   f"decode failures {int(m['decode_failures'])}  {m['epoch_time_s']:.0f}s")
