"""The decord backend (`DecordBackend`): the only module that imports decord, and its defences against decord
0.6.0's failure modes on real-world video.

- VP9 WebM fails with "Error sending packet" for some files when decord picks its thread count (num_threads=0, the
  default, dmlc/decord#246): the thread count is always explicit (default 1; one decode process per core is also
  the fastest layout per core).
- Frame counts are over-reported (a WebM or MP4 cut mid-GOP: packets whose reference frames are not in the file are
  counted but never decoded) and indices past the real end silently return the last frame again: `probe` counts
  the frames that actually decode (sequentially, at 64x64, so it costs little more than the codec) and `frames`
  clamps indices to that count.
- Stream-copied cuts that start mid-GOP (how many Kinetics clips were cut): random access maps indices to the wrong
  frames. Such files (first keyframe not at index 0) are decoded sequentially, which yields exactly the
  presentable frames in order (FFmpeg's own numbering); random access results are checked for byte-identical
  frames at distinct indices, and fall back to sequential decoding.
- Frames of some widths (DECORD_BAD_WIDTHS) come back with a corrupt shape or a buffer-size error: they are decoded
  by decord's own scaler one pixel wider and resized back.
- Display rotation: decord applies it, so sizes are the display's everywhere.
- Multi-stream files: decord decodes its FFmpeg's "best" video stream, which cannot be chosen; `probe` reports
  that stream's facts and a size that is not decord's is an error, not a silent wrong stream.
- `get_batch` can hang forever in native code (dmlc/decord#269, #373, #375) or crash the process, and memory grows
  over many readers: callers decode through pipeline.data.isolation (a killable, recycled child process).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Iterator

import numpy as np

# Import order matters: decord loads its bundled FFmpeg/libvpx with RTLD_GLOBAL, after which PyAV's libavcodec
# binds to decord's older libvpx and cannot open the VP9 encoder ("avcodec_open2 returned 22"). Loading PyAV
# first (through encode, the one PyAV module) keeps both working in one process.
from pipeline.data.pyav_read import iter_frames
from pipeline.data.video_file import (COUNT_SIZE, MIN_SIDE, DecodeError, FileCache, VideoFile, VideoInfo, scaled_size,
                                      short_error)

import decord  # noqa: E402

log = logging.getLogger(__name__)

# FFmpeg logs every packet with missing references (mid-GOP cuts) at warning level from inside decord; failures
# reach callers as DecodeError, so the native log is silenced.
decord.logging.set_level(decord.logging.QUIET)

# Output widths for which decord 0.6.0 returns frames with a wrong channel count or raises a buffer-size mismatch
# (its RGB buffer stride guess is wrong), measured for every width from 2 to 2100 px (native and scaled).
DECORD_BAD_WIDTHS = frozenset({2, 3, 4, 6, 8, 12, 16, 24, 48, 72})
# Codecs decord 0.6's bundled FFmpeg has no decoder for (measured: it fails to find the stream), by FFmpeg name.
DECORD_UNSUPPORTED_CODECS = {"av1": "AV1 is not supported by decord 0.6's FFmpeg"}


class DecordBackend:
    """decord behind the backends' interface: `probe` a file, `frames` at indices, `stream` in order."""

    name = "decord"

    def __init__(self) -> None:
        # Files whose random access returned byte-identical frames at distinct indices and whose sequential decode
        # then agreed (the content really repeats: a black lead-in, a slide), by (path, decoded size). decord's
        # duplicate bug is a property of the file (its GOP structure), so one agreeing check clears the file for
        # this process: later clips keep random access instead of a sequential decode each.
        self.static_content = FileCache(4096)

    def unsupported(self, info: dict[str, Any]) -> str:
        """Why this backend cannot decode a file with header `info` ("" if it may)."""
        return DECORD_UNSUPPORTED_CODECS.get(info["codec"], "")

    def forget(self, path: str) -> None:
        self.static_content.forget(path)

    def clear(self) -> None:
        self.static_content.clear()

    # -- probe --------------------------------------------------------------------------------------------------
    def probe(self, file: VideoFile, info: dict[str, Any], *, exact: bool, num_threads: int,
              scan: dict[str, Any] | None = None) -> VideoInfo:
        """The file's facts as decord decodes it; a damaged file (`scan`) is counted and checked up to its clean
        head only."""
        path = file.path
        unsupported = self.unsupported(info)
        if unsupported:
            raise DecodeError(path, "decode_error", f"{unsupported} (data.decoder is 'decord'; auto or pyav "
                                                    f"decode it with PyAV)")
        limit = scan["clean_frames"] if scan and scan["damage"] else None
        result = self._probe(file, info, exact=exact, num_threads=num_threads, limit=limit)
        if limit:  # random access into the clean head must work too
            clean = min(limit, result.num_frames)
            self.frames(file, np.array([0, clean // 2, clean - 1]), short_side=None, num_threads=num_threads,
                        num_frames=clean, size=(result.width, result.height))
        return result

    def _probe(self, file: VideoFile, info: dict[str, Any], *, exact: bool, num_threads: int,
               limit: int | None) -> VideoInfo:
        path = file.path
        width, height = info["width"], info["height"]
        if len(info["video_streams"]) > 1:
            # decord decodes the stream its own FFmpeg calls "best", which need not be the one PyAV's FFmpeg
            # picked: report the size decord really decodes (one frame at native size).
            try:
                decoded_h, decoded_w = _open(file, num_threads=num_threads).next().shape[:2]
            except StopIteration:
                decoded_h, decoded_w = height, width
            if (decoded_w, decoded_h) != (width, height):
                log.debug("%s: decord decodes a %dx%d stream, not the %dx%d one", path, decoded_w, decoded_h,
                          width, height)
                width, height = int(decoded_w), int(decoded_h)
                for s in info["video_streams"]:
                    if {s["coded_width"], s["coded_height"]} == {width, height}:
                        info = {**info, "codec": s["codec"]}
                        break
        count_w, count_h = COUNT_SIZE
        reader = _open(file, num_threads=num_threads, width=count_w, height=count_h)
        reported = len(reader)
        mid_gop = _is_mid_gop(reader)
        fps = float(reader.get_avg_fps() or info["fps"] or 0.0)
        if exact:
            def make_reader():
                return _reader(file, num_threads=num_threads, width=count_w, height=count_h)

            try:
                frames = _iter_sequential(make_reader, mid_gop)
                num_frames, yielded = _count_presentable(itertools.islice(frames, limit) if limit else frames)
            except Exception as e:  # DECORDError mid-stream: a damaged file
                raise DecodeError(path, "decode_error", f"decoding failed: {short_error(e)}") from e
            if yielded > num_frames:
                # A trailing run of identical frames: decord's padding of an over-reported end, or real content (a
                # still, a fade to black, a static screen: a fully static video would count 1 frame). FFmpeg
                # through PyAV yields no padding: its count of presentable frames settles which.
                try:
                    presentable = sum(1 for _ in iter_frames(file.av_input(), size=COUNT_SIZE,
                                                             num_threads=num_threads))
                except (ValueError, RuntimeError) as e:
                    log.debug("%s: PyAV cannot count the frames (%s); keeping %d", path, short_error(e), num_frames)
                else:
                    num_frames = max(num_frames, min(yielded, presentable))
            if num_frames != reported:
                log.debug("%s: decord reports %d frames, %d decode (%d yielded)", path, reported, num_frames, yielded)
        else:
            keys = reader.get_key_indices()
            num_frames = reported - (keys[0] if keys else 0)
        if num_frames < 1:
            raise DecodeError(path, "decode_error", f"no frame decodes (decord reports {reported})")
        return VideoInfo(
            num_frames=int(num_frames), fps=fps, width=int(width), height=int(height),
            duration=float(num_frames / fps) if fps > 0 else 0.0, codec=str(info["codec"]),
            reported_frames=int(reported), mid_gop=bool(mid_gop), backend=self.name, rotation=int(info["rotation"]),
        )

    # -- frames at indices --------------------------------------------------------------------------------------
    def frames(self, file: VideoFile, idx: np.ndarray, *, short_side: int | None, num_threads: int,
               num_frames: int | None, size: tuple[int, int] | None) -> np.ndarray:
        """uint8 (len(idx), H, W, 3) for ascending unique `idx`, scaled to `short_side` while decoding; indices
        clamped to `num_frames` (the probed count; decord's own where None)."""
        path = file.path
        out_h, out_w, dec_w, reader_size = _output_size(file, size, short_side)
        reader = _open(file, num_threads=num_threads, **reader_size)
        reported = len(reader)
        mid_gop = _is_mid_gop(reader)
        limit = min(int(num_frames), reported) if num_frames else reported
        idx = np.clip(idx, 0, max(limit - 1, 0))
        static_key = (path, tuple(sorted(reader_size.items())))
        try:
            if mid_gop:
                frames = self.read_in_order(file, idx, num_threads=num_threads, reader_size=reader_size,
                                            mid_gop=True)
            else:
                frames = reader.get_batch(idx.tolist()).asnumpy()
                if static_key not in self.static_content and _repeats_distinct_indices(idx, frames):
                    log.debug("%s: random access returned identical frames for distinct indices; decoding "
                              "sequentially", path)
                    sequential = self.read_in_order(file, idx, num_threads=num_threads, reader_size=reader_size,
                                                    mid_gop=False)
                    if np.array_equal(sequential, frames):
                        self.static_content.put(static_key)
                    frames = sequential
        except DecodeError:
            raise
        except Exception as e:
            if num_threads > 1 and "Error sending packet" in str(e):
                # dmlc/decord#246: decord's threaded decoder rejects some VP9 packets with EAGAIN; one thread works.
                log.debug("%s: threaded decode failed (%s); retrying with one thread", path, short_error(e))
                return self.frames(file, idx, short_side=short_side, num_threads=1, num_frames=num_frames,
                                   size=size)
            if "DECORDArrayCopyFromTo" in str(e) or isinstance(e, ValueError):
                raise DecodeError(path, "too_small", f"decord returned corrupt frames for {dec_w}x{out_h}: "
                                                     f"{short_error(e)}") from e
            raise DecodeError(path, "decode_error", f"decoding frames {idx.min()}..{idx.max()} failed: "
                                                    f"{short_error(e)}") from e
        if frames.shape != (len(idx), out_h, dec_w, 3):
            raise DecodeError(path, "too_small" if min(out_w, out_h) < MIN_SIDE else "decode_error",
                              f"decord returned frames of shape {frames.shape[1:]}, expected {(out_h, dec_w, 3)}")
        if dec_w != out_w:
            frames = _resize_width(frames, out_w)
        return frames

    def read_in_order(self, file: VideoFile, idx: np.ndarray, *, num_threads: int, reader_size: dict[str, int],
                      mid_gop: bool) -> np.ndarray:
        """Read frames in order up to max(idx) and keep the requested ones (indices past the end get the last
        frame): the reference numbering where random access cannot be trusted."""
        wanted = set(idx.tolist())
        last_wanted = int(idx.max())
        kept: dict[int, np.ndarray] = {}
        last = None
        for position, frame in enumerate(_iter_sequential(
                lambda: _reader(file, num_threads=num_threads, **reader_size), mid_gop)):
            last = frame
            if position in wanted:
                kept[position] = frame
            if position >= last_wanted:
                break
        if last is None:
            raise RuntimeError("no frame decodes sequentially")
        return np.stack([kept.get(int(i), last) for i in idx])

    # -- frames in order ----------------------------------------------------------------------------------------
    def stream(self, file: VideoFile, *, short_side: int | None, num_threads: int, size: tuple[int, int] | None
               ) -> tuple[tuple[int, int], Iterator[np.ndarray]]:
        """((out_h, out_w), the file's frames in presentation order at that size). Raises DecodeError decode_error
        where decord cannot open the file or decodes another stream than `size` describes."""
        out_h, out_w, dec_w, reader_size = _output_size(file, size, short_side)
        mid_gop = _is_mid_gop(_open(file, num_threads=num_threads, **reader_size))
        frames = _iter_sequential(lambda: _open(file, num_threads=num_threads, **reader_size), mid_gop)
        first = next(frames, None)
        if first is not None and first.shape[:2] != (out_h, dec_w):
            # Another stream than the one `size` describes (multi-stream files): decord cannot pick streams.
            raise DecodeError(file.path, "decode_error", f"decord returned frames of shape {first.shape}, "
                                                         f"expected {(out_h, dec_w, 3)}")
        frames = itertools.chain([] if first is None else [first], frames)
        if dec_w != out_w:
            frames = (_resize_width(f[None], out_w)[0] for f in frames)
        return (out_h, out_w), frames


# --------------------------------------------------------------------------------------------------------------
# decord readers
# --------------------------------------------------------------------------------------------------------------

def _reader(file: VideoFile, *, num_threads: int, width: int = -1, height: int = -1) -> decord.VideoReader:
    return decord.VideoReader(file.av_input(), ctx=decord.cpu(0), width=width, height=height,
                              num_threads=num_threads)


def _open(file: VideoFile, *, num_threads: int, width: int = -1, height: int = -1) -> decord.VideoReader:
    try:
        return _reader(file, num_threads=num_threads, width=width, height=height)
    except Exception as e:  # decord raises DECORDError, RuntimeError or AssertionError for unreadable files
        # Classify with FFmpeg's view of the header; if even that reads fine, decord itself failed.
        cause = DECORD_UNSUPPORTED_CODECS.get(file.header()["codec"])
        if cause:  # decord's own message ("cannot find video stream with wanted index: -1") hides this
            raise DecodeError(file.path, "decode_error", f"{cause} (decode it with the PyAV backend: data.decoder "
                                                         f"auto or pyav)") from e
        raise DecodeError(file.path, "decode_error", f"decord cannot open it: {short_error(e)}") from e


def _output_size(file: VideoFile, size: tuple[int, int] | None, short_side: int | None
                 ) -> tuple[int, int, int, dict[str, int]]:
    """(out_h, out_w, decoded width, decord reader size kwargs) for frames scaled to `short_side`."""
    if size is None:
        info = file.header()
        size = (info["width"], info["height"])
        if len(info["video_streams"]) > 1:  # decord's FFmpeg may pick another stream than PyAV's: ask decord
            try:
                height, width = _open(file, num_threads=1).next().shape[:2]
                size = (width, height)
            except StopIteration:
                pass
    width, height = int(size[0]), int(size[1])
    out_h, out_w = scaled_size(height, width, short_side)
    # decord corrupts frames of some widths: decode one pixel wider and resize back (see DECORD_BAD_WIDTHS).
    dec_w = out_w + 1 if out_w in DECORD_BAD_WIDTHS else out_w
    reader_size = dict(width=dec_w, height=out_h) if (dec_w, out_h) != (width, height) else {}
    return out_h, out_w, dec_w, reader_size


def _is_mid_gop(reader: decord.VideoReader) -> bool:
    keys = reader.get_key_indices()
    # No keyframe flags at all: random access has nothing to seek to either.
    return not keys or keys[0] > 0


def _iter_sequential(make_reader: Callable[[], decord.VideoReader], mid_gop: bool) -> Iterator[np.ndarray]:
    """Yield decoded frames (uint8 numpy) in presentation order.

    Reading from the start with next() yields FFmpeg's presentable frames for most mid-GOP cuts; for some (B-frames
    before the first keyframe) decord's initial seek fails and it yields nothing: then seek to the first keyframe
    and read from there, which is where the presentable frames start.
    """
    reader = make_reader()
    yielded = 0
    try:
        while True:
            yield reader.next().asnumpy()
            yielded += 1
    except StopIteration:
        pass
    if yielded or not mid_gop:
        return
    reader = make_reader()
    keys = reader.get_key_indices()
    if not keys:
        return
    reader.seek(keys[0])
    try:
        while True:
            yield reader.next().asnumpy()
    except StopIteration:
        return


def _count_presentable(frames) -> tuple[int, int]:
    """(frames that decode, frames decord yielded): a trailing run of byte-identical frames counts once.

    decord pads the end of an over-reported stream with copies of the last real frame. A real video ending in
    identical frames (a still) would lose them: the probe asks PyAV for the true count when the two differ.
    """
    total, last_distinct, previous = 0, 0, None
    for frame in frames:
        total += 1
        if previous is None or not np.array_equal(frame, previous):
            last_distinct = total
        previous = frame
    return last_distinct, total


def _repeats_distinct_indices(idx: np.ndarray, frames: np.ndarray) -> bool:
    """True if two different indices came back as byte-identical frames (decord's silent duplicates)."""
    order = np.argsort(idx, kind="stable")
    for a, b in zip(order[:-1], order[1:]):
        if idx[a] != idx[b] and np.array_equal(frames[a], frames[b]):
            return True
    return False


def _resize_width(frames: np.ndarray, width: int) -> np.ndarray:
    """Linear resampling along the width only (half-pixel centres, like torch's bilinear with align_corners=False)
    to undo a decode one pixel wider. numpy, so that the decode process never imports torch: a child with torch
    costs ~1 s more to start and ~300 MB more memory."""
    src = frames.shape[2]
    x = np.clip((np.arange(width) + 0.5) * (src / width) - 0.5, 0, src - 1)
    x0 = np.floor(x).astype(np.int64)
    x1 = np.minimum(x0 + 1, src - 1)
    w = (x - x0).astype(np.float32)[None, None, :, None]
    out = frames[:, :, x0].astype(np.float32) * (1 - w) + frames[:, :, x1].astype(np.float32) * w
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
