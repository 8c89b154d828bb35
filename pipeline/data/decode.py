"""Video decoding: the only module that imports decord. Robust to decord 0.6.0's failure modes.

What goes wrong with decord 0.6.0 on real-world video, and what this module does about it:
- VP9 WebM fails with "Error sending packet" for some files when decord picks its thread count (num_threads=0,
  the default, dmlc/decord#246): the thread count is always explicit here (default 1; one decode process per core
  is also the fastest layout per core).
- Frame counts are over-reported (e.g. a WebM or MP4 cut mid-GOP: packets whose reference frames are not in the
  file are counted but never decoded) and indices past the real end silently return the last frame again.
  `probe` counts the frames that actually decode (sequentially, at a tiny output size so it costs little more
  than the codec itself) and `decode_frames` clamps indices to that count (`num_frames`).
- Stream-copied cuts that start mid-GOP (how many Kinetics clips were cut): random access maps indices to the
  wrong frames and returns the same frame for several indices. Such files (first keyframe not at index 0) are
  decoded sequentially, which yields exactly the presentable frames in order (FFmpeg's own numbering); random
  access results are checked for byte-identical frames at distinct indices, and fall back to sequential decoding.
- Frames of some widths (2, 3, 4, 6, 8, 12, 16, 24, 48, 72 px: every width in 2..2100 that failed) come back with
  a corrupt shape or a buffer-size error: such frames are decoded by decord's own scaler at a width it handles
  (one pixel wider) and resized back. `probe` rejects videos whose short side is below `min_side` as too_small.
- A missing file, a directory, an empty file or a text file all raise the same vague error: the path is checked
  first and `DecodeError` carries a stable reason code (missing, unreadable, is_directory, empty_file, not_a_video,
  no_video_stream, too_small, truncated, corrupt, decode_error, timeout, crashed) and the path.
- Display rotation (phone video: landscape frames + a 90/270 degree display matrix): decord applies it, so sizes
  are the display's everywhere (`probe`, the manifest, the output size asked of decord); the PyAV backend applies
  the same matrix.
- Codecs decord 0.6's bundled FFmpeg cannot decode (AV1: "cannot find video stream with wanted index: -1") and
  files it cannot open: the PyAV backend (pipeline.data.encode.iter_frames) decodes them behind the same
  interface (`backend=`); `probe(decoder="auto")` chooses it where decord fails, and on files with a short side of
  TRIAL_MIN_SIDE or more unless a timed trial clip shows decord faster, and reports the choice (`VideoInfo.backend`,
  the manifest's `backend` column), so training decodes each file the way the probe chose.
- Damaged files (a download cut after its front-loaded index, bytes overwritten mid-stream, an AVI whose writer
  crashed, a Matroska block that runs past its cluster) open and decode partly: FFmpeg conceals or skips the
  damage and decord and PyAV count frames that are garbage or absent. `probe` first decodes the stream once with
  FFmpeg (pipeline.data.encode.scan_stream: every error the decoder or demuxer reports, packets missing against
  the index) and rejects the file as corrupt / truncated, or with `accept_partial` keeps only the frames before
  the damage. A still image renamed to a video name is not_a_video.
- Multi-stream files: decord decodes FFmpeg's "best" video stream; `probe` reports that stream's facts.
- `get_batch` can hang forever in native code (dmlc/decord#269, #373, #375) or crash the process, and memory
  grows over many readers: callers decode through pipeline.data.isolation (a killable, recycled child process,
  whose native log lines go to a file, not the console).
Paths may be URIs (s3://, gs://, file://, ...): the bytes are read through pyarrow.fs and decord gets a file-like
object (decord copies it into memory; fine for clips, which are a few MB).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from pipeline import storage

# Import order matters: decord loads its bundled FFmpeg/libvpx with RTLD_GLOBAL, after which PyAV's libavcodec
# binds to decord's older libvpx and cannot open the VP9 encoder ("avcodec_open2 returned 22"). Loading PyAV
# first (through encode, the one PyAV module) keeps both working in one process.
from pipeline.data.encode import frames_at, indexed_frames_at, iter_frames, scan_stream, stream_info

import decord  # noqa: E402

log = logging.getLogger(__name__)

# FFmpeg logs every packet with missing references (mid-GOP cuts) at warning level from inside decord; failures
# reach callers as DecodeError, so the native log is silenced.
decord.logging.set_level(decord.logging.QUIET)

REASONS = frozenset({
    "missing", "unreadable", "is_directory", "empty_file", "not_a_video", "no_video_stream", "too_small", "truncated",
    "decode_error", "timeout", "crashed", "corrupt",
})
# Damage `probe` finds in a file that otherwise opens: "corrupt" (packets or container structure the decoder or
# demuxer rejects, frames it conceals) and "truncated" (the stream ends before its index says, an unfinalised
# container). Such a file is rejected unless the caller accepts its clean head (`accept_partial`).
DAMAGE_REASONS = ("corrupt", "truncated")
# FFmpeg demuxers that read single images: a JPEG or PNG renamed .mp4 opens as a one-frame "video".
_IMAGE_DEMUXERS = ("image2", "jpeg_pipe", "png_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "gif_pipe", "jpegxl_pipe")
# Videos whose short side is below this are rejected by `probe` (a 112-224 px crop from them is mostly blur).
MIN_SIDE = 32
# Output widths for which decord 0.6.0 returns frames with a wrong channel count or raises a buffer-size mismatch
# (its RGB buffer stride guess is wrong), measured for every width from 2 to 2100 px (native and scaled).
DECORD_BAD_WIDTHS = frozenset({2, 3, 4, 6, 8, 12, 16, 24, 48, 72})
# Size of the frames `probe` decodes to count them: only their identity matters, and scaling in decord's
# converter makes counting cost little more than the codec.
_COUNT_SIZE = (64, 64)
# The decode backends: "decord" (the default where it works), "pyav" (FFmpeg through PyAV: every codec of PyAV's
# FFmpeg; seeks by packet timestamps where they stand for the frames, reads sequentially elsewhere), "auto" (decord,
# PyAV where decord cannot decode the file).
BACKENDS = ("auto", "decord", "pyav")
# Codecs decord 0.6's bundled FFmpeg has no decoder for (measured: it fails to find the stream), by FFmpeg name.
DECORD_UNSUPPORTED_CODECS = {"av1": "AV1 is not supported by decord 0.6's FFmpeg"}
_HEAD_BYTES = 4096
# `probe(decoder="auto")` times a clip of TRIAL_FRAMES frames at short side TRIAL_SHORT_SIDE (the training default)
# with each backend on files whose short side is at least TRIAL_MIN_SIDE, and keeps decord only where it takes less
# than TRIAL_MARGIN times PyAV's CPU time and decodes the same frames (mean absolute difference per frame below
# TRIAL_MAX_DIFF: two FFmpeg builds' scalers differ by a few levels). PyAV wins ties: it was the faster backend on
# every video `eco bench decode` measured (docs/benchmarks.md section 8), and one cold clip's timing is noisy.
TRIAL_FRAMES = 8
TRIAL_SHORT_SIDE = 256
TRIAL_MIN_SIDE = 128
TRIAL_MARGIN = 0.9
TRIAL_MAX_DIFF = 12.0


class DecodeError(RuntimeError):
    """A video that cannot be used: `.path`, `.reason` (a code from REASONS) and `.detail` (human-readable)."""

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown decode failure reason {reason!r}; valid: {', '.join(sorted(REASONS))}")
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # crosses process boundaries (IsolatedDecoder, Ray) with its fields intact
        return (DecodeError, (self.path, self.reason, self.detail))


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` found. `num_frames` counts frames that actually decode; `reported_frames` is decord's claim."""

    num_frames: int
    fps: float
    width: int
    height: int
    duration: float
    codec: str
    reported_frames: int = 0
    # The first keyframe is not the first frame (a stream-copied cut): decoded sequentially.
    mid_gop: bool = False
    # The backend that decoded the file in the probe ("decord" or "pyav"): decode it with the same one.
    backend: str = "decord"
    # Display rotation (counter-clockwise degrees); width and height are already the display's.
    rotation: int = 0
    # "" for a whole file; "corrupt" or "truncated" for a damaged one accepted with `accept_partial`, whose
    # num_frames then counts only the frames that decode cleanly before the damage.
    damaged: str = ""
    # CPU milliseconds of auto's trial clip per backend ({} when not measured); not part of a probe's identity.
    trial_ms: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------------
# Opening: path checks, URIs, classified errors
# --------------------------------------------------------------------------------------------------------------

def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at the end of the head is still text.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in "\t\n\r\f\v" for c in text)


def _known_container(head: bytes) -> bool:
    """Magic numbers of the containers video datasets use: MP4/MOV, Matroska/WebM, AVI, MPEG-TS, FLV, Ogg."""
    return (
        head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
        or head[:4] == b"\x1a\x45\xdf\xa3"
        or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
        or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47)
        or head[:3] == b"FLV"
        or head[:4] == b"OggS"
    )


def _read_source(path: str) -> tuple[str | bytes, bytes]:
    """Check the path; return (what decord opens: a local path or the file's bytes, the first bytes).

    Raises DecodeError missing / is_directory / empty_file / not_a_video (text) with the path.
    """
    path = str(path)
    if storage.is_uri(path):
        import pyarrow.fs as pafs

        try:
            fs, inner = storage.resolve(path)
            info = fs.get_file_info(inner)
        except (OSError, ValueError) as e:
            raise DecodeError(path, "missing", f"cannot reach it through pyarrow.fs: {e}") from e
        if info.type == pafs.FileType.NotFound:
            raise DecodeError(path, "missing", "no such object")
        if info.type == pafs.FileType.Directory:
            raise DecodeError(path, "is_directory", "a directory, not a video file")
        if info.size == 0:
            raise DecodeError(path, "empty_file", "0 bytes")
        try:
            with fs.open_input_file(inner) as f:
                data = f.read()
        except OSError as e:
            raise DecodeError(path, "missing", f"cannot read it through pyarrow.fs: {e}") from e
        source, head = data, data[:_HEAD_BYTES]
    else:
        if not os.path.lexists(path):
            raise DecodeError(path, "missing", "no such file")
        if os.path.islink(path) and not os.path.exists(path):
            raise DecodeError(path, "missing", f"a dangling symbolic link (to {os.readlink(path)})")
        if os.path.isdir(path):
            raise DecodeError(path, "is_directory", "a directory, not a video file")
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(_HEAD_BYTES)
        except FileNotFoundError as e:  # removed between the checks above and the read
            raise DecodeError(path, "missing", f"cannot read it: {e}") from e
        except OSError as e:  # permission denied, I/O error: the file is there but cannot be read
            raise DecodeError(path, "unreadable", f"cannot read it: {e}") from e
        if size == 0:
            raise DecodeError(path, "empty_file", "0 bytes")
        source = path
    if _looks_like_text(head):
        raise DecodeError(path, "not_a_video", f"looks like a text file: {head[:40]!r}")
    return source, head


def _reader(source: str | bytes, *, num_threads: int, width: int = -1, height: int = -1) -> decord.VideoReader:
    if isinstance(source, bytes):
        return decord.VideoReader(io.BytesIO(source), ctx=decord.cpu(0), width=width, height=height,
                                  num_threads=num_threads)
    return decord.VideoReader(source, ctx=decord.cpu(0), width=width, height=height, num_threads=num_threads)


def _stream_info(path: str, source: str | bytes, head: bytes) -> dict[str, Any]:
    """Codec, native size and fps from the container header (FFmpeg through pipeline.data.encode)."""
    try:
        info = stream_info(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (ValueError, OSError) as e:
        if _known_container(head):
            raise DecodeError(path, "truncated", f"a known container whose index cannot be read: {e}") from e
        raise DecodeError(path, "not_a_video", f"no known container format: {e}") from e
    if info is None:
        raise DecodeError(path, "no_video_stream", "the container holds no video stream (audio only?)")
    if info["width"] <= 0 or info["height"] <= 0:
        raise DecodeError(path, "decode_error", f"video stream without a frame size ({info['codec']})")
    return info


def _open(path: str, source: str | bytes, head: bytes, *, num_threads: int, width: int = -1,
          height: int = -1) -> decord.VideoReader:
    try:
        return _reader(source, num_threads=num_threads, width=width, height=height)
    except Exception as e:  # decord raises DECORDError, RuntimeError or AssertionError for unreadable files
        # Classify with FFmpeg's view of the header; if even that reads fine, decord itself failed.
        info = _stream_info(path, source, head)
        cause = DECORD_UNSUPPORTED_CODECS.get(info["codec"])
        if cause:  # decord's own message ("cannot find video stream with wanted index: -1") hides this
            raise DecodeError(path, "decode_error", f"{cause} (decode it with the PyAV backend: data.decoder "
                                                    f"auto or pyav)") from e
        raise DecodeError(path, "decode_error", f"decord cannot open it: {short_error(e)}") from e


def short_error(e: BaseException) -> str:
    """`Type: last line of the message`, at most 300 characters: a failure detail that fits a log line."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:300]


def scaled_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(height, width) after scaling the short side to `short_side` (None: unchanged).

    The same rounding as pipeline.data.transforms.short_side_size (a test checks they agree); repeated here so
    the decode process never imports torch.
    """
    if not short_side:
        return height, width
    if height <= width:
        return short_side, max(1, round(width * short_side / height))
    return max(1, round(height * short_side / width)), short_side


def _is_mid_gop(reader: decord.VideoReader) -> bool:
    keys = reader.get_key_indices()
    # No keyframe flags at all: random access has nothing to seek to either.
    return not keys or keys[0] > 0


# --------------------------------------------------------------------------------------------------------------
# Sequential decoding: the reference numbering for files whose random access cannot be trusted
# --------------------------------------------------------------------------------------------------------------

def _iter_sequential(make_reader: Callable[[], decord.VideoReader], mid_gop: bool):
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
    identical frames (a still) would lose them: `probe` asks PyAV for the true count when the two differ.
    """
    total, last_distinct, previous = 0, 0, None
    for frame in frames:
        total += 1
        if previous is None or not np.array_equal(frame, previous):
            last_distinct = total
        previous = frame
    return last_distinct, total


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------

def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}; valid: {', '.join(BACKENDS)}")


def probe(path: str, *, num_threads: int = 1, min_side: int = MIN_SIDE, exact: bool = True,
          decoder: str = "auto", accept_partial: bool = False) -> VideoInfo:
    """Facts about a video for the manifest; `num_frames` counts frames that actually decode.

    `exact` decodes the whole stream once with FFmpeg (PyAV, no pixel conversion) to find damage and count the
    presentable frames, and once with decord at 64x64 where decord is to decode it; with exact=False the count is
    decord's index minus the undecodable head of a mid-GOP cut (no decoding, no damage check).
    A damaged file (see DAMAGE_REASONS) raises DecodeError "corrupt" or "truncated"; with `accept_partial` it is
    accepted with num_frames = the frames that decode cleanly before the damage and `damaged` set to the reason.
    The verdict comes from the same FFmpeg scan whatever the backend, so decord and PyAV agree on it.
    `decoder`: "decord", "pyav", or "auto" (on files with a short side of TRIAL_MIN_SIDE or more: PyAV unless a
    trial clip shows decord faster by TRIAL_MARGIN with the same frames, the timings in `trial_ms`; on smaller
    files decord; PyAV for codecs decord lacks, files decord cannot decode and damaged files accepted partially).
    The result's `backend` names the one chosen.
    Width and height are the display's (rotation applied).
    Raises DecodeError with a reason code.
    """
    _check_backend(decoder)
    path = str(path)
    source, head = _read_source(path)
    info = _stream_info(path, source, head)
    if info["format"] in _IMAGE_DEMUXERS:
        raise DecodeError(path, "not_a_video", f"a still image ({info['format']} demuxer), not a video")
    width, height = info["width"], info["height"]
    if min(width, height) < min_side:
        raise DecodeError(path, "too_small", f"{width}x{height} frames; need a short side >= {min_side} px")
    scan = _scan(path, source, head, num_threads=num_threads, accept_partial=accept_partial) if exact else None
    trial = None
    if decoder == "auto" and scan is not None and not scan["damage"] and _worth_a_trial(info, scan["frames"]):
        trial = _trial(path, source, head, info, scan["frames"], num_threads=num_threads)
    if trial and trial[0] == "pyav":
        # PyAV's count is the scan's: decord's counting pass is not needed for a file PyAV will decode.
        result = _probe_pyav(path, source, info, exact=exact, num_threads=num_threads, scan=scan)
    else:
        result = _probe_backend(path, source, head, info, scan, decoder=decoder, exact=exact,
                                num_threads=num_threads)
    if trial:
        result = dataclasses.replace(result, trial_ms=trial[1])
    if scan is not None and scan["damage"]:
        if result.num_frames > scan["clean_frames"]:
            result = dataclasses.replace(result, num_frames=scan["clean_frames"],
                                         duration=scan["clean_frames"] / result.fps if result.fps > 0 else 0.0)
        result = dataclasses.replace(result, damaged=scan["damage"])
    return result


def _worth_a_trial(info: dict[str, Any], num_frames: int) -> bool:
    """Whether `auto` times both backends on this file (header facts `info`): where a clip costs more than opening
    the file (a few ms), so that the measurement says something about training; smaller files keep decord (a
    choice that does not depend on the machine's load). Not for codecs decord lacks or several video streams
    (decord may decode another stream than the one described)."""
    return (min(info["width"], info["height"]) >= TRIAL_MIN_SIDE and num_frames >= 2 * TRIAL_FRAMES
            and len(info["video_streams"]) == 1 and info["codec"] not in DECORD_UNSUPPORTED_CODECS)


def _trial(path: str, source, head: bytes, info: dict[str, Any], num_frames: int, *, num_threads: int
           ) -> tuple[str, dict[str, float]] | None:
    """(the backend that decodes a trial clip (TRIAL_FRAMES TSN frames at short side TRIAL_SHORT_SIDE) in less
    CPU time among those that decode it right, CPU ms per backend); PyAV (the reference numbering) where decord's
    frames differ. None where a backend fails (probe then goes its usual way).

    Each backend decodes the clip once, cold (a new reader, PyAV's packet index not cached): in training a decode
    process meets a file about once per epoch, so every clip pays that; the scan before has the file in the page
    cache for both."""
    n = num_frames
    idx = ((np.arange(TRIAL_FRAMES) + 0.5) * n / TRIAL_FRAMES).astype(np.int64)
    width, height = info["width"], info["height"]
    side = TRIAL_SHORT_SIDE if min(width, height) > TRIAL_SHORT_SIDE else None
    kwargs = dict(short_side=side, num_threads=num_threads, num_frames=n, size=(width, height))
    cpu_s, frames = {}, {}
    try:
        for backend, decode in (("decord", _decode_decord), ("pyav", _decode_pyav)):
            _PACKET_INDEX.pop((path, (width, height)), None)
            start = time.process_time()  # on the bytes probe already read (a URI is not fetched again)
            frames[backend] = decode(path, source, head, idx, **kwargs)
            cpu_s[backend] = time.process_time() - start
    except DecodeError as e:
        log.info("%s: the %s trial failed (%s)", path, backend, e.detail)
        return None
    agree = _same_frames(frames["decord"], frames["pyav"])
    faster = "decord" if cpu_s["decord"] < TRIAL_MARGIN * cpu_s["pyav"] else "pyav"
    choice = faster if agree else "pyav"
    log.debug("%s: trial clip decord %.1f ms, pyav %.1f ms CPU%s: %s", path, 1e3 * cpu_s["decord"],
              1e3 * cpu_s["pyav"], "" if agree else " (decord's frames differ from FFmpeg's)", choice)
    return choice, {k: round(1e3 * v, 2) for k, v in cpu_s.items()}


def _same_frames(a: np.ndarray, b: np.ndarray) -> bool:
    """Two backends' decodes of the same frames: equal up to their scalers' and FFmpeg builds' rounding (mean
    absolute difference below TRIAL_MAX_DIFF on every frame)."""
    if a.shape != b.shape:
        return False
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=(1, 2, 3))
    return bool((diff < TRIAL_MAX_DIFF).all())


def _scan(path: str, source, head: bytes, *, num_threads: int, accept_partial: bool) -> dict[str, Any]:
    """encode.scan_stream plus the container checks it cannot make; raises the damage unless `accept_partial`."""
    try:
        scan = scan_stream(_av_input(source), num_threads=num_threads)
    except ValueError as e:
        raise DecodeError(path, "decode_error", f"FFmpeg cannot read the stream: {short_error(e)}") from e
    container = _container_damage(head, len(source) if isinstance(source, bytes) else os.path.getsize(source))
    if container:
        scan = {**scan, "damage": "truncated", "detail": container}
    if not scan["damage"]:
        return scan
    clean = scan["clean_frames"]
    if not accept_partial:
        raise DecodeError(path, scan["damage"], f"{scan['detail']} ({clean} frames decode cleanly before it; "
                                                f"eco prepare --accept-partial keeps them)")
    if clean < 1:
        raise DecodeError(path, scan["damage"], f"{scan['detail']}; no frame decodes cleanly before it")
    log.info("%s: %s (%s); keeping the %d frames before it", path, scan["damage"], scan["detail"], clean)
    return scan


def _container_damage(head: bytes, size: int) -> str:
    """Why the container's own header shows it unfinished ("" if it does not): an AVI whose writer stopped before
    finalising it keeps the RIFF size placeholder (0), and a cut one declares more bytes than the file holds."""
    if head[:4] == b"RIFF" and head[8:12] == b"AVI " and len(head) >= 8:
        riff_size = int.from_bytes(head[4:8], "little")
        if riff_size == 0:
            return "an unfinalised AVI: the RIFF size is 0 (its writer stopped before writing the index)"
        if riff_size + 8 > size:
            return f"the AVI declares {riff_size + 8} bytes, the file has {size}"
    return ""


def _probe_backend(path: str, source, head: bytes, info: dict[str, Any], scan: dict[str, Any] | None, *,
                   decoder: str, exact: bool, num_threads: int) -> VideoInfo:
    """probe's count and facts from the backend `decoder` asks for (auto: decord, PyAV where decord fails)."""
    # A damaged file is counted only up to its clean head: the backend must decode that much, not the damage.
    limit = scan["clean_frames"] if scan and scan["damage"] else None
    if decoder == "pyav" or (limit and decoder == "auto"):
        # PyAV for the clean head of a damaged file under auto: decord's threaded decoder reads packets ahead of
        # the frame it returns, so its random access into the head meets the damage and fails.
        return _probe_pyav(path, source, info, exact=exact, num_threads=num_threads, scan=scan)
    unsupported = DECORD_UNSUPPORTED_CODECS.get(info["codec"])
    if unsupported:
        if decoder == "decord":
            raise DecodeError(path, "decode_error", f"{unsupported} (data.decoder is 'decord'; auto or pyav "
                                                    f"decode it with PyAV)")
        return _probe_pyav(path, source, info, exact=exact, num_threads=num_threads, scan=scan)
    try:
        result = _probe_decord(path, source, head, info, exact=exact, num_threads=num_threads, limit=limit)
        if limit:  # decord asked for explicitly: its random access into the clean head must work too
            clean = min(limit, result.num_frames)
            _decode_decord(path, source, head, np.array([0, clean // 2, clean - 1]), short_side=None,
                           num_threads=num_threads, num_frames=clean, size=(result.width, result.height))
        return result
    except DecodeError as e:
        if decoder == "decord" or e.reason != "decode_error":
            raise
        log.info("%s: decord cannot decode it (%s); trying the PyAV backend", path, e.detail)
        try:
            return _probe_pyav(path, source, info, exact=exact, num_threads=num_threads, scan=scan)
        except DecodeError as e2:
            raise DecodeError(path, e2.reason, f"{e2.detail}; decord: {e.detail}") from e2


def _probe_decord(path: str, source, head: bytes, info: dict[str, Any], *, exact: bool, num_threads: int,
                  limit: int | None = None) -> VideoInfo:
    width, height = info["width"], info["height"]
    if len(info["video_streams"]) > 1:
        # decord decodes the stream its own FFmpeg calls "best", which need not be the one PyAV's FFmpeg picked:
        # report the size decord really decodes (one frame at native size).
        try:
            decoded_h, decoded_w = _open(path, source, head, num_threads=num_threads).next().shape[:2]
        except StopIteration:
            decoded_h, decoded_w = height, width
        if (decoded_w, decoded_h) != (width, height):
            log.debug("%s: decord decodes a %dx%d stream, not the %dx%d one", path, decoded_w, decoded_h, width,
                      height)
            width, height = int(decoded_w), int(decoded_h)
            for s in info["video_streams"]:
                if {s["coded_width"], s["coded_height"]} == {width, height}:
                    info = {**info, "codec": s["codec"]}
                    break
    count_w, count_h = _COUNT_SIZE
    reader = _open(path, source, head, num_threads=num_threads, width=count_w, height=count_h)
    reported = len(reader)
    mid_gop = _is_mid_gop(reader)
    fps = float(reader.get_avg_fps() or info["fps"] or 0.0)
    if exact:
        def make_reader():
            return _reader(source, num_threads=num_threads, width=count_w, height=count_h)

        try:
            frames = _iter_sequential(make_reader, mid_gop)
            num_frames, yielded = _count_presentable(itertools.islice(frames, limit) if limit else frames)
        except Exception as e:  # DECORDError mid-stream: a damaged file
            raise DecodeError(path, "decode_error", f"decoding failed: {short_error(e)}") from e
        if yielded > num_frames:
            # A trailing run of identical frames: decord's padding of an over-reported end, or real content (a
            # still, a fade to black, a static screen: a fully static video would count 1 frame). FFmpeg through
            # PyAV yields no padding: its count of presentable frames settles which (only for such files).
            try:
                presentable = sum(1 for _ in iter_frames(_av_input(source), size=_COUNT_SIZE,
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
        reported_frames=int(reported), mid_gop=bool(mid_gop), backend="decord", rotation=int(info["rotation"]),
    )


def _av_input(source: str | bytes):
    return io.BytesIO(source) if isinstance(source, bytes) else source


def _probe_pyav(path: str, source, info: dict[str, Any], *, exact: bool, num_threads: int,
                scan: dict[str, Any] | None = None) -> VideoInfo:
    reported = int(info["frames"])
    if scan is not None:
        num_frames = scan["frames"]  # the damage scan decoded every presentable frame with FFmpeg already
    elif exact or reported < 1:
        try:
            # Every presentable frame, converted at 64x64 (counting costs the codec, not the conversion).
            num_frames = sum(1 for _ in iter_frames(_av_input(source), size=_COUNT_SIZE, num_threads=num_threads))
        except (ValueError, RuntimeError) as e:
            raise DecodeError(path, "decode_error", f"PyAV decoding failed: {short_error(e)}") from e
    else:
        num_frames = reported
    if num_frames < 1:
        raise DecodeError(path, "decode_error", f"no frame decodes with PyAV (the container claims {reported})")
    fps = float(info["fps"] or 0.0)
    return VideoInfo(
        num_frames=int(num_frames), fps=fps, width=int(info["width"]), height=int(info["height"]),
        duration=float(num_frames / fps) if fps > 0 else 0.0, codec=str(info["codec"]), reported_frames=reported,
        backend="pyav", rotation=int(info["rotation"]),
    )


def decode_frames(
    path: str,
    indices,
    *,
    short_side: int | None = None,
    num_threads: int = 1,
    num_frames: int | None = None,
    size: tuple[int, int] | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """Decode exactly the frames at `indices` -> uint8 RGB (len(indices), H, W, 3), in the order given, in display
    orientation (a display rotation applied).

    `num_frames`: the decodable count from `probe` (the manifest); indices are clamped to [0, num_frames), since
    decord repeats the last frame past the real end. Without it, decord's (possibly over-reported) count is used.
    `short_side`: frames come out with this short side (display aspect kept), scaled while decoding.
    `size`: the display (width, height) if known (the manifest has it), saving a header read.
    `num_threads`: the decoder's thread count, explicit (0 = "auto" breaks VP9 in decord, dmlc/decord#246).
    `backend`: "decord", "pyav" (the probe's choice, in the manifest) or "auto" (decord, then PyAV if decord
    cannot decode the file). Raises DecodeError with a reason code.
    """
    path = str(path)
    _check_backend(backend)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError(f"{path}: no frame indices to decode")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 (0 breaks VP9 WebM, dmlc/decord#246), got {num_threads}")
    source, head = _read_source(path)
    if num_frames:
        idx = np.clip(idx, 0, max(int(num_frames) - 1, 0))
    # Each frame once and in file order: a clip never seeks backwards nor decodes a frame twice (the order and
    # repeats a sampler asks for, e.g. a short video's repeated indices, are restored from the unique frames).
    wanted, order = np.unique(idx, return_inverse=True)
    kwargs = dict(short_side=short_side, num_threads=num_threads, num_frames=num_frames, size=size)
    if backend == "pyav":
        frames = _decode_pyav(path, source, head, wanted, **kwargs)
    else:
        try:
            frames = _decode_decord(path, source, head, wanted, **kwargs)
        except DecodeError as e:
            if backend == "decord" or e.reason != "decode_error":
                raise
            log.debug("%s: decord failed (%s); decoding with PyAV", path, e.detail)
            frames = _decode_pyav(path, source, head, wanted, **kwargs)
    return frames if np.array_equal(wanted, idx) else frames[order.reshape(-1)]


def _decode_pyav(path: str, source, head: bytes, idx: np.ndarray, *, short_side: int | None, num_threads: int,
                 num_frames: int | None, size: tuple[int, int] | None) -> np.ndarray:
    """The PyAV backend: the frames at `idx` in FFmpeg's numbering of presentable frames (the probe's count).

    Random access where the packets stand 1:1 for the probed frames (first packet a keyframe, every packet timed,
    as many packets as `num_frames`): frame i is the packet with the i-th smallest pts, found by seeking to the
    keyframe before it and matched by pts. Otherwise (mid-GOP cuts, no probed count) frames are read in
    presentation order up to max(idx), which is exact on every file at the price of decoding the head of the video.
    """
    stream_size = size
    if size is None:
        info = _stream_info(path, source, head)
        size = (info["width"], info["height"])
    width, height = int(size[0]), int(size[1])
    out_h, out_w = scaled_size(height, width, short_side)
    if num_frames:
        idx = np.clip(idx, 0, max(int(num_frames) - 1, 0))
    out_size = None if (out_w, out_h) == (width, height) else (out_w, out_h)
    if num_frames:
        out = _decode_pyav_random_access(path, source, idx, num_frames=int(num_frames), stream_size=stream_size,
                                         out_size=out_size, num_threads=num_threads)
        if out is not None:
            if out.shape[1:] != (out_h, out_w, 3):
                raise DecodeError(path, "decode_error", f"PyAV returned frames of shape {out.shape[1:]}, expected "
                                                        f"{(out_h, out_w, 3)} (is the manifest's size stale?)")
            return out
    wanted, last_wanted = set(idx.tolist()), int(idx.max())
    kept: dict[int, np.ndarray] = {}
    last = None
    frames = iter_frames(_av_input(source), size=out_size, stream_size=stream_size, num_threads=num_threads)
    try:
        for position, frame in enumerate(frames):
            last = frame
            if position in wanted:
                kept[position] = frame
            if position >= last_wanted:
                break
    except (ValueError, RuntimeError) as e:
        _stream_info(path, source, head)  # classify a container FFmpeg cannot read (truncated, not_a_video, ...)
        raise DecodeError(path, "decode_error", f"PyAV decoding frames up to {last_wanted} failed: {short_error(e)}") from e
    finally:
        frames.close()
    if last is None:
        raise DecodeError(path, "decode_error", "no frame decodes with PyAV")
    # Indices past the end (no num_frames given) get the last frame, as decord's clamped ones do.
    out = np.stack([kept.get(int(i), last) for i in idx])
    if out.shape[1:] != (out_h, out_w, 3):
        raise DecodeError(path, "decode_error", f"PyAV returned frames of shape {out.shape[1:]}, expected "
                                                f"{(out_h, out_w, 3)} (is the manifest's size stale?)")
    return out


# Packet timestamps of the files the PyAV backend decoded in this process, by (path, stream size): one demux pass
# (no decoding) per file, then every clip seeks. Bounded like _STATIC_CONTENT.
_PACKET_INDEX: dict[tuple, tuple[list[int], list[int]] | None] = {}
_PACKET_INDEX_MAX = 1024


def _decode_pyav_random_access(path: str, source, idx: np.ndarray, *, num_frames: int, stream_size, out_size,
                               num_threads: int) -> np.ndarray | None:
    """Frames at `idx` by seeking (see _decode_pyav), or None where the packets do not stand for the frames."""
    key = (path, None if stream_size is None else tuple(int(v) for v in stream_size))
    positions = sorted(set(int(i) for i in idx))
    try:
        if key in _PACKET_INDEX:
            index = _PACKET_INDEX[key]
            if index is None or len(index[0]) != num_frames or not index[1]:
                return None
            pts = index[0]
            got = frames_at(_av_input(source), [pts[i] for i in positions], index[1], stream_size=stream_size,
                            size=out_size, num_threads=num_threads)
            found = {i: got[pts[i]] for i in positions if pts[i] in got}
        else:  # the file's first clip in this process: index and frames through one opening
            try:
                index, found = indexed_frames_at(_av_input(source), positions, num_frames=num_frames,
                                                 stream_size=stream_size, size=out_size, num_threads=num_threads)
            except ValueError:
                index, found = None, None
            if len(_PACKET_INDEX) >= _PACKET_INDEX_MAX:
                _PACKET_INDEX.pop(next(iter(_PACKET_INDEX)))
            _PACKET_INDEX[key] = index
            if found is None:
                return None
    except (ValueError, RuntimeError) as e:
        log.debug("%s: PyAV random access failed (%s); reading sequentially", path, short_error(e))
        return None
    if len(found) != len(positions):
        log.debug("%s: PyAV random access missed %d frames; reading sequentially", path, len(positions) - len(found))
        return None
    return np.stack([found[int(i)] for i in idx])


# Files whose random access returned byte-identical frames at distinct indices and whose sequential decode then
# agreed (the content really repeats: a black lead-in, a slide, a paused screen), keyed by (path, decoded size).
# decord's duplicate bug is a property of the file (its GOP structure), so one agreeing check clears the file for
# this process: later clips of it keep random access instead of a sequential decode each.
_STATIC_CONTENT: dict[tuple, None] = {}
_STATIC_CONTENT_MAX = 4096


def _decode_decord(path: str, source, head: bytes, idx: np.ndarray, *, short_side: int | None, num_threads: int,
                   num_frames: int | None, size: tuple[int, int] | None) -> np.ndarray:
    out_h, out_w, dec_w, reader_size = _output_size(path, source, head, size, short_side)

    reader = _open(path, source, head, num_threads=num_threads, **reader_size)
    reported = len(reader)
    mid_gop = _is_mid_gop(reader)
    limit = min(int(num_frames), reported) if num_frames else reported
    idx = np.clip(idx, 0, max(limit - 1, 0))
    static_key = (path, tuple(sorted(reader_size.items())))
    try:
        if mid_gop:
            frames = _decode_sequential(source, idx, num_threads, reader_size, mid_gop=True)
        else:
            frames = reader.get_batch(idx.tolist()).asnumpy()
            if static_key not in _STATIC_CONTENT and _repeats_distinct_indices(idx, frames):
                log.debug("%s: random access returned identical frames for distinct indices; decoding sequentially",
                          path)
                sequential = _decode_sequential(source, idx, num_threads, reader_size, mid_gop=False)
                if np.array_equal(sequential, frames):
                    if len(_STATIC_CONTENT) >= _STATIC_CONTENT_MAX:
                        _STATIC_CONTENT.pop(next(iter(_STATIC_CONTENT)))
                    _STATIC_CONTENT[static_key] = None
                frames = sequential
    except DecodeError:
        raise
    except Exception as e:
        if num_threads > 1 and "Error sending packet" in str(e):
            # dmlc/decord#246: decord's threaded decoder rejects some VP9 packets with EAGAIN; one thread works.
            log.debug("%s: threaded decode failed (%s); retrying with one thread", path, short_error(e))
            return _decode_decord(path, source, head, idx, short_side=short_side, num_threads=1,
                                  num_frames=num_frames, size=size)
        if "DECORDArrayCopyFromTo" in str(e) or isinstance(e, ValueError):
            raise DecodeError(path, "too_small", f"decord returned corrupt frames for {dec_w}x{out_h}: {short_error(e)}") from e
        raise DecodeError(path, "decode_error", f"decoding frames {idx.min()}..{idx.max()} failed: {short_error(e)}") from e
    if frames.shape != (len(idx), out_h, dec_w, 3):
        raise DecodeError(path, "too_small" if min(out_w, out_h) < MIN_SIDE else "decode_error",
                          f"decord returned frames of shape {frames.shape[1:]}, expected {(out_h, dec_w, 3)}")
    if dec_w != out_w:
        frames = _resize_width(frames, out_w)
    return frames


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


# The stream the decode process is reading (decode_stream_chunk): its key, frame iterator and next position.
_STREAM: dict[str, Any] = {}


def decode_stream_chunk(path: str, start: int, count: int, *, short_side: int | None = None, num_threads: int = 1,
                        size: tuple[int, int] | None = None, num_frames: int | None = None,
                        backend: str = "auto") -> np.ndarray:
    """Frames [start, start + count) of `path` in presentation order -> uint8 (n, H, W, 3), n < count at the end.

    For reading a video chunk after chunk (online inference): the reader stays open between calls in this
    process, so every frame is decoded once, in order. `decode_frames` on each chunk would seek back to the
    chunk's keyframe every time, up to a whole GOP of extra decoding per chunk on long-GOP files. A call that does
    not continue where the previous one stopped reopens the stream and reads up to `start`. Same frames (numbering,
    scaling, display rotation, mid-GOP cuts, narrow widths, `backend`) as decode_frames; `num_frames` (the probed
    count) ends the stream where decode_frames would clamp: decord pads an over-reported end with copies of the
    last frame. Raises DecodeError with a reason code.
    """
    path = str(path)
    _check_backend(backend)
    if start < 0 or count < 1:
        raise ValueError(f"{path}: need start >= 0 and count >= 1, got start={start} count={count}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 (0 breaks VP9 WebM, dmlc/decord#246), got {num_threads}")
    key = (path, short_side, num_threads, size, backend)
    if _STREAM.get("key") != key or _STREAM.get("next") != start:
        _STREAM.clear()
        source, head = _read_source(path)
        out_h, out_w, dec_w, reader_size = _output_size(path, source, head, size, short_side)
        if backend != "pyav":
            try:
                mid_gop = _is_mid_gop(_open(path, source, head, num_threads=num_threads, **reader_size))
            except DecodeError as e:
                if backend == "decord" or e.reason != "decode_error":
                    raise
                backend = "pyav"  # auto: decord cannot open it
        if backend == "pyav":
            frames = iter_frames(_av_input(source), size=(out_w, out_h), stream_size=size, num_threads=num_threads)
        else:
            frames = _iter_sequential(lambda: _open(path, source, head, num_threads=num_threads, **reader_size),
                                      mid_gop)
            first = next(frames, None)
            if first is not None and first.shape[:2] != (out_h, dec_w):
                # Another stream than the one `size` describes (multi-stream files): decord cannot pick streams.
                if backend == "decord":
                    raise DecodeError(path, "decode_error", f"decord returned frames of shape {first.shape}, "
                                                            f"expected {(out_h, dec_w, 3)}")
                frames = iter_frames(_av_input(source), size=(out_w, out_h), stream_size=size,
                                     num_threads=num_threads)
            elif first is not None:
                frames = itertools.chain([first], frames)
        _STREAM.update(key=key, frames=frames, next=0, shape=(out_h, out_w))
        for _ in range(start):
            if next(frames, None) is None:
                break
            _STREAM["next"] += 1
    if num_frames is not None:
        count = min(count, max(int(num_frames) - start, 0))
    out = []
    try:
        for _ in range(count):
            frame = next(_STREAM["frames"], None)
            if frame is None:
                break
            out.append(frame)
    except Exception as e:  # noqa: BLE001 - decord fails mid-stream on corrupt packets
        _STREAM.clear()
        raise DecodeError(path, "decode_error", f"decoding frames from {start} failed: {short_error(e)}") from e
    _STREAM["next"] = start + len(out)
    out_h, out_w = _STREAM["shape"]
    if not out:
        return np.zeros((0, out_h, out_w, 3), np.uint8)
    frames = np.stack(out)
    return _resize_width(frames, out_w) if frames.shape[2] != out_w else frames


def _output_size(path: str, source, head: bytes, size: tuple[int, int] | None, short_side: int | None
                 ) -> tuple[int, int, int, dict[str, int]]:
    """(out_h, out_w, decoded width, decord reader size kwargs) for frames scaled to `short_side`."""
    if size is None:
        info = _stream_info(path, source, head)
        size = (info["width"], info["height"])
        if len(info["video_streams"]) > 1:  # decord's FFmpeg may pick another stream than PyAV's: ask decord
            try:
                height, width = _open(path, source, head, num_threads=1).next().shape[:2]
                size = (width, height)
            except StopIteration:
                pass
    width, height = int(size[0]), int(size[1])
    out_h, out_w = scaled_size(height, width, short_side)
    # decord corrupts frames of some widths: decode one pixel wider and resize back (see DECORD_BAD_WIDTHS).
    dec_w = out_w + 1 if out_w in DECORD_BAD_WIDTHS else out_w
    reader_size = dict(width=dec_w, height=out_h) if (dec_w, out_h) != (width, height) else {}
    return out_h, out_w, dec_w, reader_size


def _repeats_distinct_indices(idx: np.ndarray, frames: np.ndarray) -> bool:
    """True if two different indices came back as byte-identical frames (decord's silent duplicates)."""
    order = np.argsort(idx, kind="stable")
    for a, b in zip(order[:-1], order[1:]):
        if idx[a] != idx[b] and np.array_equal(frames[a], frames[b]):
            return True
    return False


def _decode_sequential(source, idx: np.ndarray, num_threads: int, reader_size: dict, *, mid_gop: bool) -> np.ndarray:
    """Read frames in order up to max(idx) and keep the requested ones; indices past the end get the last frame."""
    wanted = set(idx.tolist())
    last_wanted = int(idx.max())
    kept: dict[int, np.ndarray] = {}
    last = None
    position = -1
    for position, frame in enumerate(_iter_sequential(
            lambda: _reader(source, num_threads=num_threads, **reader_size), mid_gop)):
        last = frame
        if position in wanted:
            kept[position] = frame
        if position >= last_wanted:
            break
    if last is None:
        raise RuntimeError("no frame decodes sequentially")
    return np.stack([kept.get(int(i), last) for i in idx])
