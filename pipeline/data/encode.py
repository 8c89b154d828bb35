"""Writing video through FFmpeg (PyAV): the synthetic dataset, the benchmarks' inputs and the real files the tests
decode (H.264, MPEG-4, VP9, AV1; audio-only, multi-stream and cut files), plus the independent readers tests check
the decoders against (`decode_all_pyav`, packet offsets and keyframe flags).

Reading for training and inference is pipeline.data.pyav_read's; these two are the modules that import `av`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

import av


# Codec -> the pixel format its encoder takes and the containers it is usually stored in.
CODECS: dict[str, str] = {
    "libx264": "yuv420p",
    "mpeg4": "yuv420p",
    "libvpx-vp9": "yuv420p",
    "libvpx": "yuv420p",
    "libsvtav1": "yuv420p",  # AV1 (YouTube's current codec), which decord 0.6 cannot decode
}


def available_codecs() -> frozenset[str]:
    """Codec names (encoders and decoders) of PyAV's FFmpeg build: what tests can write, e.g. "libsvtav1"."""
    return frozenset(av.codecs_available)


class EncodeError(RuntimeError):
    """Writing a video failed; names the output path."""


@contextlib.contextmanager
def _same_scheduling() -> Iterator[None]:
    """Restore the calling thread's scheduling policy after encoding.

    SVT-AV1 (libsvtav1) raises the thread that opens an encoder to SCHED_FIFO when it is allowed to (as root, in
    containers and CI). Every process started from that thread afterwards inherits it, and a real-time process
    that polls (Ray's daemons, wandb-core) then takes a core from everything else on the machine.
    """
    if not hasattr(os, "sched_getscheduler"):  # macOS: no per-thread policies to restore
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if os.sched_getscheduler(0) != policy:
            os.sched_setscheduler(0, policy, param)


def write_video(
    path: str | Path,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float,
    *,
    codec: str = "libx264",
    gop: int | None = None,
    crf: int | None = None,
    bitrate: int | None = None,
    preset: str = "veryfast",
    bframes: int | None = None,
    rotation: int = 0,
    faststart: bool = False,
) -> Path:
    """Write uint8 RGB frames (F, H, W, 3) to `path` (the container follows the extension: .mp4, .avi, .webm, .mkv).

    `frames` may also be an iterable of (H, W, 3) frames, so long videos never sit in memory whole.
    `codec`: "libx264" (H.264, MP4/MKV), "mpeg4" (MPEG-4 Part 2, AVI), "libvpx-vp9" (VP9, WebM), "libvpx" (VP8).
    `gop` is the keyframe interval (None: the encoder's default, 250 for x264). `crf` sets constant quality for
    libx264/libvpx-vp9 (default 18 for x264, 32 for VP9); `bitrate` (bits/s) is used for mpeg4 or when given.
    `bframes`=0 disables B-frames (x264), which makes decode order equal presentation order.
    4:2:0 encoders need even frame sizes. `rotation` (0, 90, 180, 270; counter-clockwise, as FFmpeg reads it back)
    writes a display matrix, as phones do for portrait video: the frames are stored as given and shown rotated.
    `faststart` (MP4) moves the index (moov) before the media data, as files made for streaming have it.
    """
    path = Path(path)
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or len(frames) == 0:
            raise EncodeError(f"{path}: expected uint8 frames (F, H, W, 3) with F >= 1, got {frames.dtype} {frames.shape}")
        iterator: Iterator[np.ndarray] = iter(frames)
    else:
        iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise EncodeError(f"{path}: no frames to write")
    first = np.asarray(first)
    if first.ndim != 3 or first.shape[-1] != 3 or first.dtype != np.uint8:
        raise EncodeError(f"{path}: expected uint8 RGB frames (H, W, 3), got {first.dtype} {first.shape}")
    if codec not in CODECS:
        raise EncodeError(f"{path}: unsupported codec {codec!r}; valid: {', '.join(CODECS)}")
    if rotation % 90:
        raise EncodeError(f"{path}: rotation must be a multiple of 90 degrees, got {rotation}")
    height, width, _ = first.shape
    if height % 2 or width % 2:
        raise EncodeError(f"{path}: {codec}/yuv420p needs even frame sizes, got {width}x{height}")
    path.parent.mkdir(parents=True, exist_ok=True)

    options: dict[str, str] = {}
    if codec == "libx264":
        options["crf"] = str(18 if crf is None else crf)
        options["preset"] = preset
        if bframes is not None:
            options["bf"] = str(bframes)
        if gop is not None:
            # A fixed GOP: x264 would otherwise also insert keyframes at scene cuts.
            options["x264-params"] = f"keyint={int(gop)}:min-keyint={int(gop)}:scenecut=0"
    elif codec == "libvpx-vp9":
        options["crf"] = str(32 if crf is None else crf)
        # libvpx-vp9 otherwise needs b=0 for pure CRF mode and is very slow by default; tests need tiny, fast files.
        options["b"] = "0"
        options["deadline"] = "realtime"
        options["cpu-used"] = "8"
    elif codec == "libsvtav1":
        # The fastest preset: tests need tiny files quickly, not compression.
        options["preset"] = "12"
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with _same_scheduling(), \
                av.open(str(path), mode="w", options={"movflags": "faststart"} if faststart else None) as container:
            stream = container.add_stream(codec, rate=rate, options=options)
            stream.width, stream.height = width, height
            stream.pix_fmt = CODECS[codec]
            if rotation % 360:
                stream.set_display_rotation(int(rotation))
            if gop is not None:
                stream.codec_context.gop_size = int(gop)
            if bitrate is not None or codec in ("mpeg4", "libvpx"):
                stream.bit_rate = int(bitrate or 2_000_000)
            count = 0
            for array in itertools.chain([first], iterator):
                if array.shape != first.shape or array.dtype != np.uint8:
                    raise ValueError(f"frame {count} is {array.dtype} {array.shape}, expected uint8 {first.shape}")
                count += 1
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
    except (av.FFmpegError, ValueError, OSError) as e:
        raise EncodeError(f"{path}: writing frames with {codec} failed: {e}") from e
    return path


def write_audio_only(path: str | Path, *, seconds: float = 1.0, sample_rate: int = 16000,
                     codec: str = "aac") -> Path:
    """Write a file with one audio stream and no video stream (a 440 Hz tone): a "video" decord cannot open."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * sample_rate)
    t = np.arange(n, dtype=np.float32) / sample_rate
    samples = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=sample_rate)
        stream.layout = "mono"
        chunk = 1024
        for start in range(0, n, chunk):
            block = samples[start:start + chunk][None, :]
            frame = av.AudioFrame.from_ndarray(block, format="flt", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_jpeg(path: str | Path, frame: np.ndarray) -> Path:
    """Write one uint8 RGB (H, W, 3) frame as a JPEG image (whatever the path's extension says)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="image2pipe") as container:
        stream = container.add_stream("mjpeg", rate=1)
        stream.height, stream.width = frame.shape[:2]
        stream.pix_fmt = "yuvj420p"
        image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(format="yuvj420p")
        for packet in [*stream.encode(image), *stream.encode(None)]:
            container.mux(packet)
    return path


def cut_stream_copy(src: str | Path, dst: str | Path, start_packet: int) -> Path:
    """Remux the video packets of `src` from packet index `start_packet` (in decode order) on, without re-encoding.

    With `start_packet` not on a keyframe this reproduces how many Kinetics clips were cut (`ffmpeg -ss ... -c copy`):
    the file starts mid-GOP, so its first packets reference a keyframe that is not in the file.
    """
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(src)) as inp:
        in_stream = inp.streams.video[0]
        with av.open(str(dst), mode="w") as out:
            out_stream = out.add_stream_from_template(in_stream)
            index = 0
            offset_pts = None
            offset_dts = None
            for packet in inp.demux(in_stream):
                if packet.size == 0:  # the demuxer's flush packet
                    continue
                if index >= start_packet:
                    if offset_pts is None:
                        offset_dts = packet.dts or 0
                        offset_pts = offset_dts
                    # Shift timestamps so the cut starts near zero, as a stream-copying cutter does.
                    if packet.pts is not None:
                        packet.pts -= offset_pts
                    if packet.dts is not None:
                        packet.dts -= offset_dts
                    packet.stream = out_stream
                    out.mux(packet)
                index += 1
    if index <= start_packet:
        raise EncodeError(f"{src}: has {index} packets, cannot cut from packet {start_packet}")
    return dst


def count_keyframes(path: str | Path) -> tuple[int, list[bool]]:
    """(number of video packets, keyframe flag per packet in decode order): lets tests place a mid-GOP cut."""
    flags: list[bool] = []
    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.video[0]):
            if packet.size == 0:
                continue
            flags.append(bool(packet.is_keyframe))
    return len(flags), flags


def packet_spans(path: str | Path) -> list[tuple[int, int]]:
    """(byte offset in the file, size) of every video packet in decode order: lets tests damage one packet."""
    spans = []
    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.video[0]):
            if packet.size:
                spans.append((int(packet.pos), int(packet.size)))
    return spans


def decode_all_pyav(path: str | Path) -> np.ndarray:
    """Decode every presentable frame with FFmpeg through PyAV (uint8 RGB (F, H, W, 3)): an independent reference.

    Packets FFmpeg rejects (missing references after a mid-GOP cut) are skipped, as a player would.
    """
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.best("video")
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.InvalidDataError:
                # A packet whose references are missing (a mid-GOP cut): FFmpeg drops it, so do we.
                continue
            frames.extend(f.to_ndarray(format="rgb24") for f in decoded)
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return np.stack(frames)


def write_streams(path: str | Path, streams: list[np.ndarray], fps: float) -> Path:
    """Write one H.264 video stream per uint8 (F, H, W, 3) array into one container (e.g. a camera's main and preview
    streams, or a picture-in-picture recording): a multi-stream file for tests. Even sizes only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        outs = []
        for frames in streams:
            stream = container.add_stream("libx264", rate=rate, options={"preset": "veryfast", "crf": "18"})
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = "yuv420p"
            outs.append(stream)
        for i in range(max(len(f) for f in streams)):
            for stream, frames in zip(outs, streams):
                if i < len(frames):
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
                    for packet in stream.encode(frame):
                        container.mux(packet)
        for stream in outs:
            for packet in stream.encode(None):
                container.mux(packet)
    return path
