"""Batch inference over a manifest with Ray Data, resumable, at the scale of millions of videos.

    read_parquet(manifest) -> drop rows already in `out` -> decode + eval transform (CPU actor pool, each actor
    holding a killable decoder process) -> ECO on an actor pool (1 GPU per actor when the cluster has GPUs) ->
    Parquet part files, written as blocks complete.

Output layout (a directory, local or any URI pyarrow understands):
    OUT/part-<hash>.parquet          predictions: path, video_id, label, prob, labels, label_ids, probs[, feature]
    OUT/_errors/part-<hash>.parquet  bad videos: path, video_id, reason, detail
pyarrow, pandas and Ray read OUT as one table of predictions (names starting with "_" are ignored). A part is
named by a hash of the video ids it holds, so a retried block rewrites the same file instead of adding a copy, and
every part appears atomically (temp file + rename locally; object stores publish a PUT whole). Re-running with the
same OUT reads the finished ids (predictions and recorded errors) and skips them, so an interrupted run loses at
most the parts in flight. Nothing is collected on the driver except per-part counts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import raystart, storage
from pipeline.inference.actors import ModelActor, add_model_stage, model_pool
from pipeline.progress import Progress

log = logging.getLogger(__name__)

ERRORS_DIR = "_errors"
ERROR_SCHEMA = pa.schema([("path", pa.string()), ("video_id", pa.string()), ("reason", pa.string()),
                          ("detail", pa.string())])


@dataclass(frozen=True)
class BatchSummary:
    out: str
    manifest_rows: int
    skipped: int  # rows finished by earlier runs (predictions and recorded errors)
    predicted: int  # rows this run wrote
    failed: int  # bad videos this run recorded in OUT/_errors
    parts: int
    seconds: float
    complete: bool  # False when stopped early (max_parts)

    def describe(self) -> str:
        rate = self.predicted / self.seconds if self.seconds > 0 else 0.0
        state = "done" if self.complete else "stopped early (re-run the same command to resume)"
        return (f"batch inference {state}: {self.predicted} predicted, {self.failed} failed, {self.skipped} already "
                f"in the output (manifest: {self.manifest_rows} rows) in {self.seconds:.1f}s ({rate:.2f} videos/s)\n"
                f"  predictions: {self.out}\n  errors:      {self.out.rstrip('/')}/{ERRORS_DIR}")


def batch_predict(manifest: str | Path, checkpoint: str | Path, out: str | Path, *, top_k: int = 5,
                  features: bool = False, actors: int | None = None, num_cpus: int | None = None,
                  batch_size: int = 16, rows_per_part: int = 128, decode_workers: int | None = None,
                  decode_batch_size: int = 4,
                  decode_timeout_s: float = 60.0, retry_errors: bool = False,
                  max_parts: int | None = None) -> BatchSummary:
    """Predict every video of `manifest` (a manifest Parquet file or the directory `eco prepare` wrote) into `out`.

    `actors` model replicas (default: one per GPU in the cluster, else 1 on CPU); `num_cpus` sizes an auto-started
    local Ray. Already finished rows in `out` are skipped (`retry_errors=True` retries recorded bad videos).
    `rows_per_part` bounds the rows of one output part (and what an interruption can lose). `max_parts` stops
    after that many parts were written (an interruption, for tests and smoke runs).
    """
    import ray

    from pipeline.inference.predictor import read_checkpoint_info

    start = time.perf_counter()
    # Ray schedules by logical CPUs, not load: a local instance needs room for the model actors, a decode actor
    # and the read/write tasks even on a 2-core machine (a running cluster is joined as it is).
    raystart.ensure_ray(num_cpus=num_cpus or max(os.cpu_count() or 1, (actors or 1) + 2))
    # Workers need paths that do not depend on their working directory.
    checkpoint, out = _absolute(checkpoint), _absolute(out)
    info = read_checkpoint_info(checkpoint)
    manifest_path = _absolute(_manifest_file(manifest))
    fs, root = _filesystem(out)
    fs.create_dir(f"{root}/{ERRORS_DIR}", recursive=True)
    _remove_stale_temp_files(fs, root)
    done = _finished_ids(fs, root, include_errors=not retry_errors)
    names = _dataset_columns(manifest_path)
    if "path" not in names:
        raise ValueError(f"{manifest_path}: manifest has no 'path' column (columns: {', '.join(names)})")
    columns = [c for c in ("video_id", "path", "num_frames", "width", "height") if c in names]
    manifest_rows, pending = _count_pending(manifest_path, "video_id" if "video_id" in names else "path", done)
    if pending == 0:
        log.info("batch inference: all %d manifest rows are already in %s", manifest_rows, out)
        return BatchSummary(out=out, manifest_rows=manifest_rows, skipped=manifest_rows, predicted=0, failed=0,
                            parts=0, seconds=time.perf_counter() - start, complete=True)

    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors, model_resources, kind = model_pool(actors)
    needed = (0 if gpus else actors) + 2
    if cpus < needed:
        # Better a clear error than a pipeline that waits forever for an actor it cannot place.
        raise ValueError(f"batch inference with {actors} CPU model actor(s) needs at least {needed} logical CPUs "
                         f"(the model actors, one decode actor, the read/write tasks); the Ray cluster has {cpus}: "
                         f"use fewer --actors or start Ray with more CPUs (ray start --num-cpus / num_cpus=)")
    if decode_workers is None:
        # Leave a CPU for the driver-side operators; on CPU-only clusters the model actors hold one CPU each.
        decode_workers = max(1, cpus - (0 if gpus else actors) - 1)
    log.info("batch inference: %d manifest rows, %d to do, %d model actors (%s), up to %d decode actors",
             manifest_rows, pending, actors, kind, decode_workers)

    ds = ray.data.read_parquet(manifest_path, columns=columns)
    ds = ds.map_batches(_select_pending, fn_kwargs={"done": done}, batch_format="pyarrow", batch_size=4096)
    # Small blocks, split as they stream by: a manifest file is one block, which would feed a single decode actor
    # and reach the writer only at its end. Each block becomes (at most) one output part.
    ds = ds.repartition(target_num_rows_per_block=rows_per_part, strict=True)
    ds = ds.map_batches(
        _DecodeClips,
        fn_constructor_kwargs={"preprocessing": info.preprocessing, "timeout_s": decode_timeout_s},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=decode_workers),
        batch_size=decode_batch_size,
        batch_format="numpy",
        num_cpus=1,
    )
    ds = add_model_stage(ds, _Classify, actors=actors, resources=model_resources, batch_size=batch_size,
                         checkpoint=checkpoint, top_k=top_k, features=features)
    ds = ds.map_batches(_write_part, fn_kwargs={"out": out}, batch_format="pyarrow", batch_size=None,
                        num_cpus=0.25)

    predicted = failed = parts = 0
    complete = True
    batches = ds.iter_batches(batch_size=None, batch_format="pyarrow")
    try:
        with Progress(pending, desc="predict", unit="videos") as progress:
            for summary in batches:
                part_predicted = int(pc.sum(summary["predicted"]).as_py() or 0)
                part_failed = int(pc.sum(summary["failed"]).as_py() or 0)
                predicted, failed, parts = predicted + part_predicted, failed + part_failed, parts + summary.num_rows
                progress.update(part_predicted + part_failed)
                if max_parts is not None and parts >= max_parts:
                    complete = False
                    break
    finally:
        # Stop Ray Data's execution now rather than when the iterator is garbage-collected: the pipeline runs
        # ahead of this loop and would go on writing parts after an early stop. (A part whose task was already
        # running may still land: parts appear atomically, and a resume skips its rows.)
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    return BatchSummary(out=out, manifest_rows=manifest_rows, skipped=manifest_rows - pending, predicted=predicted,
                        failed=failed, parts=parts, seconds=time.perf_counter() - start, complete=complete)


def read_predictions(out: str | Path, *, errors: bool = False) -> pa.Table:
    """The whole output table (predictions, or the recorded errors): for inspection and tests, not for millions."""
    fs, root = _filesystem(_absolute(out))
    files = _part_files(fs, f"{root}/{ERRORS_DIR}" if errors else root)
    tables = [pq.read_table(f, filesystem=fs) for f in files]
    if not tables:
        return ERROR_SCHEMA.empty_table() if errors else pa.table({"path": pa.array([], pa.string()),
                                                                    "video_id": pa.array([], pa.string())})
    return pa.concat_tables(tables, promote_options="default")


def batch_main(args) -> int:
    """`eco predict --manifest M --checkpoint C --out DIR [--top-k K] [--features] [--actors N]`: prints a summary.

    Bad videos are recorded in OUT/_errors and do not fail the run (exit 0).
    """
    import json

    if not args.out:
        raise ValueError("eco predict --manifest needs --out DIR (the Parquet output directory)")
    summary = batch_predict(args.manifest, args.checkpoint, args.out, top_k=args.top_k, features=args.features,
                            actors=args.actors)
    if args.json:
        print(json.dumps(summary.__dict__, indent=2))
    else:
        print(summary.describe())
    return 0


# -- Ray Data stages (module-level so workers import them by name) -------------------------------------------------


def _select_pending(batch: pa.Table, *, done: pa.Array) -> pa.Table:
    if "video_id" not in batch.column_names:
        # Plain tables of paths: the path is the id.
        batch = batch.append_column("video_id", batch["path"])
    if len(done) == 0:
        return batch
    return batch.filter(pc.invert(pc.is_in(batch["video_id"], value_set=done)))


class _DecodeClips:
    """Decode actor: the evaluation clip of each video, or the reason it failed (a row either way)."""

    def __init__(self, preprocessing, timeout_s: float):
        from pipeline.data.isolation import IsolatedDecoder

        self.prep = preprocessing
        # Persistent killable child process: a decord hang or native crash costs one file, not the actor.
        self.decoder = IsolatedDecoder(timeout_s=timeout_s, max_clips_per_process=2000)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.data.clips import eval_clip
        from pipeline.data.decode import DecodeError

        p = self.prep
        n = len(batch["path"])
        clips = np.zeros((n, p.num_segments, p.crop_size, p.crop_size, 3), np.uint8)
        reasons, details = [""] * n, [""] * n
        frame_counts, widths, heights = batch.get("num_frames"), batch.get("width"), batch.get("height")
        backends = batch.get("backend")  # the probe's decode backend, when the input is a manifest that has it
        for i, path in enumerate(batch["path"]):
            path = str(path)
            try:
                # The manifest's probed facts save a probe (a full decode at 64x64) per video.
                num_frames = int(frame_counts[i]) if frame_counts is not None else 0
                size = (int(widths[i]), int(heights[i])) if widths is not None and heights is not None else None
                backend = str(backends[i]) if backends is not None and backends[i] else "auto"
                if num_frames <= 0 or not size or min(size) <= 0:
                    info = self.decoder.probe(path)
                    num_frames, size, backend = info.num_frames, (info.width, info.height), info.backend
                clips[i] = eval_clip(
                    lambda indices: self.decoder.decode(path, indices, short_side=p.short_side,
                                                        num_frames=num_frames, size=size, backend=backend),
                    num_frames, num_segments=p.num_segments, short_side=p.short_side, crop_size=p.crop_size)
            except DecodeError as e:
                reasons[i], details[i] = e.reason, str(getattr(e, "detail", "") or e)
        return {"path": batch["path"], "video_id": batch["video_id"], "clip": clips,
                "reason": np.array(reasons, dtype=object), "detail": np.array(details, dtype=object)}

    def __del__(self):
        decoder = getattr(self, "decoder", None)
        if decoder is not None:
            decoder.close()


class _Classify(ModelActor):
    """Model actor (pipeline.inference.actors): turns clips into rows of top-k labels (and features)."""

    def __init__(self, checkpoint: str, top_k: int, features: bool):
        super().__init__(checkpoint)
        self.top_k = top_k
        self.features = features

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        ok = np.array([not r for r in batch["reason"]], dtype=bool)
        n = len(ok)
        names = self.predictor.label_names
        labels: list[Any] = [None] * n
        ids: list[Any] = [None] * n
        probs: list[Any] = [None] * n
        feats: list[Any] = [None] * n
        if ok.any():
            p, f = self.predictor.predict_clips(batch["clip"][ok], features=self.features)
            for row, (top_ids, top_probs) in zip(np.flatnonzero(ok), self.predictor.top_k(p, self.top_k)):
                ids[row], probs[row] = list(top_ids), list(top_probs)
                labels[row] = [names[i] for i in top_ids]
            if f is not None:
                for row, vector in zip(np.flatnonzero(ok), f):
                    feats[row] = vector.tolist()
        columns = {
            "path": pa.array([str(x) for x in batch["path"]], pa.string()),
            "video_id": pa.array([str(x) for x in batch["video_id"]], pa.string()),
            "label": pa.array([x[0] if x else None for x in labels], pa.string()),
            "prob": pa.array([x[0] if x else None for x in probs], pa.float32()),
            "labels": pa.array(labels, pa.list_(pa.string())),
            "label_ids": pa.array(ids, pa.list_(pa.int32())),
            "probs": pa.array(probs, pa.list_(pa.float32())),
            "reason": pa.array([r or None for r in batch["reason"]], pa.string()),
            "detail": pa.array([d or None for d in batch["detail"]], pa.string()),
        }
        if self.features:
            dim = int(self.predictor.model.feature_dim)
            columns["feature"] = pa.array(feats, pa.list_(pa.float32(), dim))
        return pa.table(columns)


def _write_part(block: pa.Table, *, out: str) -> pa.Table:
    fs, root = _filesystem(out)
    # Named by its content: a retried block overwrites its own part instead of duplicating rows.
    ids = sorted(block["video_id"].to_pylist())
    name = "part-" + hashlib.blake2b("\n".join(ids).encode(), digest_size=12).hexdigest() + ".parquet"
    failed_mask = pc.is_valid(block["reason"])
    preds = block.filter(pc.invert(failed_mask)).drop_columns(["reason", "detail"])
    errors = block.filter(failed_mask).select(ERROR_SCHEMA.names).cast(ERROR_SCHEMA)
    if preds.num_rows:
        _write_atomically(preds, fs, f"{root}/{name}")
    if errors.num_rows:
        _write_atomically(errors, fs, f"{root}/{ERRORS_DIR}/{name}")
    return pa.table({"part": [name], "predicted": [preds.num_rows], "failed": [errors.num_rows]})


# -- storage helpers ------------------------------------------------------------------------------------------------


def _absolute(path: str | Path) -> str:
    """URIs as they are; local paths made absolute."""
    return storage.absolute(path)


def _filesystem(out: str) -> tuple[pafs.FileSystem, str]:
    return storage.resolve(out)


def _write_atomically(table: pa.Table, fs: pafs.FileSystem, path: str) -> None:
    if isinstance(fs, pafs.LocalFileSystem):
        directory, base = path.rsplit("/", 1)
        tmp = f"{directory}/.tmp-{base}-{uuid.uuid4().hex}"
        pq.write_table(table, tmp, filesystem=fs)
        fs.move(tmp, path)
    else:
        pq.write_table(table, path, filesystem=fs)


def _part_files(fs: pafs.FileSystem, directory: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.startswith("part-")
                  and i.base_name.endswith(".parquet"))


def _remove_stale_temp_files(fs: pafs.FileSystem, root: str) -> None:
    for directory in (root, f"{root}/{ERRORS_DIR}"):
        for info in fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True)):
            if info.type == pafs.FileType.File and info.base_name.startswith(".tmp-"):
                log.info("removing %s left by an interrupted run", info.path)
                fs.delete_file(info.path)


def _finished_ids(fs: pafs.FileSystem, root: str, *, include_errors: bool) -> pa.Array:
    """Unique video ids already in the output, as one compact Arrow array (tens of MB for millions of ids)."""
    directories = [root] + ([f"{root}/{ERRORS_DIR}"] if include_errors else [])
    chunks = []
    for directory in directories:
        for path in _part_files(fs, directory):
            try:
                chunks.append(pq.read_table(path, columns=["video_id"], filesystem=fs)["video_id"])
            except (pa.ArrowInvalid, OSError) as e:
                # Only possible for a part written outside this module (ours appear atomically); redo its rows.
                log.warning("%s: unreadable part (%s); removing it so its rows are predicted again", path, e)
                fs.delete_file(path)
    if not chunks:
        return pa.array([], pa.string())
    return pc.unique(pa.chunked_array(chunks, pa.string()))


def _manifest_file(manifest: str | Path) -> str:
    # A directory written by `eco prepare`, local or on object storage, holds labels.json and other files beside
    # the manifest: read its manifest.parquet only.
    manifest = storage.absolute(manifest)
    if storage.is_dir(manifest) and storage.is_file(storage.join(manifest, "manifest.parquet")):
        return storage.join(manifest, "manifest.parquet")
    if not storage.exists(manifest):
        raise FileNotFoundError(f"manifest {manifest} does not exist (expected a Parquet file or a directory "
                                f"written by `eco prepare` with manifest.parquet)")
    return manifest


def _dataset_columns(path: str) -> list[str]:
    import pyarrow.dataset as pds

    return pds.dataset(path, format="parquet").schema.names


def _count_pending(path: str, id_column: str, done: pa.Array) -> tuple[int, int]:
    """(manifest rows, rows whose id is not in `done`), streaming the id column in record batches."""
    import pyarrow.dataset as pds

    total = pending = 0
    for batch in pds.dataset(path, format="parquet").to_batches(columns=[id_column]):
        ids = batch.column(0)
        total += len(ids)
        pending += len(ids) - (int(pc.sum(pc.is_in(ids, value_set=done)).as_py() or 0) if len(done) else 0)
    return total, pending
