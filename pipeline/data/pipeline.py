"""The Ray Data pipeline: manifest rows -> decoded, sampled, augmented uint8 clips for Ray Train.

    read_parquet(manifest) -> filter(split) -> [train: random_shuffle, reseeded every epoch]
        -> repartition(decode_batch_size rows per block)
        -> map_batches(_ClipDecoder, compute=ActorPoolStrategy(size=data.decode_workers),
                       num_cpus=data.decode_cpus, resources=data.decode_resources)
        -> [eval: rows in manifest order (preserve_order)]

Each decode actor holds an `IsolatedDecoder` (pipeline.data.decode): decord runs in a child process that is
killed on a timeout or dies alone on a native crash, so one bad file costs one clip, not the job. Failed rows are
dropped from the stream and recorded (path, reason, detail, epoch) in the `DataRunState` actor.

Output rows: "clip" uint8 (T, crop, crop, 3) RGB, "label" int64, "video_id" str, "clip_index" int64 (0 for
training; `clip * crops + crop` for evaluation). Conversion to float and normalisation happen on the trainer's
device (pipeline.data.transforms.normalize), so only uint8 crosses the object store.

Consuming it in Ray Train (`TorchTrainer(datasets={"train": build_train_dataset(...), ...})`):

    shard = ray.train.get_dataset_shard("train")
    for batch in shard.iter_torch_batches(batch_size=B, collate_fn=ClipCollate(), prefetch_batches=P):
        clips, labels = batch["clip"], batch["label"]   # uint8 (B,T,H,W,3) / int64 (B,), on the train device

`iter_torch_batches` cannot turn the string column "video_id" into a tensor (object arrays raise "Numpy array of
object dtype cannot be converted to a Torch Tensor"), so pass `ClipCollate()`: tensors only, moved to the device by
Ray; with `keep_video_id=True` (evaluation, to average clips per video) it adds "video_id" as a list of str and
the caller moves the tensors. (Alternative without a collate_fn: `ds.select_columns(list(TRAIN_COLUMNS))`.)
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.compute as pc

import ray
from ray.data.collate_fn import NumpyBatchCollateFn

from pipeline.config import Config
from pipeline.data import manifest as manifest_lib

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ("clip", "label")
OUTPUT_COLUMNS = ("clip", "label", "video_id", "clip_index")
RUN_STATE_NAME = "eco-data-run-state"
# Manifest columns the decode stage reads.
_DECODE_COLUMNS = ("video_id", "path", "label", "num_frames", "width", "height")


# --------------------------------------------------------------------------------------------------------------
# Run state: the epoch for TSN offsets and the record of failed rows


@ray.remote(num_cpus=0, max_concurrency=8)
class DataRunState:
    """Epoch counter and failure log shared by the trainer (rank 0 sets the epoch) and the decode actors.

    Why decode actors read the epoch once, when they start: every execution of a dataset (every epoch) starts a
    new executor, and its ActorPoolMapOperator.start() creates a new pool of actors. With
    `streaming_split`/`get_dataset_shard`, SplitCoordinator.start_epoch() is a barrier: the executor of the next
    epoch is created only after ALL n consumers asked for it (ray/data/_internal/iterator/
    stream_split_iterator.py, `_barrier` -> `_try_start_new_epoch`). Rank 0 calls `ray.get(set_epoch.remote(e))`
    before it starts iterating epoch e, so every actor of epoch e starts after set_epoch(e) and sees e, while the
    actors of epoch e-1 (possibly still decoding for a slower rank after rank 0 moved on) keep the e-1 they read.
    """

    def __init__(self):
        self._epoch = 0
        self._failures: list[dict[str, Any]] = []

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def get_epoch(self) -> int:
        return self._epoch

    def record_failures(self, failures: list[dict[str, Any]]) -> None:
        self._failures.extend(failures)

    def failures(self, epoch: int | None = None) -> list[dict[str, Any]]:
        return [f for f in self._failures if epoch is None or f["epoch"] == epoch]

    def failure_count(self, epoch: int | None = None) -> int:
        return len(self.failures(epoch))


def create_run_state(name: str | None = None) -> ray.actor.ActorHandle:
    """A new DataRunState, or (with `name`) the one of that name in this Ray namespace, created if missing."""
    manifest_lib.ensure_ray()
    if name is None:
        return DataRunState.remote()
    return DataRunState.options(name=name, get_if_exists=True).remote()


# --------------------------------------------------------------------------------------------------------------
# The decode stage


def _failure(row: dict[str, Any], reason: str, detail: str, epoch: int) -> dict[str, Any]:
    return {"path": str(row["path"]), "video_id": str(row["video_id"]), "reason": reason, "detail": detail,
            "epoch": epoch}


class _ClipDecoder:
    """Ray Data actor: decode + sample + transform; one IsolatedDecoder child process per actor."""

    def __init__(self, *, train: bool, num_segments: int, short_side: int, crop_size: int, multiscale: bool,
                 flip: bool, shuffle_frames: bool, seed: int, num_threads: int, timeout_s: float,
                 max_clips_per_process: int, run_state: ray.actor.ActorHandle, num_clips: int = 1, crops: int = 1,
                 decode_fn: Callable | None = None):
        from pipeline.data.decode import IsolatedDecoder

        self.train, self.T = train, num_segments
        self.short_side, self.crop_size = short_side, crop_size
        self.multiscale, self.flip, self.shuffle_frames = multiscale, flip, shuffle_frames
        self.seed, self.num_threads = seed, num_threads
        self.num_clips, self.crops = num_clips, crops
        self.run_state = run_state
        # Read once: see DataRunState for why this is the epoch of the execution this actor belongs to. Evaluation
        # does not sample with it, but its failures are recorded under the epoch being evaluated.
        self.epoch = ray.get(run_state.get_epoch.remote())
        kwargs = {"decode_fn": decode_fn} if decode_fn is not None else {}
        self.decoder = IsolatedDecoder(timeout_s=timeout_s, max_clips_per_process=max_clips_per_process, **kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.data.clips import clips_batch

        rows = ({k: batch[k][i] for k in _DECODE_COLUMNS} for i in range(len(batch["path"])))
        out, failures = clips_batch(rows, self._clips, self._failure, num_segments=self.T,
                                    crop_size=self.crop_size)
        if failures:
            # Blocking, so that a consumer that finished the epoch finds every failure recorded.
            ray.get(self.run_state.record_failures.remote(failures))
            log.warning("dropped %d clips: %s", len(failures),
                        ", ".join(f"{f['path']} ({f['reason']})" for f in failures))
        return out

    def _failure(self, row: dict[str, Any], e: Exception) -> dict[str, Any]:
        from pipeline.data.decode import DecodeError

        if isinstance(e, DecodeError):
            return _failure(row, e.reason, str(getattr(e, "detail", "") or e), self.epoch)
        log.error("decoding %s failed unexpectedly", row["path"], exc_info=e)
        return _failure(row, "decode_error", f"{type(e).__name__}: {e}", self.epoch)

    def _decode(self, row: dict[str, Any], indices: np.ndarray) -> np.ndarray:
        # num_frames (probed) clamps indices to frames that really decode; size saves a header read.
        return self.decoder.decode(str(row["path"]), indices, short_side=self.short_side,
                                   num_threads=self.num_threads, num_frames=int(row["num_frames"]),
                                   size=(int(row["width"]), int(row["height"])))

    def _clips(self, row: dict[str, Any]):
        from pipeline.data.clips import clip_views

        return clip_views(lambda indices: self._decode(row, indices), str(row["video_id"]), int(row["num_frames"]),
                          train=self.train, num_segments=self.T, seed=self.seed, epoch=self.epoch,
                          short_side=self.short_side, crop_size=self.crop_size, multiscale=self.multiscale,
                          flip=self.flip, shuffle_frames=self.shuffle_frames, num_clips=self.num_clips,
                          crops=self.crops)

    def __del__(self):
        decoder = getattr(self, "decoder", None)
        if decoder is not None:
            decoder.close()


# --------------------------------------------------------------------------------------------------------------
# Datasets


def _read(manifest: str | os.PathLike | pa.Table, split: str, data_format: str = "video") -> ray.data.Dataset:
    """The manifest rows of `split` (validated on the driver: missing columns or an empty split fail here)."""
    from ray.data.expressions import col, lit

    # A shard manifest is a video manifest whose `path` names a shard file, plus the video's record batch.
    columns = [*_DECODE_COLUMNS, "batch_index"] if data_format == "shards" else list(_DECODE_COLUMNS)
    if isinstance(manifest, pa.Table):
        manifest_lib.check_manifest_schema(manifest.schema, "manifest table")
        _check_format(manifest.schema, data_format, "manifest table")
        rows = manifest.filter(pc.equal(manifest.column("split"), split))
        if rows.num_rows == 0:
            raise manifest_lib.ManifestError(f"manifest table: no rows with split {split!r}")
        return ray.data.from_arrow(rows.select(columns))
    path = manifest_lib.manifest_file(manifest)
    manifest_lib.read_manifest(path, split=split)  # validation with clear messages; the rows are small
    fs, p = manifest_lib.resolve(path)
    _check_format(pq.read_schema(p, filesystem=fs), data_format, path)
    return ray.data.read_parquet(p, filesystem=fs, columns=[*columns, "split"]).filter(
        expr=col("split") == lit(split)).select_columns(columns)


def _check_format(schema: pa.Schema, data_format: str, where: str) -> None:
    if data_format == "shards" and "batch_index" not in schema.names:
        raise manifest_lib.ManifestError(
            f"{where}: data.format is 'shards' but this is a video manifest (no batch_index column); write shards "
            "with `eco prepare shards --manifest M --out DIR` and point data.manifest at DIR")


def _decoder_kwargs(cfg: Config, run_state, *, train: bool, decode_fn) -> dict[str, Any]:
    d = cfg.data
    return dict(train=train, num_segments=cfg.model.num_segments, short_side=d.short_side, crop_size=d.crop_size,
                multiscale=d.multiscale_crop, flip=d.horizontal_flip, shuffle_frames=d.shuffle_frames,
                seed=cfg.train.seed, num_threads=d.decode_threads, timeout_s=d.decode_timeout_s,
                max_clips_per_process=d.decode_max_clips_per_process, run_state=run_state, decode_fn=decode_fn)


def _decode_stage(ds: ray.data.Dataset, cfg: Config, kwargs: dict[str, Any]) -> ray.data.Dataset:
    d = cfg.data
    # A manifest file is one or a few blocks, and one block goes to one actor: cut the rows into blocks of one
    # decode batch so that every actor gets work and streaming_split can balance the consumers.
    ds = ds.repartition(target_num_rows_per_block=d.decode_batch_size)
    if d.format == "shards":
        from pipeline.data.shards import ShardClipDecoder

        decoder_cls = ShardClipDecoder  # same constructor keywords and output rows as _ClipDecoder
    else:
        decoder_cls = _ClipDecoder
    return ds.map_batches(
        decoder_cls,
        fn_constructor_kwargs=kwargs,
        batch_size=d.decode_batch_size,
        compute=ray.data.ActorPoolStrategy(size=d.decode_workers),
        num_cpus=d.decode_cpus,
        resources=dict(d.decode_resources) or None,
        runtime_env=manifest_lib.storage_runtime_env(),
    )


def build_train_dataset(cfg: Config, manifest: str | os.PathLike | pa.Table, *, run_state=None,
                        decode_fn: Callable | None = None) -> ray.data.Dataset:
    """Training clips of `cfg.data.train_split`: rows reshuffled every epoch (seeded by train.seed), TSN offsets
    from clip_rng(train.seed, epoch, video_id) with the epoch of `run_state` (default: the DataRunState named
    RUN_STATE_NAME, created if missing), multi-scale crop / flip per cfg.data.

    The trainer's rank 0 calls `ray.get(run_state.set_epoch.remote(e))` before it iterates epoch e (see
    DataRunState for why that is enough with streaming_split / get_dataset_shard). Without it every epoch samples
    with epoch 0.

    `decode_fn` replaces the child process's decode function (pipeline.data.decode.IsolatedDecoder), e.g. to
    inject faults in tests.
    """
    manifest_lib.ensure_ray()
    run_state = run_state if run_state is not None else create_run_state(RUN_STATE_NAME)
    ds = _read(manifest, cfg.data.train_split, cfg.data.format)
    # A new order every epoch (reseed_after_execution), reproducible from the seed.
    ds = ds.random_shuffle(seed=ray.data.RandomSeedConfig(seed=cfg.train.seed, reseed_after_execution=True))
    return _decode_stage(ds, cfg, _decoder_kwargs(cfg, run_state, train=True, decode_fn=decode_fn))


def build_eval_dataset(cfg: Config, manifest: str | os.PathLike | pa.Table, split: str, *, num_clips: int = 1,
                       crops: int = 1, run_state=None, decode_fn: Callable | None = None) -> ray.data.Dataset:
    """Evaluation clips of `split` in manifest order (deterministic): per video `num_clips` temporal clips
    (segment centres, shifted per clip) x `crops` spatial crops (1: centre; 3: both ends and centre of the long
    side), one row each with clip_index = clip * crops + crop."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if crops not in (1, 3):
        raise ValueError(f"crops must be 1 or 3, got {crops}")
    manifest_lib.ensure_ray()
    run_state = run_state if run_state is not None else create_run_state(RUN_STATE_NAME)
    ds = _read(manifest, split, cfg.data.format)
    kwargs = _decoder_kwargs(cfg, run_state, train=False, decode_fn=decode_fn)
    kwargs.update(num_clips=num_clips, crops=crops)
    ds = _decode_stage(ds, cfg, kwargs)
    # Rows leave in input (manifest) order even though actors finish out of order.
    ds.context.execution_options.preserve_order = True
    return ds


# --------------------------------------------------------------------------------------------------------------
# Trainer side


class ClipCollate(NumpyBatchCollateFn):
    """`iter_torch_batches(collate_fn=ClipCollate())`: "clip" uint8, "label" and "clip_index" int64 tensors; with
    keep_video_id=True also "video_id" as a list of str (tensors cannot hold strings).

    Without video ids the output is a dict of tensors, which iter_torch_batches moves to its `device` (Ray Train:
    the worker's device); with them it is not, and the caller moves the tensors (`batch["clip"].to(device)`).
    """

    def __init__(self, *, keep_video_id: bool = False):
        super().__init__()
        self.keep_video_id = keep_video_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {}
        for name in ("clip", "label", "clip_index"):
            if name in batch:
                # Zero-copy view of the (read-only) object-store buffer, as Ray's own collate does; the trainer
                # never writes into it (normalize() makes a new float tensor).
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    out[name] = torch.as_tensor(np.ascontiguousarray(batch[name]))
        if self.keep_video_id and "video_id" in batch:
            out["video_id"] = [str(v) for v in batch["video_id"]]
        return out
