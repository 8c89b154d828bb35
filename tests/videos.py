"""Test-video factory: tiny real videos written with pipeline.data.encode (shared by the data tests).

Frames are smooth and individually recognisable (`frame_ids` maps decoded frames back to their index), so tests
can check WHICH frame a decoder returned, not only how many.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pipeline.data.encode import cut_stream_copy, decode_all_pyav, write_audio_only, write_video

SUFFIX = {"libx264": ".mp4", "mpeg4": ".avi", "libvpx-vp9": ".webm"}


def indexed_frames(num_frames: int = 16, width: int = 64, height: int = 48) -> np.ndarray:
    """uint8 (F, H, W, 3): frame i has red level ~ i (strictly increasing), a green bar at an i-dependent column
    and a fixed blue gradient. Smooth content keeps lossy codecs close to the input."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    red = np.linspace(16, 240, num_frames) if num_frames > 1 else np.array([128.0])
    bar = max(2, width // 8)
    blue = np.linspace(32, 224, width, dtype=np.float32)[None, :]
    for i in range(num_frames):
        frames[i, :, :, 0] = int(round(red[i]))
        x = (i * 3) % max(1, width - bar)
        frames[i, :, x:x + bar, 1] = 220
        frames[i, :, :, 2] = blue.astype(np.uint8)
    return frames


def write_test_video(path: str | Path, *, num_frames: int = 16, width: int = 64, height: int = 48, fps: float = 16,
                     codec: str = "libx264", gop: int | None = None, **options) -> Path:
    """Write `indexed_frames` with `codec` (container from the path's suffix)."""
    return write_video(path, indexed_frames(num_frames, width, height), fps, codec=codec, gop=gop, **options)


def write_mid_gop_cut(path: str | Path, *, num_frames: int = 48, gop: int = 16, start_packet: int = 5,
                      codec: str = "libx264", **options) -> Path:
    """A stream-copied cut starting at packet `start_packet` (not a keyframe) of a `gop`-GOP video: the file starts
    mid-GOP, as `ffmpeg -ss T -c copy` cuts (Kinetics) do. Only the cut is left in the directory."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        source = write_test_video(Path(tmp) / ("source" + path.suffix), num_frames=num_frames, codec=codec, gop=gop,
                                  **options)
        return cut_stream_copy(source, path, start_packet)


def write_text_file(path: str | Path) -> Path:
    path = Path(path)
    path.write_text("this is not a video\nlabel,path\n" * 20)
    return path


def write_random_bytes(path: str | Path, size: int = 20_000, seed: int = 0) -> Path:
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def write_truncated(path: str | Path, fraction: float = 0.5, **video) -> Path:
    """An MP4 cut to `fraction` of its bytes (a partial download: its index, at the end, is lost)."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_test_video(Path(tmp) / ("full" + path.suffix), **video).read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def write_audio(path: str | Path) -> Path:
    return write_audio_only(path, seconds=0.5)


def reference_frames(path: str | Path) -> np.ndarray:
    """All presentable frames decoded by FFmpeg through PyAV (independent of decord)."""
    return decode_all_pyav(path)


def frame_ids(frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """For each frame, the index of the closest reference frame (mean absolute difference)."""
    a = frames.reshape(len(frames), -1).astype(np.int16)
    b = reference.reshape(len(reference), -1).astype(np.int16)
    return np.array([int(np.abs(b - row).mean(axis=1).argmin()) for row in a])


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
