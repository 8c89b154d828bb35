"""Reading video through FFmpeg (PyAV): header facts (`stream_info`), frames in presentation order
(`iter_frames`), frames at given presentation times (`frames_at`, `indexed_frames_at`), the packet index, and the
damage scan (`scan_stream`: every error the decoder or demuxer reports).

pipeline.data.pyav_backend composes these into the PyAV decode backend, pipeline.data.decord_backend uses
`iter_frames` for what decord 0.6 cannot seek, and pipeline.data.video_file the header and the scan. Writing
video is pipeline.data.encode's.
"""

from __future__ import annotations

import bisect
import logging
import re

import numpy as np

import av
from av.video.reformatter import VideoReformatter


# Packets to read for the first decodable frame (its display matrix) before giving up: covers the undecodable head
# of a mid-GOP cut (at most a GOP of packets, usually far fewer).
_ROTATION_PACKETS = 300


def _rotation(container, stream) -> int:
    """The display rotation (0, 90, 180, 270; counter-clockwise) of `stream`, from its first decodable frame.

    FFmpeg exposes the display matrix on decoded frames (PyAV has no stream-level getter); phones store portrait
    video as landscape frames plus a 90 or 270 degree display rotation.
    """
    for n, packet in enumerate(container.demux(stream)):
        if n >= _ROTATION_PACKETS:
            break
        try:
            frames = packet.decode()
        except av.FFmpegError:
            continue  # a packet whose references are missing (mid-GOP cut)
        for frame in frames:
            return int(round(frame.rotation / 90.0)) * 90 % 360
    return 0


def stream_info(source) -> dict | None:
    """Header facts of the video stream FFmpeg picks (av_find_best_stream, as decord does) of a path or binary
    file-like object.

    Returns {"codec", "width", "height" (as displayed: swapped for a 90/270 degree display rotation), "coded_width",
    "coded_height", "rotation", "fps", "frames" (the container's claim, 0 when unknown), "index" (the stream's index
    among the video streams), "format" (FFmpeg's demuxer name), "video_streams" (codec and coded size of every
    video stream)}, or
    None when the container holds no video stream (an audio-only file). Raises `ValueError` when FFmpeg cannot open
    the container. decode.probe uses it for what decord does not expose (codec name, stream presence, rotation).
    """
    try:
        with av.open(source, mode="r") as container:
            if not container.streams.video:
                return None
            stream = container.streams.best("video") or container.streams.video[0]
            ctx = stream.codec_context
            rate = stream.average_rate or stream.guessed_rate or 0
            facts = {
                # The codec, not the decoder FFmpeg chose for it ("av1", not "libdav1d").
                "codec": getattr(ctx.codec, "canonical_name", None) or ctx.name or "unknown",
                "coded_width": int(ctx.width),
                "coded_height": int(ctx.height),
                "fps": float(rate) if rate else 0.0,
                "frames": int(stream.frames or 0),
                "index": list(container.streams.video).index(stream),
                # The demuxer FFmpeg chose ("mov,mp4,m4a,3gp,3g2,mj2", "jpeg_pipe", ...): tells a still image apart.
                "format": str(container.format.name),
                "video_streams": [{"codec": getattr(s.codec_context.codec, "canonical_name", None) or "unknown",
                                   "coded_width": int(s.codec_context.width),
                                   "coded_height": int(s.codec_context.height)} for s in container.streams.video],
            }
            facts["rotation"] = _rotation(container, stream)
    except av.FFmpegError as e:
        raise ValueError(f"FFmpeg cannot open the container: {e}") from e
    swap = facts["rotation"] in (90, 270)
    facts["width"], facts["height"] = ((facts["coded_height"], facts["coded_width"]) if swap
                                       else (facts["coded_width"], facts["coded_height"]))
    return facts


def iter_frames(source, *, stream_index: int | None = None, stream_size: tuple[int, int] | None = None,
                size: tuple[int, int] | None = None, num_threads: int = 1):
    """Yield the presentable frames of a video stream in presentation order as uint8 RGB (H, W, 3), in display
    orientation (the display matrix applied): the PyAV decode backend.

    `stream_index`: among the video streams (None: the one FFmpeg picks, as `stream_info`); or `stream_size`: the
    first stream of this (width, height) in either orientation (the stream a manifest row describes; decord's
    older FFmpeg may pick another "best" stream than PyAV's), else FFmpeg's pick. `size`: the output
    (width, height) in display orientation (None: native); scaled by FFmpeg's swscale before the rotation.
    Packets FFmpeg rejects (missing references after a mid-GOP cut) are skipped, as a player would; so the
    numbering is FFmpeg's presentable frames, the same as decord's sequential decoding of such files.
    Raises `ValueError` when the container cannot be opened and `RuntimeError` for a stream that fails mid-way.
    """
    try:
        container = av.open(source, mode="r")
    except av.FFmpegError as e:
        raise ValueError(f"FFmpeg cannot open the container: {e}") from e
    with container:
        streams = container.streams.video
        if not streams:
            raise ValueError("the container holds no video stream")
        stream = streams[stream_index] if stream_index is not None else _pick_stream(container, stream_size)
        stream.codec_context.thread_count = int(num_threads)
        reformatter = VideoReformatter()
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                continue
            except av.FFmpegError as e:
                raise RuntimeError(f"FFmpeg failed decoding a packet: {e}") from e
            for frame in frames:
                yield _display_array(frame, size, reformatter)


# FFmpeg's log level for errors (AV_LOG_ERROR): what a demuxer logs when the container's structure is broken (a
# Matroska element that runs past its parent) before it ends the stream as if the file ended there.
_AV_LOG_ERROR = 16


def scan_stream(source, *, stream_size: tuple[int, int] | None = None, num_threads: int = 1) -> dict:
    """Decode every packet of the stream `iter_frames` decodes (no pixel conversion) and report damage.

    Returns {"frames" (presentable frames), "clean_frames" (frames output before the first damage), "packets",
    "declared_frames" (the container's claim, 0 when unknown), "damage" (None, "corrupt" or "truncated"),
    "detail"}. Damage is what FFmpeg itself signals: a packet the decoder rejects or a frame it conceals (flagged
    corrupt) after the first decoded frame (before it, the missing references of a mid-GOP cut are expected), a
    packet the demuxer marks corrupt (cut short), an error the demuxer logs (a broken element: it skips to the
    next one it can read, or ends the stream there), or fewer packets than the container's index declares (the
    file ends before its index says: truncated). Raises `ValueError` when the container cannot be opened.
    """
    frames = packets = 0
    damage: tuple[str, int, str] | None = None  # (reason, clean frames, detail): the first damage met

    def damaged(reason: str, detail: str) -> None:
        nonlocal damage
        if damage is None:
            damage = (reason, frames, detail)

    previous_level, previous_skip = av.logging.get_level(), av.logging.get_skip_repeated()
    av.logging.set_level(av.logging.ERROR)  # delivered to the capture below, not printed
    # PyAV holds back a message equal to the previous one (the same damage in the next file would go unseen).
    av.logging.set_skip_repeated(False)
    try:
        with av.logging.Capture() as logs:
            try:
                container = av.open(source, mode="r")
            except av.FFmpegError as e:
                raise ValueError(f"FFmpeg cannot open the container: {e}") from e
            with container:
                stream = _pick_stream(container, stream_size)
                stream.codec_context.thread_count = int(num_threads)
                declared = int(stream.frames or 0)
                demuxer = str(container.format.name)
                seen_logs = 0
                # Byte offset of a broken element the demuxer reported: packets from there on come after it.
                broken_at: tuple[int, str] | None = None

                def demuxer_errors() -> None:
                    nonlocal seen_logs, broken_at
                    for level, name, message in logs[seen_logs:]:
                        if level <= _AV_LOG_ERROR and name == demuxer:
                            found = _OFFSET.search(message)
                            if found and broken_at is None:
                                broken_at = (int(found.group(1), 0), message.strip())
                            elif not found:
                                damaged("corrupt", f"the {demuxer} demuxer: {message.strip()}")
                    seen_logs = len(logs)

                demuxer_errors()  # what the demuxer met while reading ahead to open the file
                try:
                    for packet in container.demux(stream):
                        if packet.size:
                            packets += 1
                            if broken_at and packet.pos is not None and packet.pos + packet.size > broken_at[0]:
                                damaged("corrupt", f"the {demuxer} demuxer: {broken_at[1]}")
                            if packet.is_corrupt:
                                damaged("corrupt", f"the demuxer marks packet {packets} corrupt (cut short)")
                        try:
                            decoded = packet.decode()
                        except av.FFmpegError as e:
                            if frames:
                                damaged("corrupt", f"packet {packets} does not decode: {e}")
                            decoded = []
                        for frame in decoded:
                            if frame.is_corrupt:
                                damaged("corrupt", f"frame {frames} is concealed or corrupt (decode errors)")
                            frames += 1
                        demuxer_errors()
                except av.FFmpegError as e:
                    damaged("corrupt", f"demuxing stopped after packet {packets}: {e}")
                demuxer_errors()
                if broken_at:
                    damaged("corrupt", f"the {demuxer} demuxer: {broken_at[1]}")
    finally:
        av.logging.set_level(previous_level)
        av.logging.set_skip_repeated(previous_skip)
    if declared and packets < declared:
        # A stream that ends before its index: the damage is the missing tail, whatever the cut packet showed.
        clean = damage[1] if damage else frames
        damage = ("truncated", clean, f"{packets} of the {declared} packets its index declares are in the file")
    return {"frames": frames, "clean_frames": damage[1] if damage else frames, "packets": packets,
            "declared_frames": declared, "damage": damage[0] if damage else None,
            "detail": damage[2] if damage else ""}


# The byte offset a demuxer's error names ("Element at 0xb1f ending at ... exceeds containing master element").
_OFFSET = re.compile(r"\bat (0x[0-9a-fA-F]+|\d+)\b")


def _pick_stream(container, stream_size: tuple[int, int] | None):
    streams = container.streams.video
    if not streams:
        raise ValueError("the container holds no video stream")
    stream = container.streams.best("video") or streams[0]
    if stream_size is not None and len(streams) > 1:
        wanted = sorted(int(v) for v in stream_size)
        stream = next((s for s in streams if sorted((s.codec_context.width, s.codec_context.height)) == wanted),
                      stream)
    return stream


def _open_input(source):
    try:
        return av.open(source, mode="r")
    except av.FFmpegError as e:
        raise ValueError(f"FFmpeg cannot open the container: {e}") from e


def packet_index(source, *, stream_size: tuple[int, int] | None = None) -> tuple[list[int], list[int]] | None:
    """(pts of every packet in presentation order, pts of the keyframes) of the stream `iter_frames` decodes, read
    from the packets alone (no decoding); None when packets cannot stand for frames: a packet without pts, or a
    first packet (decode order) that is not a keyframe (a mid-GOP cut, whose head does not decode)."""
    with _open_input(source) as container:
        return _packet_index(container, _pick_stream(container, stream_size))


def _packet_index(container, stream) -> tuple[list[int], list[int]] | None:
    pts, keys = [], []
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's flush packet
            continue
        if packet.pts is None or (not pts and not packet.is_keyframe):
            return None
        pts.append(int(packet.pts))
        if packet.is_keyframe:
            keys.append(int(packet.pts))
    return sorted(pts), sorted(keys)


def frames_at(source, wanted_pts: list[int], keyframe_pts: list[int], *, stream_size: tuple[int, int] | None = None,
              size: tuple[int, int] | None = None, num_threads: int = 1) -> dict[int, np.ndarray]:
    """The frames whose pts are in `wanted_pts` -> {pts: uint8 RGB (H, W, 3)} in display orientation (as
    `iter_frames`), by seeking to the keyframe before each one (`keyframe_pts` from `packet_index`) and decoding
    forward; consecutive targets in the same GOP share one pass. Frames are identified by their pts, never by
    counting, so a frame that is not found is missing from the result rather than replaced by another."""
    with _open_input(source) as container:
        stream = _pick_stream(container, stream_size)
        return _frames_at(container, stream, wanted_pts, keyframe_pts, size=size, num_threads=num_threads)


def indexed_frames_at(source, positions: list[int], *, num_frames: int, stream_size: tuple[int, int] | None = None,
                      size: tuple[int, int] | None = None, num_threads: int = 1
                      ) -> tuple[tuple[list[int], list[int]] | None, dict[int, np.ndarray] | None]:
    """`packet_index` and `frames_at` through one opening of the file (opening costs FFmpeg's stream probing):
    (the index, {position: frame} of the frames at these positions of the presentation order), the frames None
    where the packets do not stand 1:1 for `num_frames` frames (see packet_index)."""
    with _open_input(source) as container:
        stream = _pick_stream(container, stream_size)
        index = _packet_index(container, stream)
        if index is None or len(index[0]) != num_frames or not index[1]:
            return index, None
        pts, keys = index
        got = _frames_at(container, stream, [pts[int(i)] for i in positions], keys, size=size,
                         num_threads=num_threads)
        return index, {int(i): got[pts[int(i)]] for i in positions if pts[int(i)] in got}


def _frames_at(container, stream, wanted_pts: list[int], keyframe_pts: list[int], *, size: tuple[int, int] | None,
               num_threads: int) -> dict[int, np.ndarray]:
    targets = sorted(set(int(p) for p in wanted_pts))
    got: dict[int, np.ndarray] = {}
    stream.codec_context.thread_count = int(num_threads)
    frames, last = None, None
    for target in targets:
        if target in got:
            continue
        k = bisect.bisect_right(keyframe_pts, target) - 1
        key = keyframe_pts[max(k, 0)]
        # Decoding on from where the last pass stopped costs less than a seek when no keyframe lies between.
        if frames is None or last is None or not key <= last < target:
            try:
                container.seek(key, stream=stream, backward=True, any_frame=False)
            except av.FFmpegError as e:
                raise RuntimeError(f"FFmpeg cannot seek to pts {key}: {e}") from e
            frames = _decoded(container, stream, set(targets))
        for frame in frames:
            if frame.pts is None:
                continue
            last = int(frame.pts)
            if last in targets and last not in got:
                got[last] = frame
            if last >= target:
                break
        else:
            frames = None  # the stream ended: the next target needs a seek
    # One scaler for the clip: PyAV's frame.reformat builds a new swscale context for every frame.
    reformatter = VideoReformatter()
    return {p: _display_array(f, size, reformatter) for p, f in got.items()}


def _decoded(container, stream, wanted: set[int] | None = None):
    """The decoded frames of `stream` from the container's position, skipping packets FFmpeg rejects.

    With `wanted` (pts), a packet of another frame is decoded only if other frames may reference it: FFmpeg skips
    non-reference frames (skip_frame NONREF, decided per packet), e.g. most B-frames of x264's default GOP, which
    no target needs. Those skipped frames are never output, so callers match frames by pts, never by count."""
    context = stream.codec_context
    for packet in container.demux(stream):
        if wanted is not None:
            context.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in wanted else "NONREF"
        try:
            yield from packet.decode()
        except av.InvalidDataError:
            continue
        except av.FFmpegError as e:
            raise RuntimeError(f"FFmpeg failed decoding a packet: {e}") from e


def _display_array(frame, size: tuple[int, int] | None, reformatter: VideoReformatter | None = None) -> np.ndarray:
    """One decoded frame -> uint8 RGB (H, W, 3) in display orientation, scaled to `size` (display width, height)."""
    turns = int(round(frame.rotation / 90.0)) % 4  # counter-clockwise quarter turns (np.rot90's convention)
    # A reformatter kept across frames keeps its swscale context: frame.to_ndarray(format=...) and frame.reformat
    # build a new one per frame, which costs more than converting a 256 px frame.
    scaler = reformatter or VideoReformatter()
    if size is None:
        array = scaler.reformat(frame, format="rgb24").to_ndarray()
    else:
        width, height = int(size[0]), int(size[1])
        if turns % 2:  # scale in the coded orientation: the display's width is the coded height
            width, height = height, width
        # Bilinear: cheap, and the transforms resize and crop again downstream.
        array = scaler.reformat(frame, width=width, height=height, format="rgb24", interpolation="BILINEAR").to_ndarray()
    if turns:
        array = np.ascontiguousarray(np.rot90(array, k=turns))
    return array
