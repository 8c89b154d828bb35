"""Test-video factory: tiny real videos written with pipeline.data.encode (shared by the data tests).

Frames are smooth and individually recognisable (`frame_ids` maps decoded frames back to their index), so tests
can check WHICH frame a decoder returned, not only how many.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from pipeline.data.encode import (
    cut_stream_copy,
    decode_all_pyav,
    packet_spans,
    write_audio_only,
    write_jpeg,
    write_streams,
    write_video,
)

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


# Side of the white marker block that `marked_frames` put in the displayed image's top-left corner.
MARK = 8


def marked_frames(num_frames: int, width: int, height: int) -> np.ndarray:
    """uint8 (F, H, W, 3) as they should be displayed: dark grey, red level 40 + 10 * i tells frame i, and a white
    MARK x MARK block in the top-left corner that shows the orientation."""
    frames = np.full((num_frames, height, width, 3), 40, np.uint8)
    frames[..., 0] = (40 + 10 * np.arange(num_frames))[:, None, None]
    frames[:, :MARK, :MARK] = 250
    return frames


def write_rotated_video(path: str | Path, *, rotation: int, width: int, height: int, num_frames: int = 8,
                        fps: float = 8, codec: str = "libx264") -> Path:
    """A phone-style video whose frames display as `marked_frames(num_frames, width, height)`: stored rotated back
    by `rotation` degrees (coded size height x width for 90/270) with a display matrix of `rotation`."""
    display = marked_frames(num_frames, width, height)
    coded = np.ascontiguousarray(np.rot90(display, k=-(rotation // 90), axes=(1, 2)))
    return write_video(path, coded, fps, codec=codec, rotation=rotation)


def marker_corner(frame: np.ndarray) -> str:
    """Which corner of an (H, W, 3) frame holds the white marker: "top-left", "top-right", "bottom-left",
    "bottom-right" (the brightest corner block)."""
    h, w = frame.shape[:2]
    m = max(1, min(h, w) // 8)  # inside the marker (1/6 of the short side in the tests' videos) at any scale
    corners = {"top-left": frame[:m, :m], "top-right": frame[:m, w - m:], "bottom-left": frame[h - m:, :m],
               "bottom-right": frame[h - m:, w - m:]}
    return max(corners, key=lambda k: float(corners[k].mean()))


def frame_number(frame: np.ndarray) -> int:
    """The frame index `marked_frames` encoded in the red level (read away from the marker)."""
    h, w = frame.shape[:2]
    return int(round((float(np.median(frame[h // 2:, w // 2:, 0])) - 40) / 10))


def write_two_streams(path: str | Path, *, num_frames: int = 8, fps: float = 8) -> Path:
    """An MP4 with two video streams of different sizes: 64x48 and 128x96, both `marked_frames`."""
    return write_streams(path, [marked_frames(num_frames, 64, 48), marked_frames(num_frames, 128, 96)], fps)


def write_static_video(path: str | Path, *, num_frames: int = 48, gop: int = 8, width: int = 64,
                       height: int = 48, fps: float = 8) -> Path:
    """A video whose frames are all the same image (a slide, a paused screen): real content, not a decoder bug."""
    frame = marked_frames(1, width, height)
    return write_video(path, np.repeat(frame, num_frames, axis=0), fps, gop=gop)


def make_unreadable(path: str | Path) -> Path:
    """A file in place of a video that exists but cannot be read. Normally a file without read permission; root
    reads through permissions, so as root it is a symbolic link to /proc/self/mem, whose first page fails every
    read with EIO (what a failing disk or network mount gives)."""
    path = Path(path)
    if os.geteuid() == 0:
        path.symlink_to("/proc/self/mem")
    else:
        path.write_bytes(b"\0" * 1024)
        path.chmod(0)
    return path


# --------------------------------------------------------------------------------------------------------------
# Damaged files: what broken downloads, crashed writers and bit rot leave. Each writer keeps the intact file at
# `intact` (when given) so that a test can tell which frames still decode exactly as they should. No B-frames:
# decode order is presentation order, so "the frames before the damage" is one prefix.
# --------------------------------------------------------------------------------------------------------------

DAMAGED_KINDS = ("truncated_indexed", "corrupt_middle", "unfinalised_avi", "mkv_block_past_cluster")


def write_damaged(path: str | Path, kind: str, *, intact: str | Path | None = None, num_frames: int = 40) -> Path:
    """A damaged video of `kind` (DAMAGED_KINDS) at `path`:

    - truncated_indexed: an MP4 with its index in front (faststart) cut at half its bytes, as a broken download
      of a streaming-ready file: the index survives and declares frames that are not in the file;
    - corrupt_middle: an MP4 with random bytes written over the packet of its middle frame;
    - unfinalised_avi: an AVI as its writer leaves it when it crashes: the header's size and count placeholders
      still 0, no index (idx1), the data cut at 60% of the stream;
    - mkv_block_past_cluster: a Matroska file one of whose blocks declares a size that runs past its cluster.
    """
    path = Path(path)
    if kind not in DAMAGED_KINDS:
        raise ValueError(f"unknown damage {kind!r}; valid: {', '.join(DAMAGED_KINDS)}")
    suffix = {"unfinalised_avi": ".avi", "mkv_block_past_cluster": ".mkv"}.get(kind, ".mp4")
    frames = indexed_frames(num_frames, 64, 48)
    with tempfile.TemporaryDirectory() as tmp:
        whole = Path(tmp) / ("whole" + suffix)
        if kind == "unfinalised_avi":
            write_video(whole, frames, 16, codec="mpeg4")
        elif kind == "mkv_block_past_cluster":
            # 4 fps: 10 s, so that the muxer starts a second cluster (every 5 s at a keyframe).
            write_video(whole, frames, 4, gop=8, bframes=0)
        else:
            write_video(whole, frames, 16, gop=num_frames, bframes=0, faststart=kind == "truncated_indexed")
        data = bytearray(whole.read_bytes())
        spans = packet_spans(whole)
        if intact is not None:
            Path(intact).write_bytes(bytes(data))
    if kind == "truncated_indexed":
        assert data.find(b"moov") < data.find(b"mdat"), "faststart: the index comes first"
        data = data[: len(data) // 2]
    elif kind == "corrupt_middle":
        # Random bytes over the packet of the middle frame (after its 4-byte NAL length, so that the damage is in
        # the picture data FFmpeg must decode, not in the framing it skips).
        pos, size = spans[num_frames // 2]
        data[pos + 4:pos + size] = np.random.default_rng(0).integers(0, 256, size - 4, dtype=np.uint8).tobytes()
    elif kind == "unfinalised_avi":
        data = _unfinalise_avi(data)
    else:
        data = _block_past_cluster(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def _unfinalise_avi(data: bytearray) -> bytearray:
    movi, idx1 = data.find(b"movi"), data.find(b"idx1")
    avih, strh = data.find(b"avih"), data.find(b"strh")
    out = data[: movi + int((idx1 - movi) * 0.6)]
    # The placeholders FFmpeg's AVI muxer writes first and fills in when it finishes: RIFF size, movi LIST size,
    # avih total frames, strh length.
    for offset in (4, movi - 4, avih + 8 + 16, strh + 8 + 32):
        out[offset:offset + 4] = bytes(4)
    return out


def _ebml_vint(data: bytes, i: int, *, keep_marker: bool) -> tuple[int, int]:
    """(value, length) of the EBML variable-size integer at i (an element id keeps its length marker)."""
    length = 1
    while length <= 8 and not data[i] & (0x80 >> (length - 1)):
        length += 1
    value = data[i] if keep_marker else data[i] & ((0x80 >> (length - 1)) - 1)
    for k in range(1, length):
        value = (value << 8) | data[i + k]
    return value, length


def _ebml_children(data: bytes, start: int, end: int):
    """(id, size field offset, size field length, payload offset, payload size) of the elements in [start, end)."""
    i = start
    while i < end:
        eid, id_len = _ebml_vint(data, i, keep_marker=True)
        size, size_len = _ebml_vint(data, i + id_len, keep_marker=False)
        yield eid, i + id_len, size_len, i + id_len + size_len, size
        i += id_len + size_len + size


def _block_past_cluster(data: bytearray) -> bytearray:
    segment = next(e for e in _ebml_children(data, 0, len(data)) if e[0] == 0x18538067)
    clusters = [e for e in _ebml_children(data, segment[3], min(len(data), segment[3] + segment[4]))
                if e[0] == 0x1F43B675]
    assert len(clusters) >= 2, "need a cluster after the damaged one"
    first = clusters[0]
    blocks = [e for e in _ebml_children(data, first[3], first[3] + first[4]) if e[0] == 0xA3]  # SimpleBlock
    # A block in the middle whose size field is wide enough to point past the cluster's end.
    _, size_at, size_len, payload, _ = next(b for b in blocks[len(blocks) // 2:-1] if b[2] >= 2)
    size = first[3] + first[4] - payload + 100
    data[size_at:size_at + size_len] = (size | (1 << (7 * size_len))).to_bytes(size_len, "big")
    return data


def write_jpeg_as_mp4(path: str | Path) -> Path:
    """A JPEG photo saved under a video name (a single still is not a video)."""
    return write_jpeg(path, marked_frames(1, 64, 48)[0])


def clean_head(damaged: np.ndarray, intact: np.ndarray) -> int:
    """How many leading frames of `damaged` are byte-identical to the intact file's: the frames before the damage,
    found independently of any probe."""
    n = 0
    while n < min(len(damaged), len(intact)) and np.array_equal(damaged[n], intact[n]):
        n += 1
    return n
