"""Launch a training run on Ray Train V2: `train(cfg) -> TrainResult`.

Starts or joins Ray, builds the Ray Data datasets, and runs `loop.train_func_per_worker` on
`cfg.scaling.num_workers` workers (a number, or an elastic [min, max] range) with a `TorchTrainer`. Checkpoints go to
`RunConfig(storage_path=cfg.checkpoint.storage_path, name=cfg.checkpoint.run_name)`: Ray Train V2 restores a run
from the checkpoint-manager snapshot it finds there, so submitting the same run name again resumes from its latest
checkpoint, and `FailureConfig` restarts the worker group from it after a worker dies.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

# Ray Train V2 is the default in Ray 2.60; set it explicitly so older 2.x installs take the same code path.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

import ray  # noqa: E402
import ray.train  # noqa: E402
from ray.train import (  # noqa: E402
    CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, UserCallback,
)
from ray.train.torch import TorchConfig, TorchTrainer  # noqa: E402

from pipeline import raystart, storage  # noqa: E402
from pipeline.config import Config  # noqa: E402
from pipeline.training import tracking  # noqa: E402
from pipeline.training.loop import train_func_per_worker  # noqa: E402
from pipeline.training.optim import global_batch_size, make_schedule, scaled_lr  # noqa: E402

log = logging.getLogger(__name__)

SCORE = "val_top1"


@dataclass
class TrainResult:
    """What a run produced: where its checkpoints and W&B run are, and its final metrics."""

    run_name: str
    run_dir: str
    latest_checkpoint: str | None
    best_checkpoint: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    wandb_dir: str | None = None  # the newest offline-run folder
    wandb_runs: list[str] = field(default_factory=list)  # every sealed segment, oldest first: sync them all
    wandb_host: str | None = None  # where the folders are, when not on this machine

    def describe(self) -> str:
        m = self.metrics
        lines = [f"run {self.run_name}: {int(m.get('epoch', 0))} epochs, {int(m.get('step', 0))} steps"]
        if m.get("val_top1", -1) >= 0:
            lines.append(f"  val top-1 {m['val_top1']:.1%}  top-5 {m['val_top5']:.1%}  "
                         f"mean class accuracy {m['val_mean_class_acc']:.1%}")
        lines.append(f"  latest checkpoint  {self.latest_checkpoint}")
        lines.append(f"  best checkpoint    {self.best_checkpoint}  (by {SCORE})")
        if self.wandb_runs:
            where = f" on {self.wandb_host}" if self.wandb_host else ""
            lines.append(f"  W&B offline run    {len(self.wandb_runs)} segment folder(s){where}, one W&B run; upload: "
                         f"{tracking.sync_command(self.wandb_runs)}")
        return "\n".join(lines)


class _FailureSummary(UserCallback):
    """One line per worker-group failure, on the Ray Train controller: which ranks failed, why (first line), and the
    checkpoint the restarted group resumes from. Ray prints the workers' full tracebacks above it; this is the line
    to read."""

    def __init__(self, storage_path: str, max_failures: int):
        self.storage_path, self.max_failures = storage_path, max_failures
        self.latest: str | None = None
        self.failures = 0

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if checkpoint is not None:
            self.latest = _uri(self.storage_path, checkpoint.path)

    def after_exception(self, run_context, worker_exceptions) -> None:
        self.failures += 1
        ranks = ", ".join(str(r) for r in sorted(worker_exceptions))
        first = next(iter(worker_exceptions.values()))
        reason = (str(first).strip().splitlines() or [type(first).__name__])[0][:200]
        retry = (f"restarting from {self.latest or 'the start (no checkpoint yet)'}"
                 if self.failures <= self.max_failures or self.max_failures < 0
                 else "no restarts left (checkpoint.max_failures)")
        log.warning("training worker rank %s failed (%s: %s); failure %d, %s", ranks, type(first).__name__, reason,
                    self.failures, retry)


def train(cfg: Config, *, callbacks: Sequence[Any] = (),
          batch_hook: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> TrainResult:
    """Run (or resume) the training described by `cfg`; returns where the checkpoints and W&B run are.

    `callbacks` go to Ray Train's RunConfig: a sweep trial passes Tune's `TuneReportCallback` so that every
    epoch's report reaches Tune (pipeline.training.sweep). `batch_hook` (picklable, module-level) is applied to
    every batch in the workers before the model sees it: an injection point for tests (tests/residency.py emulates
    accelerator-resident batches with it).
    """
    from pipeline.data import pipeline as data_pipeline
    from pipeline.data.run_state import create_run_state
    from pipeline.data.manifest import read_labels, read_manifest

    raystart.check_job_paths({"checkpoint.storage_path": cfg.checkpoint.storage_path,
                              "data.manifest": cfg.data.manifest, "model.pretrained": cfg.model.pretrained,
                              "model.init_2d": cfg.model.init_2d, "model.init_3d": cfg.model.init_3d,
                              "wandb.dir": cfg.wandb.dir})
    cfg = _absolute_paths(cfg)
    if not cfg.data.manifest:
        raise ValueError("data.manifest: set it to a directory written by `eco prepare` (or its manifest.parquet)")
    if cfg.train.batchnorm == "sync" and not cfg.scaling.use_gpu:
        raise ValueError("train.batchnorm=sync needs GPUs (torch's SyncBatchNorm runs on CUDA only): set "
                         "scaling.use_gpu=true, or train.batchnorm=train on CPU")
    # The retry budget of every storage request of the run (pipeline.storage): the variable is forwarded to the
    # Ray processes (Train workers, decode tasks) with the other storage settings.
    os.environ[storage.RETRY_ATTEMPTS_ENV] = str(cfg.checkpoint.storage_retry_attempts)
    _ensure_ray(cfg)
    label_names = read_labels(cfg.data.manifest)
    num_train = read_manifest(cfg.data.manifest, cfg.data.train_split).num_rows

    # The lr schedule is a pure function of the optimiser step: fix the steps per epoch from the manifest (an
    # equal streaming split gives each rank floor(n / workers) clips). Elastic runs keep the global batch of max
    # workers at every world size (the loop scales gradient accumulation, docs/training.md), so max workers
    # define the step and the schedule; at other sizes an epoch may take a step more or less (rounding).
    workers, batch, accum = cfg.scaling.max_workers, cfg.train.batch_size, cfg.train.grad_accum_steps
    per_rank = num_train // workers
    if per_rank == 0:
        raise ValueError(f"data.manifest: {num_train} training videos cannot feed scaling.num_workers={workers}")
    steps_per_epoch = math.ceil(math.ceil(per_rank / batch) / accum)
    peak = scaled_lr(cfg.optim.lr, cfg.optim.base_batch_size, global_batch_size(workers, batch, accum))
    schedule = make_schedule(cfg.optim, peak_lr=peak, steps_per_epoch=steps_per_epoch, epochs=cfg.train.epochs)
    log.info("run %s: %d train videos, %s workers x %d x %d accum -> %d steps/epoch, peak lr %.4g",
             cfg.checkpoint.run_name, num_train,
             f"{cfg.scaling.min_workers}-{workers} (elastic; global batch of {workers})" if cfg.scaling.elastic
             else workers, batch, accum, steps_per_epoch, peak)

    # One run-state actor per launch (this run's decode failures and worker groups). It lives in the driver's
    # job, so it survives worker-group restarts.
    data_state = create_run_state()
    # The splits' rows, read and validated once, in the object store: each worker makes its datasets from them.
    rows = {name: ray.put(data_pipeline.split_rows(cfg.data.manifest, split, cfg.data.format))
            for name, split in (("train_rows", cfg.data.train_split), ("val_rows", cfg.data.val_split))}
    # Ray Train's own filesystem for the run directory (its snapshot, resume downloads) with the same retries;
    # the checkpoints themselves are uploaded by rank 0 through it (loop._Reporter).
    run_fs, run_path = storage.resolve(cfg.checkpoint.storage_path)
    trainer = TorchTrainer(
        _train_func,
        train_loop_config={"cfg": cfg.to_dict(), "label_names": label_names, "schedule": vars(schedule),
                           "data_state": data_state, **rows, **({"batch_hook": batch_hook} if batch_hook else {})},
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            # (min, max): Ray Train V2's elastic policy (docs/cluster.md); an int: a fixed group.
            num_workers=cfg.scaling.num_workers,
            elastic_resize_monitor_interval_s=cfg.scaling.elastic_resize_monitor_interval_s,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker, **cfg.scaling.resources_per_worker,
                                  **({"GPU": 1} if cfg.scaling.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=cfg.checkpoint.run_name,
            storage_path=run_path,
            storage_filesystem=run_fs,
            # Ray Train V2 never deletes the latest checkpoint, so num_to_keep=K ranked by val_top1 keeps the K
            # best plus the latest (CheckpointManager._save_state_and_delete_old_checkpoints).
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep,
                                               checkpoint_score_attribute=SCORE, checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
            # Ray Train's INFO lines (worker group started, process group set up, DDP wrap, every report's dict)
            # go to its files under <ray logs>/train/ only; its warnings and errors (failures, restarts) still
            # reach the console. The project's own lines use other loggers and are not filtered.
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=[_FailureSummary(cfg.checkpoint.storage_path, cfg.checkpoint.max_failures), *callbacks],
            # Train workers and the controller upload checkpoints: forward the storage settings even when the
            # caller initialised Ray itself (pipeline.raystart forwards them for the whole job otherwise).
            worker_runtime_env=storage.storage_runtime_env() or {},
        ),
    )
    with controller_env(cfg):
        result = trainer.fit()
    best = max(result.best_checkpoints or [], key=lambda cm: cm[1].get(SCORE, -1.0), default=None)
    # The sealed segments only: an unsealed one (a killed attempt's rows after its last checkpoint) was redone.
    runs = [r for r in tracking.recorded_runs(cfg) if r.get("sealed")] \
        if cfg.wandb.enabled and cfg.wandb.mode == "offline" else []
    hosts = {r.get("host") for r in runs} - {socket.gethostname()}
    return TrainResult(
        run_name=cfg.checkpoint.run_name,
        run_dir=_uri(cfg.checkpoint.storage_path, result.path),
        latest_checkpoint=_uri(cfg.checkpoint.storage_path, result.checkpoint.path) if result.checkpoint else None,
        best_checkpoint=_uri(cfg.checkpoint.storage_path, best[0].path) if best else None,
        metrics=dict(result.metrics or {}),
        wandb_dir=runs[-1]["dir"] if runs else None,
        wandb_runs=[r["dir"] for r in runs],
        wandb_host=", ".join(sorted(h for h in hosts if h)) or None,
    )


@contextlib.contextmanager
def controller_env(cfg: Config):
    """Ray Train V2 settings that are environment variables, for this fit only: Ray Train forwards the
    RAY_TRAIN_* variables from the driver to its controller and workers. The worker-group start timeout has no
    public API (docs/training.md); this is the one place that sets it (tests/test_ray_contract.py)."""
    values = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": cfg.scaling.worker_group_start_timeout_s}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: f"{v:g}" for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _uri(storage_path: str, path: str) -> str:
    """Ray Train reports paths inside its filesystem (`bucket/runs/x` for s3://bucket/runs/x): give them back
    their scheme, so every printed path is one the commands accept."""
    if not storage.is_uri(storage_path) or storage.is_uri(path):
        return path
    scheme = storage_path.split("://", 1)[0]
    return f"{scheme}://{path.lstrip('/')}"


def _train_func(config: dict[str, Any]) -> None:
    """The per-worker function, with the worker's logging kept to the project's lines."""
    raystart.quiet_worker()
    train_func_per_worker(config)


def _absolute_paths(cfg: Config) -> Config:
    """Workers do not share the driver's working directory: make local paths absolute."""
    overrides: dict[str, Any] = {}
    if storage.is_uri(cfg.checkpoint.storage_path) and not cfg.wandb.dir:
        # wandb writes local files only: a folder the user can find (Ray workers' working directories are Ray's
        # session folders). In a job the working directory is Ray's temporary copy, so the home directory.
        root = Path("~/eco-wandb").expanduser() if raystart.in_ray_job() else Path("outputs/wandb").absolute()
        overrides["wandb.dir"] = str(root / cfg.checkpoint.run_name)
    for key, value in (("checkpoint.storage_path", cfg.checkpoint.storage_path), ("data.manifest", cfg.data.manifest),
                       ("model.pretrained", cfg.model.pretrained), ("model.init_2d", cfg.model.init_2d),
                       ("model.init_3d", cfg.model.init_3d), ("wandb.dir", cfg.wandb.dir)):
        if value and not storage.is_uri(value) and not os.path.isabs(value):
            overrides[key] = str(Path(value).absolute())
    return cfg.replace(overrides) if overrides else cfg


def _ensure_ray(cfg: Config) -> None:
    """Join cfg.scaling.address (or RAY_ADDRESS, set by `ray job submit`), or start a local instance."""
    # On a 2-core machine give a local Ray more logical CPUs than cores (scaling.local_num_cpus), or the training
    # workers take every CPU and the decode actors never start; a running cluster is joined as it is.
    raystart.ensure_ray(num_cpus=cfg.scaling.local_num_cpus, address=cfg.scaling.address or None)
