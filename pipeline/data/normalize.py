"""`eco prepare` video normalisation: resize to a training short side and optionally re-encode with a short GOP.

Why: a 16-segment TSN clip touches the whole file, so decode cost is about a full decode. Two cheap
levers without changing the format: decode fewer pixels (Kinetics originals are often 720p or more; training
uses a 256 short side) and seek less (a GOP of 16 makes each sampled frame cost at most ~16 decoded frames instead
of up to 250). The size ratio (output bytes / input bytes) is returned so `eco prepare` can record the trade-off.

Decoding goes through `pipeline.data.decode` (decord, the training decoder), encoding through
`pipeline.data.encode` (PyAV/libx264): this module imports neither decord nor av.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def even_crop(frames: np.ndarray) -> np.ndarray:
    """Drop the last row/column if H or W is odd: yuv420p encoders need even sizes (1 px of 256+ is invisible)."""
    _, h, w, _ = frames.shape
    return frames[:, : h - h % 2, : w - w % 2]


def normalize_video(src: str | Path, dst: str | Path, short_side: int = 256, gop: int | None = None, *,
                    crf: int = 18, num_threads: int = 1) -> float:
    """Re-encode `src` as H.264 at `short_side` (never upscaled) and keyframe interval `gop` (None: x264 default).

    `src` and `dst` are local paths or URIs (s3://...; `dst` is encoded locally, then uploaded).
    Returns the size ratio dst bytes / src bytes. Frame count and frame rate are kept, so manifests and sampling
    are unchanged. The whole video is held in memory at the target size (a 10 s Kinetics clip at 256p: ~80 MB).
    Raises `pipeline.data.decode.DecodeError` when `src` cannot be decoded and `EncodeError` when writing fails.
    """
    from pipeline.data.decode import decode_frames, probe
    from pipeline.data.encode import write_video

    if short_side < 16:
        raise ValueError(f"normalize_video: short_side must be >= 16, got {short_side}")
    if gop is not None and gop < 1:
        raise ValueError(f"normalize_video: gop must be >= 1 or None, got {gop}")
    src, dst = str(src), str(dst)
    info = probe(src)
    target = min(short_side, min(info.width, info.height))  # never upscale
    indices = np.arange(info.num_frames, dtype=np.int64)
    frames = decode_frames(src, indices, short_side=target, num_threads=num_threads, num_frames=info.num_frames,
                           size=(info.width, info.height), backend=info.backend)
    frames = even_crop(frames)
    fps = info.fps if info.fps and info.fps > 0 else 30.0
    if "://" in dst:
        # The encoder writes local files: encode to a temporary file, then upload through pyarrow.
        with tempfile.TemporaryDirectory(prefix="eco-normalize-") as tmp:
            local = Path(tmp) / Path(dst.split("://", 1)[1]).name
            write_video(local, frames, fps, gop=gop, crf=crf)
            dst_bytes = local.stat().st_size
            _upload(local, dst)
    else:
        write_video(dst, frames, fps, gop=gop, crf=crf)
        dst_bytes = os.path.getsize(dst)
    src_bytes = os.path.getsize(src) if "://" not in src else _uri_size(src)
    ratio = dst_bytes / max(1, src_bytes)
    log.info("normalised %s -> %s (%dx%d, gop %s): %.2fx the bytes", src, dst, frames.shape[2], frames.shape[1],
             gop, ratio)
    return ratio


def _upload(local: Path, uri: str) -> None:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    with open(local, "rb") as src, fs.open_output_stream(path) as out:
        while chunk := src.read(8 * 2**20):
            out.write(chunk)


def _uri_size(uri: str) -> int:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    return fs.get_file_info(path).size
