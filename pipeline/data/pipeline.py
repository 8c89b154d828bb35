"""The Ray Data pipeline: manifest rows, in an order the caller gives -> decoded, sampled, augmented uint8 clips.

    rows of one split (read and validated once: `split_rows`)
        -> the caller's order (training: this rank's rows of sampling.epoch_rows(seed, epoch, ...); evaluation:
           manifest order), stamped with the epoch, cut into blocks of data.decode_batch_size rows
        -> read tasks (TaskPoolStrategy(size=decode workers), num_cpus=data.decode_cpus,
           resources=data.decode_resources), each decoding a run of blocks into clips, one output block per batch

A dataset is made for each pass (each rank's epoch, each evaluation): what it decodes is fixed when it is made, so
nothing reaches a running source from outside, and a pass that needs 20 steps' clips decodes 20 steps' clips.
Decoding runs in Ray tasks whose worker processes keep their row decoder (pipeline.data.clips) between tasks,
passes and epochs: for videos a shared `IsolatedDecoder` (pipeline.data.isolation.shared_decoder) in which decord
runs in a child process that is killed on a timeout or dies alone on a native crash, so one bad file costs one
clip, not the job. The decoders return the rows that failed; this stage drops them from the stream and records
them (path, reason, detail, epoch) in the run's `DataRunState` actor (pipeline.data.run_state).

Output rows: "clip" uint8 (T, crop, crop, 3) RGB, "label" int64, "video_id" str, "clip_index" int64 (0 for
training; `clip * crops + crop` for evaluation). Conversion to float and normalisation happen on the trainer's
device (pipeline.data.transforms.normalize), so only uint8 crosses the object store. With shards and
`data.decode_on=device` the rows carry the clip's JPEG bytes and augmentation draws instead of "clip"
(pipeline.data.jpeg_clips), and `ClipCollate(finish=clip_finish(cfg, ...), device=...)` makes the clips on the
trainer's device.

`iter_torch_batches` cannot turn the string column "video_id" into a tensor, so pass `ClipCollate()`: tensors only,
moved to the device by Ray; with `keep_video_id=True` it adds "video_id" as a list of str and the caller moves the
tensors.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
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
from pipeline.data.clips import SHARD_COLUMNS, VIDEO_COLUMNS, ShardClipDecoder, ShardJpegDecoder, VideoClipDecoder
from pipeline.data.jpeg_clips import ClipFinish, decode_clips
from pipeline.data.run_state import RUN_STATE_NAME, create_run_state, record_failures

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ("clip", "label")
OUTPUT_COLUMNS = ("clip", "label", "video_id", "clip_index")
# A video manifest also names the decode backend its probe chose (pipeline.data.manifest.OPTIONAL_COLUMNS).
_VIDEO_COLUMNS = (*VIDEO_COLUMNS, "backend")


# --------------------------------------------------------------------------------------------------------------
# The decode stage


# Per Ray worker process: the clip decoders this process has decoded with, by their settings. Ray reuses worker
# processes for tasks, so a decoder (and the shard reader's open files, and the decode child behind it) is built
# once per process and setting, not once per task, pass or epoch.
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


def _decoder_key(decoder_cls: type, kwargs: dict[str, Any]) -> str:
    """The same key for the same decoder settings in every process (functions by name: their repr holds an
    address), so every pass of a run finds the decoder the previous one built."""
    def name(v: Any) -> str:
        return f"{v.__module__}.{v.__qualname__}" if callable(v) else repr(v)

    text = repr((name(decoder_cls), sorted((k, name(v)) for k, v in kwargs.items())))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _decode_blocks(blocks: list[pa.Table], key: str, decoder_cls: type, kwargs: dict[str, Any], run_state):
    """A read task of the clip source: decode its manifest blocks one by one, yielding each decoded batch; the
    rows that failed are dropped and recorded in `run_state`."""
    from ray.data.block import BlockAccessor

    decoder = _process_decoder(key, decoder_cls, kwargs)
    kind = "train" if kwargs.get("train") else "eval"
    for block in blocks:
        batch = {name: block.column(name).to_numpy(zero_copy_only=False) for name in block.column_names}
        out, failures = decoder(batch)
        record_failures(run_state, failures)
        if run_state is not None:
            run_state.record_decoded.remote(kind, len(out["label"]))  # fire and forget: a count for the run
        if len(out["label"]):
            yield BlockAccessor.batch_to_block(out)


class _ClipSource(Datasource):
    """Decoded clips of manifest rows in the order given, each stamped with `epoch` (its TSN offsets).

    The rows are cut into blocks of `rows_per_block` (one decode batch each); a read task decodes
    `blocks_per_task` consecutive blocks with its process's decoder and yields one output block per decode batch,
    as soon as it is decoded. Several blocks per task because Ray Data leaves a decode slot idle for a moment
    between one task's end and the next task's start; decoding in the read tasks because a map_batches actor
    pool would be new processes (and decode children) for every dataset.
    """

    def __init__(self, rows: pa.Table, *, epoch: int, rows_per_block: int, blocks_per_task: int, run_state,
                 decoder_cls: type, decoder_kwargs: dict[str, Any], clip_bytes: int):
        self._rows = rows
        self._epoch = int(epoch)
        self._rows_per_block = int(rows_per_block)
        self._blocks_per_task = int(blocks_per_task)
        self._run_state = run_state
        self._decoder_cls, self._decoder_kwargs = decoder_cls, decoder_kwargs
        self._clips_per_row = int(decoder_kwargs.get("num_clips", 1)) * int(decoder_kwargs.get("crops", 1))
        self._clip_bytes = int(clip_bytes)
        self._key = _decoder_key(decoder_cls, decoder_kwargs)

    def get_name(self) -> str:
        return "EcoClips"

    def estimate_inmemory_data_size(self) -> int:
        return self._rows.num_rows * self._clips_per_row * self._clip_bytes

    def num_tasks(self) -> int:
        return max(1, -(-self._rows.num_rows // (self._rows_per_block * self._blocks_per_task)))

    def blocks(self) -> list[pa.Table]:
        """The decode batches: the rows in their order, with the "epoch" column."""
        rows = self._rows.append_column("epoch", pa.array(np.full(self._rows.num_rows, self._epoch, np.int64)))
        # combine_chunks: a read task pickles its own rows, not the whole table behind a slice.
        return [rows.slice(start, self._rows_per_block).combine_chunks()
                for start in range(0, rows.num_rows, self._rows_per_block)]

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        blocks = self.blocks()
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


def split_rows(manifest: str | os.PathLike | pa.Table, split: str, data_format: str = "video") -> pa.Table:
    """The manifest rows of `split`, decode columns only, in manifest order: what the datasets index (a training
    epoch's order and a checkpoint's data position are row numbers of this table). Validated here: missing
    columns, wrong types, an empty split, repeated video ids or a video manifest given as shards fail with the
    file named."""
    # A shard manifest is a video manifest whose `path` names a shard file, plus the video's record batch.
    columns = list(SHARD_COLUMNS) if data_format == "shards" else list(_VIDEO_COLUMNS)
    if isinstance(manifest, pa.Table):
        manifest_lib.check_manifest_schema(manifest.schema, "manifest table")
        _check_format(manifest.schema, data_format, "manifest table")
        manifest = manifest_lib.with_optional_columns(manifest)
        rows = manifest.filter(pc.equal(manifest.column("split"), split))
        if rows.num_rows == 0:
            raise manifest_lib.ManifestError(f"manifest table: no rows with split {split!r}")
        rows = rows.select(columns)
    else:
        path = manifest_lib.manifest_file(manifest)
        rows = manifest_lib.read_manifest(path, split=split)  # validation with clear messages
        if data_format != "shards":
            rows = rows.select(columns)
        else:
            fs, p = manifest_lib.resolve(path)
            _check_format(pq.read_schema(p, filesystem=fs), data_format, path)
            table = pq.read_table(p, filesystem=fs, columns=[*columns, "split"])
            rows = table.filter(pc.equal(table.column("split"), split)).select(columns)
    ids = rows.column("video_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = sorted(str(v) for v, k in Counter(ids).items() if k > 1)[:5]
        raise manifest_lib.ManifestError(f"{manifest}: split {split!r} repeats video ids ({', '.join(dup)}): a "
                                         "training data position needs one row per video id")
    return rows.combine_chunks()


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
    small share of the time) while every decode slot still gets >= 4 tasks per pass (the pass's tail, when some
    slots have run out of tasks, stays short), at most _MAX_BLOCKS_PER_TASK."""
    return max(1, min(_MAX_BLOCKS_PER_TASK, -(-blocks // (4 * decode_workers))))


_MAX_BLOCKS_PER_TASK = 16


def clip_dataset(cfg: Config, rows: pa.Table, *, train: bool, epoch: int = 0, num_clips: int = 1, crops: int = 1,
                 decode_workers: int | None = None, run_state=None, decode_fn: Callable | None = None
                 ) -> ray.data.Dataset:
    """Clips of `rows` (from `split_rows`, in the order to decode them), one pass.

    Training (`train=True`): one clip per row, TSN offsets from clip_rng(train.seed, epoch, video_id), multi-scale
    crop and flip per cfg.data; rows leave roughly in the given order (as decode tasks finish). Evaluation:
    `num_clips` temporal clips x `crops` spatial crops per row, in row order. `decode_workers` (default
    data.decode_workers) caps the decode tasks in flight; dropped rows go to `run_state` (default: the run state
    named RUN_STATE_NAME). `decode_fn` replaces the decode child's function (tests inject faults with it).
    """
    _check_views(num_clips, crops)
    raystart.ensure_ray()
    run_state = run_state if run_state is not None else create_run_state(RUN_STATE_NAME)
    d = cfg.data
    workers = max(1, int(decode_workers or d.decode_workers))
    kwargs = _decoder_kwargs(cfg, train=train, decode_fn=decode_fn)
    if not train:
        kwargs.update(num_clips=num_clips, crops=crops)
    jpeg = jpeg_mode(cfg)
    decoder_cls = ShardJpegDecoder if jpeg else ShardClipDecoder if d.format == "shards" else VideoClipDecoder
    clip_bytes = cfg.model.num_segments * d.crop_size * d.crop_size * 3
    if jpeg:
        # The clip's JPEG bytes, not its pixels: at most about a tenth of a 4:3 frame at the short side (measured:
        # 296 KiB per 16-frame clip at 256 px, q90, docs/benchmarks.md section 10; this gives 410 KiB).
        clip_bytes = cfg.model.num_segments * (d.short_side * d.short_side * 4 // 3 * 3) // 10
    source = _ClipSource(rows, epoch=epoch, rows_per_block=d.decode_batch_size,
                         blocks_per_task=_blocks_per_task(-(-rows.num_rows // d.decode_batch_size), workers),
                         run_state=run_state, decoder_cls=decoder_cls, decoder_kwargs=kwargs, clip_bytes=clip_bytes)
    remote_args: dict[str, Any] = {}
    if d.decode_resources:
        remote_args["resources"] = dict(d.decode_resources)
    if storage.storage_runtime_env():
        remote_args["runtime_env"] = storage.storage_runtime_env()
    ds = ray.data.read_datasource(source, override_num_blocks=source.num_tasks(), num_cpus=d.decode_cpus,
                                  compute=ray.data.TaskPoolStrategy(size=workers), **_remote_args(remote_args))
    # One output block per decode batch, sent when it is decoded: Ray Data otherwise coalesces a task's outputs
    # up to target_max_block_size (128 MiB by default, tens of training clips), which delays the first batch of
    # a pass and feeds the trainers in bursts. Larger blocks (evaluation: clips x crops per video) are split.
    ds.context.target_max_block_size = max(1, int(0.9 * d.decode_batch_size * clip_bytes))
    if not train:
        # Rows leave in input (manifest) order even though tasks finish out of order.
        ds.context.execution_options.preserve_order = True
    return ds


def jpeg_mode(cfg: Config) -> bool:
    """Whether the datasets of `cfg` ship JPEG bytes for the trainer's device to decode (data.decode_on=device)."""
    return cfg.data.format == "shards" and cfg.data.decode_on == "device"


def clip_finish(cfg: Config, *, train: bool, crops: int = 1) -> ClipFinish | None:
    """What the trainer (or a model actor) does to this mode's rows to make clips; None when they are clips."""
    if not jpeg_mode(cfg):
        return None
    return ClipFinish(train=train, crop_size=cfg.data.crop_size, short_side=cfg.data.short_side, crops=crops)


def _remote_args(args: dict[str, Any]) -> dict[str, Any]:
    """`resources` / `runtime_env` for `read_datasource`: named parameters where Ray has them (2.60 deprecates
    `ray_remote_args` and warns on every dataset), `ray_remote_args` on the older minors of the supported range."""
    if not args:
        return {}
    named = inspect.signature(ray.data.read_datasource).parameters
    if all(k in named for k in args):
        return args
    return {"ray_remote_args": args}


def _check_views(num_clips: int, crops: int) -> None:
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if crops not in (1, 3):
        raise ValueError(f"crops must be 1 or 3, got {crops}")


def build_train_dataset(cfg: Config, manifest: str | os.PathLike | pa.Table, *, epoch: int = 0, run_state=None,
                        decode_fn: Callable | None = None) -> ray.data.Dataset:
    """Training clips of the whole `cfg.data.train_split` for one epoch, in sampling.epoch_order(train.seed,
    epoch) (one consumer: benchmarks, tools; training itself gives each rank its rows, pipeline.training)."""
    from pipeline.data.sampling import epoch_order

    rows = split_rows(manifest, cfg.data.train_split, cfg.data.format)
    return clip_dataset(cfg, rows.take(epoch_order(rows.num_rows, cfg.train.seed, epoch)), train=True, epoch=epoch,
                        run_state=run_state, decode_fn=decode_fn)


def build_eval_dataset(cfg: Config, manifest: str | os.PathLike | pa.Table, split: str, *, num_clips: int = 1,
                       crops: int = 1, run_state=None, decode_fn: Callable | None = None) -> ray.data.Dataset:
    """Evaluation clips of `split` in manifest order (deterministic): per video `num_clips` temporal clips
    (segment centres, shifted per clip) x `crops` spatial crops (1: centre; 3: both ends and centre of the long
    side), one row each with clip_index = clip * crops + crop."""
    _check_views(num_clips, crops)
    rows = split_rows(manifest, split, cfg.data.format)
    return clip_dataset(cfg, rows, train=False, num_clips=num_clips, crops=crops, run_state=run_state,
                        decode_fn=decode_fn)


# --------------------------------------------------------------------------------------------------------------
# Trainer side


class ClipCollate(NumpyBatchCollateFn):
    """`iter_torch_batches(collate_fn=ClipCollate())`: "clip" uint8, "label" and "clip_index" int64 tensors; with
    keep_video_id=True also "video_id" as a list of str (tensors cannot hold strings).

    Without video ids the output is a dict of tensors, which iter_torch_batches moves to its `device` (Ray Train:
    the worker's device); with them it is not, and the caller moves the tensors (`batch["clip"].to(device)`).
    """

    def __init__(self, *, keep_video_id: bool = False, finish: ClipFinish | None = None, device: Any = None):
        super().__init__()
        self.keep_video_id = keep_video_id
        self.finish, self.device = finish, device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {}
        if self.finish is not None:
            # data.decode_on=device: the JPEG bytes become clips on the trainer's device here, in Ray Data's
            # batch-formatting threads (prefetch_batches > 0), so the next batch decodes while the step runs.
            out["clip"] = decode_clips(batch, self.finish, device=self.device or "cpu")
        for name in ("clip", "label", "clip_index"):
            if name in batch and name not in out:
                # Zero-copy view of the (read-only) object-store buffer, as Ray's own collate does; the trainer
                # never writes into it (normalize() makes a new float tensor).
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    out[name] = torch.as_tensor(np.ascontiguousarray(batch[name]))
        if self.keep_video_id and "video_id" in batch:
            out["video_id"] = [str(v) for v in batch["video_id"]]
        return out

