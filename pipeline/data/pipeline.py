"""The Ray Data pipeline: manifest rows -> decoded, sampled, augmented uint8 clips for Ray Train.

    manifest split rows (read and validated on the driver)
        -> _ClipSource: at the start of each execution (each epoch) reads the epoch from DataRunState, orders
           the rows [train: sampling.epoch_order(train.seed, epoch); eval: manifest order], stamps the epoch on
           them and cuts blocks of data.decode_batch_size rows
        -> read tasks (TaskPoolStrategy(size=data.decode_workers), num_cpus=data.decode_cpus,
           resources=data.decode_resources), each decoding a run of blocks into clips, one output block per batch
        -> [eval: rows in manifest order (preserve_order)]

The decoding runs in Ray tasks whose worker processes keep their row decoder (pipeline.data.clips) between tasks
and epochs: for videos a shared `IsolatedDecoder` (pipeline.data.isolation.shared_decoder) in which decord runs in
a child process that is killed on a timeout or dies alone on a native crash, so one bad file costs one clip, not
the job. (An actor pool would be restarted by Ray Data at every epoch, and every actor would start a new decode
child: seconds per epoch in which the trainers wait.) The decoders return the rows that failed; this stage drops
them from the stream and records them (path, reason, detail, epoch) in the `DataRunState` actor
(pipeline.data.run_state).

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

import functools
import logging
import os
import uuid
import warnings
from collections import Counter, OrderedDict
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.compute as pc

import ray
from ray.data.block import BlockMetadata
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.data.datasource import Datasource, ReadTask

from pipeline import raystart, storage
from pipeline.config import Config
from pipeline.data import manifest as manifest_lib
from pipeline.data.clips import SHARD_COLUMNS, VIDEO_COLUMNS, ShardClipDecoder, VideoClipDecoder
from pipeline.data.run_state import RUN_STATE_NAME, create_run_state, record_failures

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ("clip", "label")
OUTPUT_COLUMNS = ("clip", "label", "video_id", "clip_index")
# A video manifest also names the decode backend its probe chose (pipeline.data.manifest.OPTIONAL_COLUMNS).
_VIDEO_COLUMNS = (*VIDEO_COLUMNS, "backend")


# --------------------------------------------------------------------------------------------------------------
# The decode stage


# Per Ray worker process: the clip decoders of the datasets this process has decoded for, by dataset. Ray reuses
# worker processes for tasks, so a decoder (and the shard reader's open files, and the decode child behind it)
# is built once per process, not once per task or epoch.
_PROCESS_DECODERS: "OrderedDict[str, Any]" = OrderedDict()
_PROCESS_DECODERS_MAX = 4


def _process_decoder(key: str, decoder_cls: type, kwargs: dict[str, Any]):
    decoder = _PROCESS_DECODERS.get(key)
    if decoder is None:
        while len(_PROCESS_DECODERS) >= _PROCESS_DECODERS_MAX:
            _PROCESS_DECODERS.popitem(last=False)
        decoder = _PROCESS_DECODERS[key] = decoder_cls(**kwargs)
    _PROCESS_DECODERS.move_to_end(key)
    return decoder


def _decode_blocks(blocks: list[pa.Table], key: str, decoder_cls: type, kwargs: dict[str, Any], run_state):
    """A read task of the clip source: decode its manifest blocks one by one, yielding each decoded batch; the
    rows that failed are dropped and recorded in `run_state`."""
    from ray.data.block import BlockAccessor

    decoder = _process_decoder(key, decoder_cls, kwargs)
    for block in blocks:
        batch = {name: block.column(name).to_numpy(zero_copy_only=False) for name in block.column_names}
        out, failures = decoder(batch)
        record_failures(run_state, failures)
        if len(out["label"]):
            yield BlockAccessor.batch_to_block(out)


# --------------------------------------------------------------------------------------------------------------
# The source: one split's manifest rows -> decoded clips, in the epoch's order


class _ClipSource(Datasource):
    """Decoded clips of one split's manifest rows (read and validated on the driver: a manifest is small, even
    Kinetics' 240k rows).

    At the start of every execution (every epoch) `epoch_blocks` reads the epoch from the DataRunState, orders the
    rows (training: the permutation sampling.epoch_order(seed, epoch), the same after a resume; evaluation:
    manifest order), adds the "epoch" column and cuts blocks of `rows_per_block` rows: one decode batch each.
    Each read task decodes `blocks_per_task` consecutive blocks with its process's decoder (see _process_decoder)
    and yields one output block per decode batch, as soon as it is decoded.

    Why decoding happens in the read tasks: the alternatives cost the trainers time at every epoch. A
    map_batches actor pool is restarted by Ray Data for every execution: new processes importing torch and the
    project, and new decode children (seconds); a map_batches task stage fused behind a read gets the read's blocks
    coalesced into one batch. Several blocks per task because Ray Data leaves a decode slot idle for a few
    hundred ms between one task's end and the next task's start; this replaces a Parquet read + filter +
    all-to-all random_shuffle + repartition per epoch as well.
    """

    def __init__(self, rows: pa.Table, *, rows_per_block: int, blocks_per_task: int, run_state,
                 shuffle_seed: int | None, decoder_cls: type, decoder_kwargs: dict[str, Any], clip_bytes: int):
        self._rows = rows
        self._rows_per_block = int(rows_per_block)
        self._blocks_per_task = int(blocks_per_task)
        self._run_state = run_state
        self._shuffle_seed = shuffle_seed
        self._decoder_cls, self._decoder_kwargs = decoder_cls, decoder_kwargs
        self._clips_per_row = int(decoder_kwargs.get("num_clips", 1)) * int(decoder_kwargs.get("crops", 1))
        self._clip_bytes = int(clip_bytes)
        # Identifies this dataset's decoder in the worker processes' caches.
        self._key = uuid.uuid4().hex

    def get_name(self) -> str:
        return "EcoClips"

    def estimate_inmemory_data_size(self) -> int:
        return self._rows.num_rows * self._clips_per_row * self._clip_bytes

    def num_tasks(self) -> int:
        return -(-self._rows.num_rows // (self._rows_per_block * self._blocks_per_task))

    def epoch_blocks(self) -> list[pa.Table]:
        """The manifest blocks of the execution starting now: rows in the epoch's order, stamped with it."""
        from pipeline.data.sampling import epoch_order, exclude_rows

        epoch = int(ray.get(self._run_state.get_epoch.remote()))
        n = self._rows.num_rows
        order = (epoch_order(n, self._shuffle_seed, epoch) if self._shuffle_seed is not None
                 else np.arange(n, dtype=np.int64))
        if self._shuffle_seed is not None:
            # A training epoch resumed from a mid-epoch checkpoint: only the rows not yet trained on, in order.
            trained = ray.get(self._run_state.get_trained.remote(epoch))
            if trained is not None:
                order = exclude_rows(order, np.unpackbits(np.asarray(trained, np.uint8), count=n).astype(bool))
        blocks = []
        for start in range(0, n, self._rows_per_block):
            # take() copies: a read task pickles its own rows, not the whole table behind a slice.
            block = self._rows.take(order[start:start + self._rows_per_block])
            blocks.append(block.append_column("epoch", pa.array(np.full(block.num_rows, epoch, np.int64))))
        return blocks

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        blocks = self.epoch_blocks()
        tasks = []
        for i in range(0, len(blocks), self._blocks_per_task):
            group = blocks[i:i + self._blocks_per_task]
            rows = sum(b.num_rows for b in group)
            # num_rows unknown: a failed video yields no clip, an evaluation row yields clips x crops.
            meta = BlockMetadata(num_rows=None, size_bytes=rows * self._clips_per_row * self._clip_bytes,
                                 input_files=None, exec_stats=None)
            tasks.append(ReadTask(functools.partial(_decode_blocks, group, self._key, self._decoder_cls,
                                                    self._decoder_kwargs, self._run_state), meta,
                                  per_task_row_limit=per_task_row_limit))
        return tasks


# --------------------------------------------------------------------------------------------------------------
# Datasets


def _split_rows(manifest: str | os.PathLike | pa.Table, split: str, data_format: str = "video") -> pa.Table:
    """The manifest rows of `split`, decode columns only (validated here: missing columns, wrong types, an empty
    split or a video manifest given as shards fail on the driver with the file named)."""
    # A shard manifest is a video manifest whose `path` names a shard file, plus the video's record batch.
    columns = list(SHARD_COLUMNS) if data_format == "shards" else list(_VIDEO_COLUMNS)
    if isinstance(manifest, pa.Table):
        manifest_lib.check_manifest_schema(manifest.schema, "manifest table")
        _check_format(manifest.schema, data_format, "manifest table")
        manifest = manifest_lib.with_optional_columns(manifest)
        rows = manifest.filter(pc.equal(manifest.column("split"), split))
        if rows.num_rows == 0:
            raise manifest_lib.ManifestError(f"manifest table: no rows with split {split!r}")
        return rows.select(columns)
    path = manifest_lib.manifest_file(manifest)
    rows = manifest_lib.read_manifest(path, split=split)  # validation with clear messages
    if data_format != "shards":
        return rows.select(columns)
    fs, p = manifest_lib.resolve(path)
    _check_format(pq.read_schema(p, filesystem=fs), data_format, path)
    table = pq.read_table(p, filesystem=fs, columns=[*columns, "split"])
    return table.filter(pc.equal(table.column("split"), split)).select(columns)


def split_video_ids(manifest: str | os.PathLike | pa.Table, split: str, data_format: str = "video") -> list[str]:
    """The video ids of `split` in the order the datasets index its rows (the data position of a mid-epoch
    checkpoint is a bitmap over this order; pipeline.training.elastic)."""
    ids = [str(v) for v in _split_rows(manifest, split, data_format).column("video_id").to_pylist()]
    if len(set(ids)) != len(ids):
        dup = sorted(v for v, k in Counter(ids).items() if k > 1)[:5]
        raise manifest_lib.ManifestError(f"{manifest}: split {split!r} repeats video ids ({', '.join(dup)}): the "
                                         "training data position needs one row per video id")
    return ids


def _check_format(schema: pa.Schema, data_format: str, where: str) -> None:
    if data_format == "shards" and "batch_index" not in schema.names:
        raise manifest_lib.ManifestError(
            f"{where}: data.format is 'shards' but this is a video manifest (no batch_index column); write shards "
            "with `eco prepare shards --manifest M --out DIR` and point data.manifest at DIR")


def _decoder_kwargs(cfg: Config, *, train: bool, decode_fn) -> dict[str, Any]:
    d = cfg.data
    return dict(train=train, num_segments=cfg.model.num_segments, short_side=d.short_side, crop_size=d.crop_size,
                multiscale=d.multiscale_crop, flip=d.horizontal_flip, shuffle_frames=d.shuffle_frames,
                seed=cfg.train.seed, num_threads=d.decode_threads, timeout_s=d.decode_timeout_s,
                max_clips_per_process=d.decode_max_clips_per_process, decode_fn=decode_fn,
                **({"backend": d.decoder} if d.format == "video" else {}))


def _blocks_per_task(blocks: int, decode_workers: int) -> int:
    """Decode batches per read task: as many as possible (the idle gap between tasks on a decode slot is then a
    small share of the time) while every decode slot still gets >= 4 tasks per epoch (the epoch's tail, when some
    slots have run out of tasks, stays short), at most _MAX_BLOCKS_PER_TASK."""
    return max(1, min(_MAX_BLOCKS_PER_TASK, -(-blocks // (4 * decode_workers))))


_MAX_BLOCKS_PER_TASK = 16


def _dataset(cfg: Config, rows: pa.Table, kwargs: dict[str, Any], *, run_state, shuffle: bool) -> ray.data.Dataset:
    d = cfg.data
    # Same constructor keywords and output rows for both.
    decoder_cls = ShardClipDecoder if d.format == "shards" else VideoClipDecoder
    clip_bytes = cfg.model.num_segments * d.crop_size * d.crop_size * 3
    source = _ClipSource(rows, rows_per_block=d.decode_batch_size,
                         blocks_per_task=_blocks_per_task(-(-rows.num_rows // d.decode_batch_size), d.decode_workers),
                         run_state=run_state, shuffle_seed=cfg.train.seed if shuffle else None,
                         decoder_cls=decoder_cls, decoder_kwargs=kwargs, clip_bytes=clip_bytes)
    ds = ray.data.read_datasource(source, override_num_blocks=source.num_tasks(), num_cpus=d.decode_cpus,
                                  resources=dict(d.decode_resources) or None,
                                  runtime_env=storage.storage_runtime_env(),
                                  compute=ray.data.TaskPoolStrategy(size=d.decode_workers))
    # One output block per decode batch, sent when it is decoded: Ray Data otherwise coalesces a task's outputs
    # up to target_max_block_size (128 MiB by default, tens of training clips), which delays the first batch of
    # an epoch and feeds the trainers in bursts. Larger blocks (evaluation: clips x crops per video) are split.
    ds.context.target_max_block_size = max(1, int(0.9 * d.decode_batch_size * clip_bytes))
    return ds


def build_train_dataset(cfg: Config, manifest: str | os.PathLike | pa.Table, *, run_state=None,
                        decode_fn: Callable | None = None) -> ray.data.Dataset:
    """Training clips of `cfg.data.train_split`: rows in a new order every epoch (sampling.epoch_order with
    train.seed and the epoch), TSN offsets from clip_rng(train.seed, epoch, video_id), multi-scale crop / flip per
    cfg.data. The epoch is the one in `run_state` (default: the DataRunState named RUN_STATE_NAME, created if
    missing) when the epoch's execution starts.

    The trainer's rank 0 calls `ray.get(run_state.set_epoch.remote(e))` before it iterates epoch e (see
    DataRunState for why that is enough with streaming_split / get_dataset_shard). Without it every epoch samples
    with epoch 0.

    `decode_fn` replaces the child process's decode function (pipeline.data.isolation.IsolatedDecoder), e.g. to
    inject faults in tests.
    """
    raystart.ensure_ray()
    run_state = run_state if run_state is not None else create_run_state(RUN_STATE_NAME)
    rows = _split_rows(manifest, cfg.data.train_split, cfg.data.format)
    return _dataset(cfg, rows, _decoder_kwargs(cfg, train=True, decode_fn=decode_fn),
                    run_state=run_state, shuffle=True)


def build_eval_dataset(cfg: Config, manifest: str | os.PathLike | pa.Table, split: str, *, num_clips: int = 1,
                       crops: int = 1, run_state=None, decode_fn: Callable | None = None) -> ray.data.Dataset:
    """Evaluation clips of `split` in manifest order (deterministic): per video `num_clips` temporal clips
    (segment centres, shifted per clip) x `crops` spatial crops (1: centre; 3: both ends and centre of the long
    side), one row each with clip_index = clip * crops + crop."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if crops not in (1, 3):
        raise ValueError(f"crops must be 1 or 3, got {crops}")
    raystart.ensure_ray()
    run_state = run_state if run_state is not None else create_run_state(RUN_STATE_NAME)
    rows = _split_rows(manifest, split, cfg.data.format)
    kwargs = _decoder_kwargs(cfg, train=False, decode_fn=decode_fn)
    kwargs.update(num_clips=num_clips, crops=crops)
    ds = _dataset(cfg, rows, kwargs, run_state=run_state, shuffle=False)
    # Rows leave in input (manifest) order even though tasks finish out of order.
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

