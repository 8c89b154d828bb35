"""Frame shards: a manifest's videos stored as JPEG frames in Arrow IPC (or Parquet) files.

Why: a 16-segment TSN clip spans the whole video, so decoding it from an MP4 costs about a full decode of the file
(issue 6: 6-9 clips per CPU-second for Kinetics-like H.264, whatever the decoder). Decoding 16 stored JPEGs costs
16 small independent decodes: an order of magnitude more clips per core, paid for in storage.

Layout (one file per shard, many videos per shard, bounded in bytes):

    one record batch (Arrow IPC) / one row group (Parquet) per video, one row per kept frame:
        video_id: string, frame_index: int32 (index of the frame in the SOURCE video), jpeg: binary

Why one row per frame and one batch per video: a clip needs 16 of a video's ~300 frames. In a memory-mapped Arrow
IPC file, `get_batch(b)` reads only the batch's metadata, and taking 16 rows of the `jpeg` column touches only those
16 JPEGs' bytes (the binary column is an offsets buffer plus one contiguous data buffer, so a row is a zero-copy
slice): nothing else of the file is read or copied. On object storage (no mmap) a clip costs one ranged read of
its own video's batch and nothing of the other videos in the shard. Parquet cannot address rows inside a column chunk without
reading it, so a Parquet clip reads the video's whole `jpeg` chunk (stored uncompressed: JPEG does not compress);
it is the format for engines that only speak Parquet. A `list<binary>` row per video would work the same in IPC but
would make the source frame index implicit; a row per frame keeps it explicit and queryable.

The shard manifest (`DIR/manifest.parquet`) has every column of the video manifest (MANIFEST_SCHEMA in
manifest.py) so the Ray Data pipeline reads, shuffles and splits it unchanged, with these meanings:
    path: the shard file (absolute path or URI, like video paths), num_frames: KEPT frames, fps: the kept rate,
    width/height: the stored frame size, codec: "jpeg-arrow" or "jpeg-parquet", size_bytes: the video's JPEG bytes,
plus: batch_index (record batch / row group of the video in its shard), source_path, source_num_frames,
source_fps, source_size_bytes. Sampling runs on the kept frames with the same functions and seeds as the video
path (`pipeline.data.sampling`), so with every frame kept (`fps=None`) a clip samples exactly the frames the
video path samples; `frame_index` maps a kept frame back to the source frame.

Also written: DIR/labels.json (copied), DIR/quarantine.parquet (videos that failed to decode), DIR/summary.json
(counts, bytes, storage ratio to the source videos).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from pipeline.data.clips import RowClipDecoder

log = logging.getLogger(__name__)

ShardFormat = Literal["arrow", "parquet"]
FORMATS: dict[str, str] = {"arrow": ".arrow", "parquet": ".parquet"}
CODEC_OF_FORMAT: dict[str, str] = {"arrow": "jpeg-arrow", "parquet": "jpeg-parquet"}
FORMAT_OF_CODEC: dict[str, str] = {v: k for k, v in CODEC_OF_FORMAT.items()}

FRAME_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("frame_index", pa.int32()),
    ("jpeg", pa.binary()),
])

# Columns added to the video manifest's columns in the shard manifest.
SHARD_EXTRA_SCHEMA = pa.schema([
    ("batch_index", pa.int32()),
    ("source_path", pa.string()),
    ("source_num_frames", pa.int32()),
    ("source_fps", pa.float32()),
    ("source_size_bytes", pa.int64()),
])

# Source frames decoded per call while writing: bounds the writer's memory for long videos (a 256-frame chunk at
# 455x256 is 90 MB) while keeping the per-call seek overhead small.
_DECODE_CHUNK = 256


class ShardError(RuntimeError):
    """Reading or writing a frame shard failed; names the shard file (and video)."""


# --------------------------------------------------------------------------------------------------------------
# Pure helpers


def kept_frame_indices(num_frames: int, source_fps: float, fps: float | None) -> np.ndarray:
    """Source frame indices kept when subsampling a video of `num_frames` at `source_fps` to `fps` frames/s.

    Kept frame k is the source frame nearest to time k / fps. `fps=None` (or >= the source rate, or an unknown
    source rate) keeps every frame. Returns int64 (K,), strictly increasing, K >= 1 for num_frames >= 1.
    """
    if num_frames <= 0:
        return np.zeros(0, np.int64)
    if fps is None or not source_fps or source_fps <= 0 or fps >= source_fps:
        return np.arange(num_frames, dtype=np.int64)
    if fps <= 0:
        raise ValueError(f"fps must be > 0 or None, got {fps}")
    step = source_fps / fps  # source frames per kept frame (> 1)
    count = int(math.floor((num_frames - 1) / step + 1e-9)) + 1
    # floor(x + 0.5): round half up, independent of numpy's banker's rounding.
    idx = np.floor(np.arange(count) * step + 0.5).astype(np.int64)
    return np.unique(np.clip(idx, 0, num_frames - 1))


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """uint8 RGB (H, W, 3) -> JPEG bytes (PIL / libjpeg-turbo, 4:2:0 like the source videos' yuv420p)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame), mode="RGB").save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def decode_jpegs(blobs: list[bytes] | list[memoryview], *, backend: str = "torchvision",
                 device: str = "cpu") -> np.ndarray | "Any":
    """JPEG bytes -> uint8 RGB (T, H, W, 3).

    backend "torchvision" (libjpeg-turbo; ~1.7x faster than PIL here) or "pil". `device="cuda"` decodes on the GPU
    with nvJPEG through torchvision and returns a CUDA uint8 tensor (T, H, W, 3) instead of a numpy array, so the
    frames never come back to the host (use it in the trainer, not in CPU decode workers).
    """
    if not blobs:
        raise ValueError("no JPEG frames to decode")
    if backend == "pil" and device == "cpu":
        from PIL import Image

        frames = [np.asarray(Image.open(io.BytesIO(bytes(b))).convert("RGB")) for b in blobs]
        return np.stack(frames)
    if backend not in ("torchvision", "pil"):
        raise ValueError(f"unknown JPEG backend {backend!r}; valid: torchvision, pil")
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    # bytearray: torch.frombuffer wants a writable buffer (shard bytes are read-only mmap views); 16 small copies.
    datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    decoded = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)  # T x (3, H, W)
    # On CPU each (3, H, W) is a view of libjpeg's (H, W, 3) buffer: permuting back is free and the stack is the only
    # copy (stacking CHW and then permuting costs a second full copy: 2x the time of the decode itself here).
    clip = torch.stack([frame.permute(1, 2, 0) for frame in decoded])  # (T, H, W, 3)
    return clip if device != "cpu" else clip.numpy()


def cuda_jpeg_available() -> bool:
    """True when torchvision can decode JPEG on a CUDA device (nvJPEG)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - any import/driver problem means "no"
        return False


# --------------------------------------------------------------------------------------------------------------
# Filesystem helpers: local paths and any URI pyarrow understands (s3://, gs://, file://), as in manifest.py.


def resolve(uri_or_path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or URI."""
    from pipeline.data.manifest import ManifestError, resolve as _resolve

    try:
        return _resolve(uri_or_path)
    except ManifestError as e:
        raise ShardError(str(e)) from e


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


# --------------------------------------------------------------------------------------------------------------
# Reading


class ShardReader:
    """Reads clips from frame shards; keeps up to `max_open` shard files open (memory-mapped when local).

    One instance per process (decode actor); not shared across threads.
    """

    def __init__(self, root: str | None = None, *, max_open: int = 64, backend: str = "torchvision",
                 memory_map: bool = True):
        self.root = root
        self.max_open = max_open
        self.backend = backend
        self.memory_map = memory_map  # False: read local files like remote ones (ranged reads), e.g. on NFS
        self._open: OrderedDict[str, Any] = OrderedDict()

    def shard_uri(self, path: str) -> str:
        if self.root is None or "://" in path or os.path.isabs(path):
            return path
        return _join(self.root, path)

    def _reader(self, uri: str):
        reader = self._open.get(uri)
        if reader is not None:
            self._open.move_to_end(uri)
            return reader
        fs, path = resolve(uri)
        try:
            if uri.endswith(".parquet"):
                reader = pq.ParquetFile(fs.open_input_file(path))
            elif _is_local(fs) and self.memory_map:
                # Memory-mapped: get_batch + take touch only the sampled JPEGs' pages.
                reader = ipc.open_file(pa.memory_map(path, "r"))
            else:
                # Random-access reads: the footer once, then one ranged read of the requested video's batch.
                reader = ipc.open_file(fs.open_input_file(path))
        except (OSError, pa.ArrowInvalid) as e:
            raise ShardError(f"{uri}: cannot open frame shard: {e}") from e
        self._open[uri] = reader
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return reader

    def read_jpegs(self, shard: str, batch_index: int, indices: np.ndarray,
                   video_id: str | None = None) -> list[memoryview]:
        """The JPEG bytes of kept frames `indices` of the video at `batch_index` of `shard`."""
        uri = self.shard_uri(shard)
        reader = self._reader(uri)
        indices = np.asarray(indices, dtype=np.int64)
        try:
            if isinstance(reader, pq.ParquetFile):
                table = reader.read_row_group(int(batch_index), columns=["video_id", "jpeg"])
                ids, column = table.column("video_id"), table.column("jpeg").combine_chunks()
            else:
                batch = reader.get_batch(int(batch_index))
                ids, column = batch.column("video_id"), batch.column("jpeg")
        except (OSError, pa.ArrowInvalid, IndexError) as e:
            raise ShardError(f"{uri}: cannot read batch {batch_index}: {e}") from e
        n = len(column)
        if video_id is not None and n and ids[0].as_py() != video_id:
            raise ShardError(f"{uri}: batch {batch_index} holds video {ids[0].as_py()!r}, expected {video_id!r} "
                             "(shard manifest does not match the shard)")
        if len(indices) and (indices.min() < 0 or indices.max() >= n):
            raise ShardError(f"{uri}: batch {batch_index} has {n} frames, asked for indices "
                             f"{indices.min()}..{indices.max()}")
        # Zero-copy slices of the binary column's data buffer.
        offsets = np.frombuffer(column.buffers()[1], dtype=np.int32, count=n + 1 + column.offset)[column.offset:]
        data = column.buffers()[2]
        view = memoryview(data) if data is not None else memoryview(b"")
        return [view[offsets[i]:offsets[i + 1]] for i in indices]

    def decode(self, shard: str, batch_index: int, indices: np.ndarray, *, video_id: str | None = None,
               device: str = "cpu"):
        blobs = self.read_jpegs(shard, batch_index, indices, video_id)
        try:
            return decode_jpegs(blobs, backend=self.backend, device=device)
        except (RuntimeError, OSError, ValueError) as e:
            raise ShardError(f"{self.shard_uri(shard)}: batch {batch_index}: JPEG decode failed: {e}") from e

    def close(self) -> None:
        self._open.clear()


_thread_local = threading.local()


def decode_clip_from_shard(shard: str, batch_index: int, indices, *, video_id: str | None = None,
                           root: str | None = None, device: str = "cpu", backend: str = "torchvision"):
    """Decode kept frames `indices` of one video from a frame shard -> uint8 RGB (T, H, W, 3).

    `shard` is the shard manifest's `path` (absolute or a URI; or relative to `root`).
    `device="cuda"` decodes with nvJPEG and returns a CUDA tensor. Open shard files are cached per thread.
    """
    readers = getattr(_thread_local, "readers", None)
    if readers is None:
        readers = _thread_local.readers = {}
    key = (root, backend)
    if key not in readers:
        readers[key] = ShardReader(root, backend=backend)
    return readers[key].decode(shard, batch_index, indices, video_id=video_id, device=device)


def read_shard_manifest(shard_dir: str) -> pa.Table:
    """The shard manifest table of a directory written by `write_shards` (local path or URI)."""
    fs, path = resolve(shard_dir)
    file = path if path.endswith(".parquet") else _join(path, "manifest.parquet")
    try:
        return pq.read_table(file, filesystem=fs)
    except (OSError, pa.ArrowInvalid) as e:
        raise ShardError(f"{shard_dir}: no readable shard manifest ({file}): {e}") from e


def is_shard_manifest(table: pa.Table) -> bool:
    return "batch_index" in table.column_names and "codec" in table.column_names and all(
        c in FORMAT_OF_CODEC for c in table.column("codec").unique().to_pylist())


class ShardClipDecoder(RowClipDecoder):
    """Turns a batch of shard-manifest rows into clips: the frame-shard twin of the video pipeline's decoder
    (pipeline/data/pipeline.py `_ClipDecoder`), kept per Ray worker process by the decode stage's tasks.

    It takes the same constructor keywords (so `pipeline._dataset` can pick either class from
    `data.format`) and yields the same rows with the same sampling and transforms:
      train: rng = sampling.clip_rng(seed, epoch, video_id) (epoch: the row's "epoch" column, else `epoch`);
             indices = sampling.train_indices(num_frames, T, rng);
             [shuffle_frames: frames[rng.permutation(T)]]; transforms.train_transform(frames, crop_size=, rng=,
             multiscale=, flip=); clip_index 0;
      eval:  for clip c: sampling.eval_indices(num_frames, T, clip=c, num_clips=); transforms.eval_transform(...,
             crops=); clip_index c * crops + k.
    `num_frames` is the shard manifest's KEPT frame count, so sampling spans the same time as in the video.
    Input columns: video_id, path (shard file), batch_index, label, num_frames. The decord-specific keywords
    (num_threads, timeout_s, max_clips_per_process, decode_fn) are accepted and unused: JPEG decoding does not hang
    in native code, so no child process is needed. A row whose shard cannot be read is dropped and recorded in
    `run_state` (reason "shard_error"); the epoch goes on.
    """

    columns = ("path", "video_id", "label", "num_frames", "batch_index")

    def __init__(self, *, run_state=None, jpeg_backend: str = "torchvision", shard_root: str | None = None,
                 num_threads: int = 1, timeout_s: float | None = None, max_clips_per_process: int | None = None,
                 decode_fn: Callable | None = None, **clip_kwargs):
        super().__init__(**clip_kwargs)
        self.run_state = run_state
        self.reader = ShardReader(shard_root, backend=jpeg_backend)

    def _fetch(self, row: dict[str, Any], indices: np.ndarray) -> np.ndarray:
        return self.reader.decode(str(row["path"]), int(row["batch_index"]), indices,
                                  video_id=str(row["video_id"]))

    def _describe(self, row: dict[str, Any], error: Exception) -> tuple[str, str]:
        if isinstance(error, ShardError):
            return "shard_error", str(error)
        log.error("reading %s from %s failed unexpectedly", row["video_id"], row["path"], exc_info=error)
        return "decode_error", f"{type(error).__name__}: {error}"

    def _record(self, failures: list[dict[str, Any]]) -> None:
        from pipeline.data.pipeline import record_failures

        record_failures(self.run_state, failures)


# --------------------------------------------------------------------------------------------------------------
# Writing


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
        self.stream = self.fs.open_output_stream(_join(self.out_dir, self.name))
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
            self.closed_sizes[self.name] = self.fs.get_file_info(_join(self.out_dir, self.name)).size
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
    # MP4's bytes, with no detail added; the training crop resizes to crop_size anyway (issue 11, item 13).
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
    from pipeline.data.decode import DecodeError, IsolatedDecoder

    fs, base = resolve(out_dir)
    writer = _ShardWriter(fs, base, prefix, fmt, max_shard_bytes)
    out_rows: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    # A killable child process: decord can hang or crash in native code on bad files (issue 3); a shard job over
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
            name = _join(out_dir, name)
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
    from pipeline.data.manifest import ensure_ray, join, read_manifest, storage_runtime_env

    start = time.perf_counter()
    table = read_manifest(manifest)
    if splits is not None:
        import pyarrow.compute as pc

        table = table.filter(pc.is_in(table.column("split"), pa.array(splits)))
    rows = table.to_pylist()
    out = join(str(out_dir))  # absolute path or URI: shard paths in the manifest are absolute like video paths
    fs, base = resolve(out)
    fs.create_dir(base, recursive=True)

    # Every task's files carry a run token, so shards of an earlier, interrupted run are never mixed with new ones.
    token = uuid.uuid4().hex[:8]
    ensure_ray()
    remote = ray.remote(num_cpus=num_cpus_per_task, max_retries=2,
                        runtime_env=storage_runtime_env())(_write_chunk)
    futures = [
        remote.remote(rows[i:i + videos_per_task], out, f"shard-{token}-{i // videos_per_task:05d}", fmt=format,
                      short_side=short_side, fps=fps, quality=quality, max_shard_bytes=max_shard_bytes,
                      timeout_s=timeout_s)
        for i in range(0, len(rows), videos_per_task)
    ]
    results = ray.get(futures)

    out_rows = [r for res in results for r in res["rows"]]
    failures = [f for res in results for f in res["failures"]]
    sizes = {name: size for res in results for name, size in res["shard_sizes"].items()}
    shard_table = _shard_manifest_table(out_rows)
    with fs.open_output_stream(_join(base, "manifest.parquet")) as f:
        pq.write_table(shard_table, f)
    quarantine = pa.table({"path": pa.array([f["path"] for f in failures], pa.string()),
                           "reason": pa.array([f["reason"] for f in failures], pa.string()),
                           "detail": pa.array([f["detail"] for f in failures], pa.string())})
    with fs.open_output_stream(_join(base, "quarantine.parquet")) as f:
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
    with fs.open_output_stream(_join(base, "summary.json")) as f:
        f.write(json.dumps(summary.to_dict(), indent=2).encode())
    log.info("frame shards: %d videos -> %d shards, %.2fx the source bytes", summary.videos, summary.shards,
             summary.storage_ratio)
    return summary


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
    from pipeline.data.manifest import LABELS_FILE, join, manifest_file, read_labels

    try:
        labels = read_labels(manifest)
    except (ValueError, OSError) as e:
        log.warning("frame shards: no labels.json next to %s (%s); none copied", manifest_file(manifest), e)
        return
    fs, path = resolve(join(out_dir, LABELS_FILE))
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(labels, indent=1).encode())
