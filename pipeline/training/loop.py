"""The per-worker training function that Ray Train runs on every worker.

`train_func_per_worker(config)` reads top to bottom: setup, data, model, resume, optimiser, epochs (train in
chunks between checkpoints, evaluate, report). What it composes lives elsewhere: the steps and the evaluation pass
(pipeline.training.engine, device-generic, Ray-free), this rank's datasets (pipeline.training.data), the position
inside an epoch (pipeline.training.elastic.EpochPosition), the epoch's metrics (pipeline.training.summary).
Rank 0 alone writes checkpoints, logs to W&B and prints the epoch line; metrics are exact sums over all ranks.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from pipeline import storage
from pipeline.config import Config
from pipeline.training import checkpoint as ckpt
from pipeline.training import elastic, engine, summary
from pipeline.training.data import RankData
from pipeline.training.elastic import EpochPosition
from pipeline.training.optim import Schedule, build_optimizer, lr_at
from pipeline.training.tracking import Tracker

log = logging.getLogger(__name__)


def train_func_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. `config` (built by `run.train`): cfg (Config.to_dict()), label_names, schedule
    (optim.Schedule fields), train_rows / val_rows (object refs to the splits' rows, split_rows), data_state (the
    run's DataRunState), optionally batch_hook (applied to every batch before the model: tests/residency.py)."""
    # --- setup ---------------------------------------------------------------------------------------------------
    cfg, labels = Config.from_dict(config["cfg"]), list(config["label_names"])
    t, schedule, run_state = cfg.train, Schedule(**config["schedule"]), config.get("data_state")
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()
    if t.compile:
        engine.check_compile_available(device, t.compile_backend)  # before any work, with a message that says why
    torch.manual_seed(t.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    group = engine.control_group()  # CPU collectives: the last batch, the trained rows
    data = RankData(cfg, ray.get(config["train_rows"]), ray.get(config["val_rows"]), rank=rank, world=world,
                    run_state=run_state, batch_hook=config.get("batch_hook"), device=device)

    # --- model and resume: the latest checkpoint (a restarted worker group, a resubmitted run) replaces every
    # weight, so the starting weights (model.pretrained / init_2d / init_3d) are read only for a fresh run --------
    checkpoint = ray.train.get_checkpoint()
    state, resumed_from = _load(checkpoint, rank)
    model = build_model(cfg, len(labels), starting_weights=state is None)
    if state is not None:
        model.load_state_dict(state["model"], strict=True)
    start_epoch, step = (state["epoch"], state["step"]) if state else (0, 0)
    best_val = _best_val(state)
    position = EpochPosition.start(start_epoch, data.num_train_rows, (state or {}).get("data_position"))
    torch.manual_seed(engine.rank_seed(t.seed, rank))  # distinct dropout streams per rank from here, reproducible
    workers = _gather_worker_info(rank, group, torch_seed=torch.initial_seed(),
                                  torch_threads=torch.get_num_threads())
    model = engine.prepare_model(model, device, channels_last=t.channels_last, compile=t.compile,
                                 compile_backend=t.compile_backend, bn_policy=t.batchnorm)
    # DDP wrap when world > 1; gradients as views of DDP's buckets (no copy per step, no stride warning).
    model = ray.train.torch.prepare_model(model, move_to_device=False,
                                          parallel_strategy_kwargs={"gradient_as_bucket_view": True})
    bare = ckpt.unwrap(model)

    # --- optimiser and the run's records -------------------------------------------------------------------------
    optimizer = build_optimizer(bare, cfg.optim, lr=lr_at(step, schedule))
    if state is not None and state.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])
    history: list[dict[str, Any]] = list((state or {}).get("elastic", []))  # every worker group of the run
    del state
    tracker = Tracker(cfg, rank=rank, extra_config={"schedule": config["schedule"], "world_size": world})
    if checkpoint is None:
        tracker.start()  # a fresh run: W&B starts now; a resumed one only when it has something new to log
    # The global batch of max workers at every world size (docs/training.md): a step is the same step whatever the
    # number of workers, and the lr schedule (a function of the step) continues without a jump.
    accum = elastic.accum_for_world(world, cfg.scaling.max_workers, t.grad_accum_steps)
    settings = engine.StepSettings(normalization=cfg.data.normalization, grad_accum_steps=accum,
                                   clip_grad_norm=cfg.optim.clip_grad_norm, amp=t.amp, bn_policy=t.batchnorm,
                                   log_every_steps=t.log_every_steps)
    _begin_attempt(history, run_state, rank, world, step, start_epoch, workers, group, tracker=tracker,
                   accum=accum, resumed_from=resumed_from, rows_trained=position.rows_trained)
    reporter = _Reporter(rank, bare, optimizer, cfg, labels, config["schedule"], workers, history, group,
                         ckpt.UploadBudget(cfg.checkpoint.upload_retry_s))
    mid_epoch = _MidEpoch(cfg, rank)
    on_log = _StepLogger(tracker, run_state, schedule, t) if rank == 0 else None

    # --- epochs --------------------------------------------------------------------------------------------------
    for epoch in range(start_epoch, t.epochs):
        t0 = time.perf_counter()
        position = position if position.epoch == epoch else EpochPosition.start(epoch, data.num_train_rows)
        limit = max(t.max_steps - step, 0) * accum * t.batch_size if t.max_steps else None  # clips the steps left use
        stream, truncated = data.train_stream(position, limit=limit, group=group)
        result = engine.EpochResult.empty(len(labels), device, step)
        # In chunks that end where a mid-epoch checkpoint may be due: each ends on a whole optimiser step, so a
        # checkpoint between chunks holds every clip it counts as trained.
        while engine.train_steps(model, optimizer, stream, result, schedule=schedule, device=device,
                                 settings=settings, steps=mid_epoch.steps_to_next(result.step, t.max_steps),
                                 on_log=on_log):
            reason = mid_epoch.reason(result.step)
            if reason is not None:
                position.sync(lambda rows: _all_gather(rows, group))
                mid_epoch.pending = not reporter.mid_epoch(epoch, result.step, position, reason, tracker, best_val)
        stream.close()
        step = result.step
        position.sync(lambda rows: _all_gather(rows, group))
        stop = truncated or bool(t.max_steps and step >= t.max_steps)
        evaluate = (epoch + 1) % t.eval_every_epochs == 0 or epoch + 1 == t.epochs or stop
        val = _validate(bare, data, cfg, device, labels, rank, tracker, epoch) if evaluate else None
        failures, decoded = ray.get(run_state.snapshot.remote()) if run_state is not None else ([], {})
        metrics = summary.epoch_metrics(
            epoch=epoch, step=step, lr=lr_at(max(step - 1, 0), schedule),
            train=result.sums.all_reduce().compute(prefix="train_"), timing=_reduce_timing(result, device),
            val=val, history=history, rows_trained=position.rows_trained, failures=failures, decoded=decoded,
            epoch_time_s=time.perf_counter() - t0, best_val_before=best_val, completed=not truncated,
            resumed_from=start_epoch if checkpoint is not None else None, compiled_graphs=_compiled_graphs(t))
        best_val = metrics["best_val_top1"]
        last = stop or epoch + 1 == t.epochs
        mid_epoch.pending = not reporter.epoch_end(epoch, t.epochs, metrics, position, failures, tracker, last=last)
        if stop:
            break
    tracker.finish()


# --- the pieces the loop composes ---------------------------------------------------------------------------------


@dataclass
class _Reporter:
    """Writes checkpoints (rank 0) and reports them with the metrics to Ray Train (every rank)."""

    rank: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    cfg: Config
    label_names: list[str]
    schedule: dict[str, Any]
    workers: list[dict[str, Any]]
    history: list[dict[str, Any]]
    group: Any  # the CPU process group: every rank learns whether rank 0's upload went through
    uploads: ckpt.UploadBudget

    def mid_epoch(self, epoch: int, step: int, position: EpochPosition, reason: str, tracker: Tracker,
                  best_val: float) -> bool:
        done, total = position.rows_trained, position.num_rows
        if self.rank == 0:
            log.info("epoch %d step %d: mid-epoch checkpoint (%s), %d/%d clips of the epoch trained, world %d",
                     epoch + 1, step, reason, done, total, self.history[-1]["world"])
            tracker.log({"train/step": step, "elastic/world_size": self.history[-1]["world"],
                         "elastic/epoch_rows_trained": done,
                         "elastic/preemption_checkpoint": int(reason == "preemption notice")})
            tracker.seal()  # what this checkpoint covers is on disk before a resume can start from it
        m = {"epoch": epoch + 1, "step": step, "lr": lr_at(step - 1, Schedule(**self.schedule)), "val_top1": -1.0,
             "epoch_complete": 0.0, "world_size": float(self.history[-1]["world"]),
             "epoch_rows_trained": float(done), "best_val_top1": best_val}
        return self._report(m, f"epoch_{epoch + 1:04d}-step_{step:07d}", epoch, step, position)

    def epoch_end(self, epoch: int, epochs: int, m: dict[str, float], position: EpochPosition,
                  failures: list[dict[str, Any]], tracker: Tracker, *, last: bool) -> bool:
        complete = bool(m["epoch_complete"])
        if self.rank == 0:
            log.info("%s", summary.epoch_line(epochs, m))
            if m["decode_failures"]:
                log.warning("epoch %d dropped %d clips (%s): listed in the checkpoint's decode_failures.json",
                            epoch + 1, int(m["decode_failures"]), summary.failure_reasons(failures, epoch))
            tracker.summary({"best_val_top1": m["best_val_top1"]})
            tracker.log({"epoch": epoch + 1, **{f"epoch/{k}": v for k, v in m.items() if k != "epoch"}})
            tracker.seal()
        # The checkpoint counts complete epochs only; an incomplete one (train.max_steps) keeps its data position,
        # so a resume trains its other clips instead of skipping them.
        name = f"epoch_{epoch + 1:04d}" if complete else f"epoch_{epoch + 1:04d}-step_{int(m['step']):07d}"
        return self._report(m, name, epoch + 1 if complete else epoch, int(m["step"]),
                            None if complete else position, failures, until_done=last)

    def _report(self, metrics: dict[str, float], name: str, epoch: int, step: int, position: EpochPosition | None,
                failures: list[dict[str, Any]] | None = None, *, until_done: bool = False) -> bool:
        """Write, upload and report a checkpoint; False when the upload failed (the metrics are reported without
        it, and the caller retries at the next step). Rank 0 uploads it itself, within the retry budget, and
        hands Ray Train the finished directory (NO_UPLOAD): an upload error inside ray.train.report would leave
        the ranks' report barrier unmatched."""
        with tempfile.TemporaryDirectory(prefix="eco-ckpt-") as tmp:
            reported = None
            if self.rank == 0:
                state = ckpt.build_state(self.model, self.optimizer, epoch=epoch, step=step,
                                         config=self.cfg.to_dict(), label_names=self.label_names,
                                         data_seed=self.cfg.train.seed, metrics=metrics, schedule=self.schedule)
                if position is not None:
                    record = position.as_record()
                    state["data_position"] = {**record, "trained": torch.from_numpy(record["trained"])}
                state["elastic"] = [dict(h) for h in self.history]  # every worker group of the run so far
                extra = {"workers": self.workers, **({} if failures is None else {"decode_failures": failures})}
                directory = ckpt.save_checkpoint(Path(tmp, "checkpoint"), state, extra_json=extra)
                run = ray.train.get_context().get_storage()
                fs, dest = run.storage_filesystem, f"{run.experiment_fs_path}/{name}"
                if self.uploads.upload(directory, fs, dest, until_done=until_done):
                    reported = ray.train.Checkpoint(dest, filesystem=fs)
            uploaded = [reported is not None]
            if self.group is not None:
                dist.broadcast_object_list(uploaded, src=0, group=self.group)
            ray.train.report(metrics, checkpoint=reported, checkpoint_dir_name=name,
                             checkpoint_upload_mode=ray.train.CheckpointUploadMode.NO_UPLOAD,
                             delete_local_checkpoint_after_upload=False)
            return bool(uploaded[0])


class _MidEpoch:
    """When a mid-epoch checkpoint is due: every checkpoint.every_steps steps, and at once on a new preemption
    notice (asked for every checkpoint.preemption_check_steps steps)."""

    def __init__(self, cfg: Config, rank: int):
        self.every, self.check, self.rank = cfg.checkpoint.every_steps, cfg.checkpoint.preemption_check_steps, rank
        self.last_notice = None  # the notice a checkpoint was written for (ray.train.PreemptionInfo)
        self.pending = False  # the last checkpoint's upload failed: retry at the next step

    def steps_to_next(self, step: int, max_steps: int) -> int | None:
        if self.pending:
            return 1
        n = elastic.steps_to_checkpoint(step, self.every, max_steps, self.check)
        return None if n is None else max(n, 1)  # a stream cut at max_steps ends there: never more than one

    def reason(self, step: int) -> str | None:
        notice = None
        if self.check and step % self.check == 0:
            # Every rank asks after the same steps: Ray Train makes it a barrier and hands every rank rank 0's
            # view, so all agree on the checkpoint.
            notice = ray.train.get_preemption_info()
        new = notice is not None and notice != self.last_notice
        if new:
            self.last_notice = notice
            if self.rank == 0:
                left = (f"{notice.deadline_ms / 1000 - time.time():.0f} s before the deadline"
                        if notice.deadline_ms else "no deadline given")
                log.warning("preemption notice for ranks %s on node(s) %s (%s): checkpointing at step %d",
                            notice.preempted_ranks, notice.preempted_node_ids, left, step)
        reason = elastic.checkpoint_reason(step, self.every, new_notice=new)
        return reason if reason is not None or not self.pending else "retrying a failed upload"


def _validate(bare: nn.Module, data: RankData, cfg: Config, device, labels: list[str], rank: int,
              tracker: Tracker, epoch: int) -> dict[str, float]:
    """Score this rank's share of the validation clips; the metrics summed over the ranks. Every rank scores with
    rank 0's BN statistics (the ones the checkpoint saves); rank 0 logs the confusion matrix and sample clips."""
    engine.broadcast_buffers_from_rank0(bare)
    sums, samples = engine.evaluate_batches(
        bare, data.val_batches(), device=device, normalization=cfg.data.normalization, amp=cfg.train.amp,
        num_classes=len(labels), keep_samples=cfg.wandb.log_sample_clips if rank == 0 else 0)
    metrics = sums.all_reduce().compute(prefix="val_")  # (in place: the confusion below is every rank's)
    if rank == 0:
        tracker.log_evaluation(epoch + 1, sums.confusion.cpu().numpy(), labels, clips=samples.clips,
                               labels=samples.labels, preds=samples.preds)
    return metrics


def _load(checkpoint, rank: int) -> tuple[dict[str, Any] | None, str | None]:
    """(the training state to resume from, its URI): Ray Train's latest checkpoint, or the one before it when the
    latest is unreadable (rank 0 says so)."""
    if checkpoint is None:
        return None, None
    return ckpt.load_latest_good(storage.uri_of(checkpoint.filesystem, checkpoint.path), announce=rank == 0)


def _best_val(state: dict[str, Any] | None) -> float:
    if state is None:
        return -1.0
    return float(state["metrics"].get("best_val_top1", state["metrics"].get("val_top1", -1.0)))


class _StepLogger:
    """Rank 0's `on_log`: each logging window's metrics and time left to W&B, and a progress line every
    train.progress_every_s seconds (the first window always has one, so a job log shows training started)."""

    def __init__(self, tracker: Tracker, run_state, schedule: Schedule, t):
        self.tracker, self.run_state, self.every_s = tracker, run_state, t.progress_every_s
        self.steps_per_epoch, self.epochs = schedule.steps_per_epoch, t.epochs
        self.total_steps = min(schedule.total_steps, t.max_steps) if t.max_steps else schedule.total_steps
        self.last_line: float | None = None

    def __call__(self, m: dict[str, float]) -> None:
        epoch_left, run_left = summary.time_left(int(m["train/step"]), m["train/step_time_s"],
                                                 steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps)
        m = {**m, "train/epoch_time_left_s": epoch_left, "train/run_time_left_s": run_left}
        self.tracker.log(m)
        now = time.monotonic()
        if self.last_line is None or now - self.last_line >= self.every_s:
            self.last_line = now
            log.info("%s", summary.step_line(m, steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
                                             epochs=self.epochs))
        if self.run_state is not None:
            # Fire and forget: the next worker group counts the steps it redoes.
            self.run_state.note_step.remote(int(m["train/step"]))


def _begin_attempt(history: list[dict[str, Any]], run_state, rank: int, world: int, step: int, epoch: int,
                   workers: list[dict[str, Any]], group, *, tracker: Tracker, accum: int, resumed_from: str | None,
                   rows_trained: int) -> None:
    """Append this worker group's record to `history` (the same on every rank): world size, start step, why it
    started, steps redone; rank 0 says it in a line and in W&B."""
    resumed = resumed_from is not None
    previous, furthest = (ray.get(run_state.begin_attempt.remote({"world": world, "step": step}))
                          if run_state is not None and rank == 0 else ([], None))
    record = {"world": world, "step": step, "epoch": epoch,
              "cause": elastic.restart_cause(previous[-1]["world"] if previous else None, world, resumed=resumed),
              "steps_redone": elastic.steps_redone(furthest, step),
              "nodes": len({w["node_id"] for w in workers})}
    if group is not None:
        out: list[Any] = [record]
        dist.broadcast_object_list(out, src=0, group=group)
        record = out[0]
    if rank == 0:
        if resumed:
            log.info("resumed from %s at epoch %d, step %d (%d clips of the epoch already trained)", resumed_from,
                     epoch, step, rows_trained)
        log.info("worker group of %d (%s) at step %d, accumulating %d micro-batches per step%s", world,
                 record["cause"], step, accum,
                 f"; {record['steps_redone']} steps redone" if record["steps_redone"] else "")
        tracker.log({"train/step": step, "elastic/world_size": world, "elastic/restarts": len(history),
                     "elastic/steps_redone": record["steps_redone"], "elastic/grad_accum_steps": accum})
    history.append(record)


def _all_gather(rows: list[int], group) -> list[list[int]]:
    """Every rank's `rows` (a collective over the CPU group; this rank's alone without one)."""
    if group is None:
        return [rows]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, rows, group=group)
    return out


def _compiled_graphs(t) -> int | None:
    if not t.compile:
        return None
    from torch._dynamo.utils import counters  # graphs dynamo captured so far in this worker

    return int(counters["stats"]["unique_graphs"])


def build_model(cfg: Config, num_classes: int, *, starting_weights: bool = True) -> nn.Module:
    """The model of `cfg` with `num_classes` outputs and its starting weights (none for a resume: the checkpoint's)."""
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


def _gather_worker_info(rank: int, group, **extra: Any) -> list[dict[str, Any]]:
    """Where each rank runs (node id, host, pid, its torch seed): stored next to the checkpoint (workers.json)."""
    info = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
            "pid": os.getpid(), **extra}
    return [info] if group is None else _all_gather(info, group)
