"""The Ray job that writes frame shards: a video manifest -> JPEG frames in size-bounded Arrow IPC / Parquet files.

`write_shards(manifest, out_dir)` cuts the manifest into chunks of `videos_per_task` rows; one Ray task per chunk
decodes its videos (in a killable child, pipeline.data.isolation), JPEG-encodes the kept frames and appends one
record batch (or row group) per video to its own shard files; the driver then writes the shard manifest, labels,
quarantine and summary. The format itself (schemas, reading) is pipeline.data.shards.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from pipeline import raystart, storage
from pipeline.data.manifest import LABELS_FILE, manifest_file, read_labels, read_manifest
from pipeline.data.shards import (
    CODEC_OF_FORMAT,
    FORMATS,
    FRAME_SCHEMA,
    SHARD_EXTRA_SCHEMA,
    ShardFormat,
    encode_jpeg,
    kept_frame_indices,
    resolve,
)
from pipeline.progress import Progress

log = logging.getLogger(__name__)

# Source frames decoded per call while writing: bounds the writer's memory for long videos (a 256-frame chunk at
# 455x256 is 90 MB) while keeping the per-call seek overhead small.
_DECODE_CHUNK = 256


@dataclass
class ShardSummary:
    """What `write_shards` did; `describe()` is what `eco prepare shards` prints."""

    out_dir: str
    format: str
    videos: int = 0
    failed: int = 0
    shards: int = 0
    frames: int = 0
    source_frames: int = 0
    shard_bytes: int = 0
    source_bytes: int = 0
    short_side: int = 256
    fps: float | None = None
    quality: int = 90
    max_shard_bytes: int = 0
    largest_shard_bytes: int = 0
    seconds: float = 0.0
    failures_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def storage_ratio(self) -> float:
        """Shard bytes / source video bytes (of the videos written)."""
        return self.shard_bytes / self.source_bytes if self.source_bytes else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["storage_ratio"] = self.storage_ratio
        return d

    def describe(self) -> str:
        rate = "all frames" if self.fps is None else f"{self.fps:g} fps"
        lines = [
            f"frame shards ({self.format}) -> {self.out_dir}",
            f"  videos      {self.videos} written, {self.failed} failed"
            + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(self.failures_by_reason.items()))})"
               if self.failures_by_reason else ""),
            f"  frames      {self.frames:,} kept of {self.source_frames:,} ({rate}, short side {self.short_side}, "
            f"JPEG q{self.quality})",
            f"  shards      {self.shards} files, largest {self.largest_shard_bytes / 2**20:.1f} MiB "
            f"(limit {self.max_shard_bytes / 2**20:.0f} MiB)",
            f"  storage     {self.shard_bytes / 2**20:.1f} MiB = {self.storage_ratio:.2f}x the source videos "
            f"({self.source_bytes / 2**20:.1f} MiB)",
            f"  time        {self.seconds:.1f} s",
        ]
        return "\n".join(lines)


def _fs_join(base: str, name: str) -> str:
    """A path inside a pyarrow filesystem (`resolve`'s second value: "bucket/prefix" for S3, no scheme). Not
    storage.join, which would read a scheme-less "bucket/prefix" as a relative local path and make it absolute."""
    return base.rstrip("/") + "/" + name


class _ShardWriter:
    """Writes videos into size-bounded shard files named <prefix>-<n>.<ext> under `out_dir`."""

    def __init__(self, fs: pafs.FileSystem, out_dir: str, prefix: str, fmt: str, max_bytes: int):
        self.fs, self.out_dir, self.prefix, self.fmt, self.max_bytes = fs, out_dir, prefix, fmt, max_bytes
        self.number = -1
        self.stream = None
        self.writer = None
        self.batches = 0
        self.bytes = 0
        self.name = ""
        self.closed_sizes: dict[str, int] = {}

    def _open(self) -> None:
        self.number += 1
        self.name = f"{self.prefix}-{self.number:04d}{FORMATS[self.fmt]}"
        self.stream = self.fs.open_output_stream(_fs_join(self.out_dir, self.name))
        if self.fmt == "arrow":
            self.writer = ipc.new_file(self.stream, FRAME_SCHEMA)
        else:
            # JPEG bytes do not compress; dictionary-encoding video_id keeps the id column tiny.
            self.writer = pq.ParquetWriter(self.stream, FRAME_SCHEMA, compression="none",
                                           use_dictionary=["video_id"], write_statistics=["frame_index"])
        self.batches = 0
        self.bytes = 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.stream.close()
            self.closed_sizes[self.name] = self.fs.get_file_info(_fs_join(self.out_dir, self.name)).size
            self.writer = None

    def add(self, video_id: str, frame_index: np.ndarray, jpegs: list[bytes]) -> tuple[str, int]:
        """Append one video as one record batch / row group; returns (shard name, batch index)."""
        payload = sum(len(j) for j in jpegs) + 16 * len(jpegs) + len(video_id) + 512  # data + offsets + metadata
        # Start a new shard when this video would push the current one past the bound (a video larger than the
        # bound gets a shard of its own: one batch per video is what makes a clip cheap to read).
        # The reserve covers the file's schema, footer (one block entry per batch) and alignment padding.
        reserve = 4096 + 64 * (self.batches + 1)
        if self.writer is not None and self.batches and self.bytes + payload + reserve > self.max_bytes:
            self.close()
        if self.writer is None:
            self._open()
        table = pa.table({"video_id": pa.array([video_id] * len(jpegs), pa.string()),
                          "frame_index": pa.array(frame_index, pa.int32()),
                          "jpeg": pa.array(jpegs, pa.binary())}, schema=FRAME_SCHEMA)
        if self.fmt == "arrow":
            self.writer.write_batch(table.combine_chunks().to_batches()[0])
        else:
            self.writer.write_table(table, row_group_size=max(1, len(jpegs)))
        index = self.batches
        self.batches += 1
        self.bytes += payload
        return self.name, index


def _frames_for_video(row: dict[str, Any], kept: np.ndarray, short_side: int, decoder) -> Iterable[np.ndarray]:
    # Never upscale (like normalisation): a 64x64 source stored at short side 256 is 16x the pixels and ~28x the
    # MP4's bytes, with no detail added; the training crop resizes to crop_size anyway.
    source_short = min(int(row["width"]), int(row["height"]))
    if source_short > 0:
        short_side = min(short_side, source_short)
    for start in range(0, len(kept), _DECODE_CHUNK):
        chunk = kept[start:start + _DECODE_CHUNK]
        # The same call as the video pipeline's decoder, so shard frames are the frames the video path decodes.
        yield decoder.decode(row["path"], chunk, short_side=short_side, num_threads=1,
                             num_frames=int(row["num_frames"]), size=(int(row["width"]), int(row["height"])),
                             backend=str(row.get("backend") or "auto"))


def _write_chunk(rows: list[dict[str, Any]], out_dir: str, prefix: str, *, fmt: str, short_side: int,
                 fps: float | None, quality: int, max_shard_bytes: int, timeout_s: float) -> dict[str, Any]:
    """Write the videos of one manifest chunk into shards; runs as one Ray task. Returns manifest rows + stats."""
    from pipeline.data.decode import DecodeError
    from pipeline.data.isolation import IsolatedDecoder

    fs, base = resolve(out_dir)
    writer = _ShardWriter(fs, base, prefix, fmt, max_shard_bytes)
    out_rows: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    # A killable child process: decord can hang or crash in native code on bad files; a shard job over
    # 650k videos must quarantine those, not die.
    decoder = IsolatedDecoder(timeout_s=timeout_s, max_clips_per_process=500)
    try:
        for row in rows:
            kept = kept_frame_indices(int(row["num_frames"]), float(row["fps"]), fps)
            try:
                jpegs: list[bytes] = []
                height = width = 0
                for frames in _frames_for_video(row, kept, short_side, decoder):
                    height, width = frames.shape[1:3]
                    jpegs.extend(encode_jpeg(f, quality) for f in frames)
            except DecodeError as e:
                failures.append({"path": row["path"], "reason": e.reason, "detail": str(e)})
                log.warning("frame shards: skipping %s: %s", row["path"], e)
                continue
            name, index = writer.add(row["video_id"], kept, jpegs)
            name = storage.join(out_dir, name)
            kept_fps = float(row["fps"]) if fps is None or fps >= float(row["fps"] or 0) else float(fps)
            out_rows.append({
                **{k: row[k] for k in ("video_id", "label", "label_name", "split", "duration")},
                "path": name,
                "num_frames": len(jpegs),
                "fps": kept_fps,
                "width": int(width),
                "height": int(height),
                "codec": CODEC_OF_FORMAT[fmt],
                "size_bytes": sum(len(j) for j in jpegs),
                "batch_index": index,
                "source_path": row["path"],
                "source_num_frames": int(row["num_frames"]),
                "source_fps": float(row["fps"]),
                "source_size_bytes": int(row["size_bytes"]),
            })
    finally:
        writer.close()
        decoder.close()
    return {"rows": out_rows, "failures": failures, "shard_sizes": writer.closed_sizes}


def write_shards(manifest: str | Path, out_dir: str | Path, *, short_side: int = 256, fps: float | None = None,
                 quality: int = 90, max_shard_bytes: int = 512 * 2**20, format: ShardFormat = "arrow",
                 videos_per_task: int = 64, timeout_s: float = 120.0, splits: list[str] | None = None,
                 num_cpus_per_task: float = 1.0) -> ShardSummary:
    """Convert a video manifest (file or `eco prepare` directory) into JPEG frame shards under `out_dir`.

    Videos are decoded at `short_side` (smaller videos keep their size: never upscaled), subsampled to `fps`
    frames/s (None: every frame), JPEG-encoded at `quality`, and written one record batch (or Parquet row group) per video into shard files of at most
    `max_shard_bytes` (a single video larger than that gets its own file). One Ray task per `videos_per_task`
    manifest rows writes its own shard files, so the job scales with the cluster's CPUs. `out_dir` may be a local
    path or a URI (s3://...). Writes manifest.parquet, labels.json, quarantine.parquet and summary.json.
    """
    import ray

    if format not in FORMATS:
        raise ValueError(f"shard format {format!r}; valid: {', '.join(FORMATS)}")
    if short_side < 16:
        raise ValueError(f"short_side must be >= 16, got {short_side}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if max_shard_bytes < 2**16:
        raise ValueError(f"max_shard_bytes must be >= 64 KiB, got {max_shard_bytes}")
    start = time.perf_counter()
    table = read_manifest(manifest)
    if splits is not None:
        import pyarrow.compute as pc

        table = table.filter(pc.is_in(table.column("split"), pa.array(splits)))
    rows = table.to_pylist()
    out = storage.absolute(out_dir)  # absolute path or URI: shard paths in the manifest are absolute like video paths
    fs, base = resolve(out)
    fs.create_dir(base, recursive=True)

    # Every task's files carry a run token, so shards of an earlier, interrupted run are never mixed with new ones.
    token = uuid.uuid4().hex[:8]
    raystart.ensure_ray()
    remote = ray.remote(num_cpus=num_cpus_per_task, max_retries=2,
                        runtime_env=storage.storage_runtime_env())(_write_chunk)
    futures = {
        remote.remote(rows[i:i + videos_per_task], out, f"shard-{token}-{i // videos_per_task:05d}", fmt=format,
                      short_side=short_side, fps=fps, quality=quality, max_shard_bytes=max_shard_bytes,
                      timeout_s=timeout_s): i
        for i in range(0, len(rows), videos_per_task)
    }
    results_by_start: dict[int, dict[str, Any]] = {}
    pending = list(futures)
    with Progress(len(rows), desc="shards", unit="videos") as progress:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            result = ray.get(done[0])
            results_by_start[futures[done[0]]] = result
            progress.update(len(result["rows"]) + len(result["failures"]))
    results = [results_by_start[i] for i in sorted(results_by_start)]  # task order, as before: stable manifests

    out_rows = [r for res in results for r in res["rows"]]
    failures = [f for res in results for f in res["failures"]]
    sizes = {name: size for res in results for name, size in res["shard_sizes"].items()}
    shard_table = _shard_manifest_table(out_rows)
    with fs.open_output_stream(_fs_join(base, "manifest.parquet")) as f:
        pq.write_table(shard_table, f)
    quarantine = pa.table({"path": pa.array([f["path"] for f in failures], pa.string()),
                           "reason": pa.array([f["reason"] for f in failures], pa.string()),
                           "detail": pa.array([f["detail"] for f in failures], pa.string())})
    with fs.open_output_stream(_fs_join(base, "quarantine.parquet")) as f:
        pq.write_table(quarantine, f)
    _copy_labels(manifest, out)

    reasons: dict[str, int] = {}
    for f in failures:
        reasons[f["reason"]] = reasons.get(f["reason"], 0) + 1
    summary = ShardSummary(
        out_dir=out, format=format, videos=len(out_rows), failed=len(failures), shards=len(sizes),
        frames=sum(r["num_frames"] for r in out_rows), source_frames=sum(r["source_num_frames"] for r in out_rows),
        shard_bytes=sum(sizes.values()), source_bytes=sum(r["source_size_bytes"] for r in out_rows),
        short_side=short_side, fps=fps, quality=quality, max_shard_bytes=max_shard_bytes,
        largest_shard_bytes=max(sizes.values(), default=0), seconds=time.perf_counter() - start,
        failures_by_reason=reasons)
    with fs.open_output_stream(_fs_join(base, "summary.json")) as f:
        f.write(json.dumps(summary.to_dict(), indent=2).encode())
    return summary  # the caller prints it (`eco prepare shards`: summary.describe())


def _shard_manifest_table(rows: list[dict[str, Any]]) -> pa.Table:
    types = {
        "video_id": pa.string(), "path": pa.string(), "label": pa.int32(), "label_name": pa.string(),
        "split": pa.string(), "num_frames": pa.int32(), "fps": pa.float32(), "width": pa.int32(),
        "height": pa.int32(), "duration": pa.float32(), "codec": pa.string(), "size_bytes": pa.int64(),
    }
    schema = pa.schema(list(types.items()) + list(SHARD_EXTRA_SCHEMA))
    rows = sorted(rows, key=lambda r: r["video_id"])
    return pa.table({f.name: pa.array([r[f.name] for r in rows], f.type) for f in schema}, schema=schema)


def _copy_labels(manifest: str | Path, out_dir: str) -> None:
    try:
        labels = read_labels(manifest)
    except (ValueError, OSError) as e:
        log.warning("frame shards: no labels.json next to %s (%s); none copied", manifest_file(manifest), e)
        return
    fs, path = resolve(storage.join(out_dir, LABELS_FILE))
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(labels, indent=1).encode())
