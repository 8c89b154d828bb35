"""The per-worker training function that Ray Train runs on every worker.

`train_func_per_worker(config)` reads top to bottom: setup, data, model, resume, optimiser, epochs (train,
evaluate, checkpoint, report). The step and the evaluation pass themselves are device-generic and Ray-free
(pipeline.training.engine). Rank 0 alone writes checkpoints, logs to W&B and logs the epoch line; metrics are
exact sums over all ranks (pipeline.training.metrics).
"""

from __future__ import annotations

import dataclasses
import itertools
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
from torch import nn

from pipeline.config import Config
from pipeline.data.pipeline import ClipCollate
from pipeline.training import checkpoint as ckpt
from pipeline.training import elastic, engine
from pipeline.training.optim import Schedule, build_optimizer, lr_at
from pipeline.training.tracking import Tracker

log = logging.getLogger(__name__)


def train_func_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. `config` (built by `run.train`): cfg (Config.to_dict()), label_names, schedule
    (optim.Schedule fields), data_state (DataRunState handle or None), train_video_ids (an object ref to the
    training split's video ids in dataset row order: pipeline.data.pipeline.split_video_ids), and optionally
    batch_hook (a picklable
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

    # Training batches with the manifest rows they hold (the data position of mid-epoch checkpoints).
    video_ids: list[str] = ray.get(config["train_video_ids"]) if config.get("train_video_ids") is not None else []
    row_of = {v: i for i, v in enumerate(video_ids)}

    def train_batches(batch_size: int) -> Iterator[tuple[dict[str, Any], list[int]]]:
        for b in train_shard.iter_torch_batches(batch_size=batch_size, collate_fn=ClipCollate(keep_video_id=True),
                                                prefetch_batches=cfg.data.prefetch_batches):
            rows = [row_of[v] for v in b.pop("video_id")] if row_of else []
            yield (hook(b) if hook is not None else b), rows

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
    # The rows of `start_epoch` already trained on (a mid-epoch or max_steps checkpoint), else none.
    trained = np.zeros(len(video_ids), dtype=bool)
    position = state.get("data_position") if state is not None else None
    if position is not None and position["epoch"] == start_epoch and position["num_rows"] == len(video_ids):
        trained = elastic.unpack_rows(position["trained"].numpy(), len(video_ids))
    history: list[dict[str, Any]] = list(state.get("elastic", [])) if state is not None else []
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
    if checkpoint is None:
        tracker.start()  # a fresh run: W&B starts now; a resumed one only when it has something new to log
    if rank == 0 and resumed_from is not None:
        log.info("resumed from %s at epoch %d, step %d (%d clips of the epoch already trained)", checkpoint.path,
                 start_epoch, step, int(trained.sum()))
    # The global batch of max workers at every world size (docs/training.md): a step is the same step whatever the
    # number of workers, and the lr schedule (a function of the step) continues without a jump.
    accum = elastic.accum_for_world(world, cfg.scaling.max_workers, t.grad_accum_steps)
    settings = engine.StepSettings(normalization=cfg.data.normalization, grad_accum_steps=accum,
                                   clip_grad_norm=cfg.optim.clip_grad_norm, amp=t.amp, bn_policy=t.batchnorm,
                                   max_steps=0, log_every_steps=t.log_every_steps)  # max_steps: chunks below
    history.append(_begin_attempt(data_state, world, step, start_epoch, workers, resumed=checkpoint is not None))
    event = history[-1]
    if rank == 0:
        log.info("worker group of %d (%s) at step %d, accumulating %d micro-batches per step%s", world, event["cause"],
                 step, accum, f"; {event['steps_redone']} steps redone" if event["steps_redone"] else "")
        tracker.log({"train/step": step, "elastic/world_size": world, "elastic/restarts": len(history) - 1,
                     "elastic/steps_redone": event["steps_redone"], "elastic/grad_accum_steps": accum})
    on_log = None
    if rank == 0:
        def on_log(m: dict[str, float]) -> None:
            tracker.log(m)
            if data_state is not None:
                data_state.note_step.remote(int(m["train/step"]))  # fire and forget: the next group counts redone steps

    # --- epochs ------------------------------------------------------------------------------------------------
    last_notice = None  # the preemption notice a checkpoint was written for (ray.train.PreemptionInfo)
    for epoch in range(start_epoch, t.epochs):
        if epoch != start_epoch:
            trained = np.zeros(len(video_ids), dtype=bool)
        if rank == 0 and data_state is not None:
            # TSN offsets depend on the epoch; a resumed epoch leaves out the rows it already trained on.
            ray.get(data_state.set_epoch.remote(epoch, elastic.pack_rows(np.flatnonzero(trained), trained.size)
                                                if trained.any() else None))
        _barrier()  # no rank starts pulling epoch `epoch` before the epoch is set
        t0 = time.perf_counter()
        # The epoch in chunks of checkpoint.every_steps optimiser steps (and up to train.max_steps): each chunk
        # ends on a whole step, so a checkpoint between chunks holds every clip it counts as trained.
        source = _Peekable(train_batches(t.batch_size))
        new_rows: list[int] = []
        result = None
        while True:
            chunk_steps = _chunk_steps(step, cfg.checkpoint.every_steps, t.max_steps,
                                       cfg.checkpoint.preemption_check_steps)
            chunk = _rows_recorded(source, None if chunk_steps is None else chunk_steps * accum, new_rows)
            part = engine.train_one_epoch(model, optimizer, chunk, schedule=schedule, step=step, device=device,
                                          settings=settings, num_classes=len(label_names), on_log=on_log)
            result = part if result is None else _merge(result, part)
            step = part.step
            exhausted = not source.has_next()
            if exhausted or (t.max_steps > 0 and step >= t.max_steps):
                break
            # --- mid-epoch checkpoint (every_steps, or a new preemption notice): the rows every rank has trained
            # on, then rank 0 writes ----------------------------------------------------------------------------
            notice = None
            if cfg.checkpoint.preemption_check_steps and step % cfg.checkpoint.preemption_check_steps == 0:
                # Every rank asks after the same steps (each takes the same number of batches): Ray Train makes it
                # a barrier and hands every rank rank 0's view, so all agree on the checkpoint below.
                notice = ray.train.get_preemption_info()
            reason = elastic.checkpoint_reason(step, cfg.checkpoint.every_steps,
                                               new_notice=notice is not None and notice != last_notice)
            if reason is None:
                continue
            if notice is not None and notice != last_notice:
                last_notice = notice
                if rank == 0:
                    left = (f"{notice.deadline_ms / 1000 - time.time():.0f} s before the deadline"
                            if notice.deadline_ms else "no deadline given")
                    log.warning("preemption notice for ranks %s on node(s) %s (%s): checkpointing at step %d",
                                notice.preempted_ranks, notice.preempted_node_ids, left, step)
            trained |= _gather_rows(new_rows, trained.size)
            new_rows.clear()
            m = {"epoch": epoch + 1, "step": step, "lr": lr_at(step - 1, schedule), "val_top1": -1.0,
                 "epoch_complete": 0.0, "world_size": float(world), "epoch_rows_trained": float(trained.sum()),
                 "best_val_top1": best_val}
            if rank == 0:
                log.info("epoch %d step %d: mid-epoch checkpoint (%s), %d/%d clips of the epoch trained, world %d",
                         epoch + 1, step, reason, int(trained.sum()), trained.size, world)
                tracker.log({"train/step": step, "elastic/world_size": world,
                             "elastic/epoch_rows_trained": int(trained.sum()),
                             "elastic/preemption_checkpoint": int(reason == "preemption notice")})
            _report(m, f"epoch_{epoch + 1:04d}-step_{step:07d}", rank, bare, optimizer, epoch, step, cfg,
                    label_names, config["schedule"], workers, trained, history)
        completed = not source.has_next()
        result.completed = completed
        trained |= _gather_rows(new_rows, trained.size)
        metrics: dict[str, float] = {
            "epoch": epoch + 1, "step": step, "lr": lr_at(max(step - 1, 0), schedule),
            **result.sums.all_reduce().compute(prefix="train_"), **_reduce_timing(result, device),
            "world_size": float(world), "restarts": float(len(history) - 1),
            "steps_redone_total": float(sum(h["steps_redone"] for h in history)),
            "epoch_rows_trained": float(trained.sum()),
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
        # The run's dropped clips so far (path, reason, detail, epoch): counted in the metrics, listed in the
        # checkpoint (decode_failures.json) by rank 0, so what a run skipped is never only in worker logs.
        failures = ray.get(data_state.failures.remote()) if data_state is not None else []
        metrics["decode_failures"] = float(sum(f["epoch"] == epoch for f in failures))
        metrics["decode_failures_total"] = float(len(failures))
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
        if rank == 0:
            log.info("%s", _epoch_line(epoch, t.epochs, metrics, evaluated, result.completed))
            if metrics["decode_failures"]:
                log.warning("epoch %d dropped %d clips (%s): listed in the checkpoint's decode_failures.json",
                            epoch + 1, int(metrics["decode_failures"]), _reasons(failures, epoch))
            tracker.log({"epoch": epoch + 1, **{f"epoch/{k}": v for k, v in metrics.items() if k != "epoch"}})
        name = f"epoch_{epoch + 1:04d}" if result.completed else f"epoch_{epoch + 1:04d}-step_{step:07d}"
        # An incomplete epoch (train.max_steps) keeps its data position: a resume trains only its other clips.
        _report(metrics, name, rank, bare, optimizer, done_epochs, step, cfg, label_names, config["schedule"],
                workers, None if result.completed else trained, history, failures)
        if stop:
            break
    if rank == 0:
        tracker.summary({"best_val_top1": best_val})
    tracker.finish()


# --- helpers ---------------------------------------------------------------------------------------------------


def _report(metrics: dict[str, float], name: str, rank: int, bare: nn.Module, optimizer, epoch: int, step: int,
            cfg: Config, label_names: list[str], schedule: dict[str, Any], workers: list[dict[str, Any]],
            trained: np.ndarray | None, history: list[dict[str, Any]],
            failures: list[dict[str, Any]] | None = None) -> None:
    """Rank 0 writes the checkpoint (`epoch` = complete epochs; `trained`: the data position of epoch `epoch`,
    None at an epoch's end; `failures`: the run's dropped clips, written at epoch ends) and every rank reports it
    to Ray Train with the metrics."""
    with tempfile.TemporaryDirectory(prefix="eco-ckpt-") as tmp:
        reported = None
        if rank == 0:
            state = ckpt.build_state(bare, optimizer, epoch=epoch, step=step, config=cfg.to_dict(),
                                     label_names=label_names, data_seed=cfg.train.seed, metrics=metrics,
                                     schedule=schedule)
            if trained is not None:
                position = elastic.data_position(epoch, trained)
                state["data_position"] = {**position, "trained": torch.from_numpy(position["trained"])}
            state["elastic"] = [dict(h) for h in history]  # every worker group of the run so far
            extra = {"workers": workers, **({} if failures is None else {"decode_failures": failures})}
            directory = ckpt.save_checkpoint(Path(tmp, "checkpoint"), state, extra_json=extra)
            reported = ray.train.Checkpoint.from_directory(str(directory))
        ray.train.report(metrics, checkpoint=reported, checkpoint_dir_name=name)


def _begin_attempt(data_state, world: int, step: int, epoch: int, workers: list[dict[str, Any]], *,
                   resumed: bool) -> dict[str, Any]:
    """This worker group's record (same on every rank): world size, start step, why it started, steps redone."""
    previous, furthest = (ray.get(data_state.begin_attempt.remote({"world": world, "step": step}))
                          if data_state is not None and ray.train.get_context().get_world_rank() == 0 else ([], None))
    record = {"world": world, "step": step, "epoch": epoch,
              "cause": elastic.restart_cause(previous[-1]["world"] if previous else None, world, resumed=resumed),
              "steps_redone": elastic.steps_redone(furthest, step),
              "nodes": len({w["node_id"] for w in workers})}
    if dist.is_available() and dist.is_initialized() and world > 1:
        out: list[Any] = [record]
        dist.broadcast_object_list(out, src=0)
        record = out[0]
    return record


def _chunk_steps(step: int, every_steps: int, max_steps: int, check_steps: int = 0) -> int | None:
    """Optimiser steps in the next chunk of an epoch: up to the next multiple of every_steps (a checkpoint) or
    of check_steps (a preemption check), and at most to max_steps (None: the rest of the epoch)."""
    ends = [(step // n + 1) * n for n in (every_steps, check_steps) if n] + ([max_steps] if max_steps else [])
    return min(ends) - step if ends else None


class _Peekable:
    """An iterator that can tell whether another item follows (pulling it ahead)."""

    _EMPTY = object()

    def __init__(self, it: Iterator):
        self._it, self._next = it, self._EMPTY

    def has_next(self) -> bool:
        if self._next is self._EMPTY:
            self._next = next(self._it, self._EMPTY)
        return self._next is not self._EMPTY

    def __next__(self):
        if not self.has_next():
            raise StopIteration
        item, self._next = self._next, self._EMPTY
        return item


def _rows_recorded(source: _Peekable, limit: int | None, rows: list[int]) -> Iterator[dict[str, Any]]:
    """Up to `limit` batches of `source`, adding their rows to `rows` as each is handed to the step."""
    for _ in (range(limit) if limit is not None else itertools.count()):
        if not source.has_next():
            return
        batch, batch_rows = next(source)
        rows.extend(batch_rows)
        yield batch


def _gather_rows(rows: list[int], num_rows: int) -> np.ndarray:
    """The mask of the rows trained on by any rank (each rank passes its own)."""
    gathered: list[Any] = [rows]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, list(rows))
    mask = np.zeros(num_rows, dtype=bool)
    for part in gathered:
        mask[np.asarray(part, dtype=np.int64)] = True
    return mask


def _merge(a: engine.EpochResult, b: engine.EpochResult) -> engine.EpochResult:
    """The result of two consecutive chunks of one epoch."""
    s = a.sums
    s.loss_sum, s.top1, s.top5 = s.loss_sum + b.sums.loss_sum, s.top1 + b.sums.top1, s.top5 + b.sums.top5
    s.confusion = s.confusion + b.sums.confusion
    return dataclasses.replace(a, sums=s, step=b.step, completed=b.completed, wait_s=a.wait_s + b.wait_s,
                               compute_s=a.compute_s + b.compute_s, clips=a.clips + b.clips,
                               micro_batches=a.micro_batches + b.micro_batches)


def _build_model(cfg: Config, num_classes: int, *, starting_weights: bool = True) -> nn.Module:
    from pipeline.model import BUILDERS

    builder = BUILDERS[cfg.model.variant]
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


def _reasons(failures: list[dict[str, Any]], epoch: int) -> str:
    """"crashed 200, timeout 12": an epoch's dropped clips by reason, most first."""
    counts: dict[str, int] = {}
    for f in failures:
        if f["epoch"] == epoch:
            counts[f["reason"]] = counts.get(f["reason"], 0) + 1
    return ", ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _epoch_line(epoch: int, epochs: int, m: dict[str, float], evaluated: bool, complete: bool = True) -> str:
    line = (f"epoch {epoch + 1:>3}/{epochs}{'' if complete else ' (stopped at train.max_steps)'}  "
            f"step {int(m['step']):>6}  world {int(m.get('world_size', 1))}"
            + (f" (restarts {int(m['restarts'])}, steps redone {int(m.get('steps_redone_total', 0))})"
               if m.get("restarts") else "") + f"  loss {m['train_loss']:.4f}  "
            f"train top1 {m['train_top1']:6.1%}")
    if evaluated:
        line += (f"  | val top1 {m['val_top1']:6.1%}  top5 {m['val_top5']:6.1%}  "
                 f"mean-class {m['val_mean_class_acc']:6.1%}")
    return line + (f"  | lr {m['lr']:.2e}  {m['clips_per_s']:7.1f} clips/s  data-wait {m['data_wait_frac']:4.0%}  "
                   f"decode failures {int(m['decode_failures'])}  {m['epoch_time_s']:.0f}s")
