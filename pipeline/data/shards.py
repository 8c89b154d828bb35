"""Frame shards: a manifest's videos stored as JPEG frames in Arrow IPC (or Parquet) files.

Why: a 16-segment TSN clip spans the whole video, so decoding it from an MP4 costs about a full decode of the file
(6-9 clips per CPU-second for Kinetics-like H.264, whatever the decoder). Decoding 16 stored JPEGs costs
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

This module owns the format and its reader; pipeline.data.shard_writer is the Ray job that writes shards, and
pipeline.data.clips.ShardClipDecoder turns shard-manifest rows into clips.
"""

from __future__ import annotations

import io
import math
import os
from collections import OrderedDict
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from pipeline import storage

ShardFormat = Literal["arrow", "parquet"]
FORMATS: dict[str, str] = {"arrow": ".arrow", "parquet": ".parquet"}
CODEC_OF_FORMAT: dict[str, str] = {"arrow": "jpeg-arrow", "parquet": "jpeg-parquet"}

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



# --------------------------------------------------------------------------------------------------------------
# Files: local paths and any URI pyarrow understands (s3://, gs://, file://), through pipeline.storage


def resolve(uri_or_path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or URI."""
    try:
        return storage.resolve(uri_or_path)
    except storage.StorageError as e:
        raise ShardError(str(e)) from e


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
        if self.root is None or storage.is_uri(path) or os.path.isabs(path):
            return path
        return storage.join(self.root, path)

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



def read_shard_manifest(shard_dir: str) -> pa.Table:
    """The shard manifest table of a directory written by `write_shards` (local path or URI)."""
    fs, path = resolve(shard_dir)
    file = path if path.endswith(".parquet") else storage.join(path, "manifest.parquet")
    try:
        return pq.read_table(file, filesystem=fs)
    except (OSError, pa.ArrowInvalid) as e:
        raise ShardError(f"{shard_dir}: no readable shard manifest ({file}): {e}") from e

