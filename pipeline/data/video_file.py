"""A video file before any decoder reads it: path checks, the container header, damage, and the vocabulary every
decode backend reports in (`DecodeError` with a reason code, `VideoInfo`).

- A missing file, a directory, an empty file or a text file all make decord raise the same vague error: the path is
  checked first (`open_video`) and `DecodeError` carries a stable reason code and the path.
- Paths may be URIs (s3://, gs://, file://, ...): the bytes are read through pyarrow.fs and the decoders get a
  file-like object (decord copies it into memory; fine for clips, which are a few MB).
- Damaged files (a download cut after its front-loaded index, bytes overwritten mid-stream, an AVI whose writer
  crashed, a Matroska block that runs past its cluster) open and decode partly: FFmpeg conceals or skips the damage
  and decord and PyAV count frames that are garbage or absent. `scan_damage` decodes the stream once with FFmpeg
  (pipeline.data.pyav_read.scan_stream: every error the decoder or demuxer reports, packets missing against the index)
  and rejects the file as corrupt / truncated, or with `accept_partial` keeps only the frames before the damage.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline import storage
from pipeline.data.pyav_read import scan_stream, stream_info

log = logging.getLogger(__name__)

REASONS = frozenset({
    "missing", "unreadable", "is_directory", "empty_file", "not_a_video", "no_video_stream", "too_small", "truncated",
    "decode_error", "timeout", "crashed", "corrupt",
})
# Damage `probe` finds in a file that otherwise opens: "corrupt" (packets or container structure the decoder or
# demuxer rejects, frames it conceals) and "truncated" (the stream ends before its index says, an unfinalised
# container). Such a file is rejected unless the caller accepts its clean head (`accept_partial`).
DAMAGE_REASONS = ("corrupt", "truncated")
# FFmpeg demuxers that read single images: a JPEG or PNG renamed .mp4 opens as a one-frame "video".
IMAGE_DEMUXERS = ("image2", "jpeg_pipe", "png_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "gif_pipe", "jpegxl_pipe")
# Videos whose short side is below this are rejected by `probe` (a 112-224 px crop from them is mostly blur).
MIN_SIDE = 32
# Size of the frames a probe decodes to count them: only their number matters, and scaling in the decoder's
# converter makes counting cost little more than the codec.
COUNT_SIZE = (64, 64)
_HEAD_BYTES = 4096


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


class FileCache:
    """Facts a backend learnt about files in this process, keyed by tuples that start with the path; bounded, the
    oldest entry goes first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple, Any] = {}

    def __contains__(self, key: tuple) -> bool:
        return key in self._entries

    def __getitem__(self, key: tuple) -> Any:
        return self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: tuple, value: Any = None) -> None:
        if key not in self._entries and len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = value

    def forget(self, path: str) -> None:
        """Drop every entry of `path`."""
        for key in [k for k in self._entries if k[0] == path]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()


# --------------------------------------------------------------------------------------------------------------
# Opening: path checks, URIs, the header, classified errors
# --------------------------------------------------------------------------------------------------------------

class VideoFile:
    """A checked video file (see `open_video`): `path`, `source` (what the decoders open: a local path, or the
    bytes of a URI's object) and `head` (its first bytes)."""

    def __init__(self, path: str, source: str | bytes, head: bytes) -> None:
        self.path, self.source, self.head = path, source, head
        self._header: dict[str, Any] | None = None

    def av_input(self):
        """What PyAV and decord open: the path, or a file-like object over the bytes."""
        return io.BytesIO(self.source) if isinstance(self.source, bytes) else self.source

    @property
    def size_bytes(self) -> int:
        return len(self.source) if isinstance(self.source, bytes) else os.path.getsize(self.source)

    def header(self) -> dict[str, Any]:
        """Codec, native size, fps, rotation and streams from the container header (FFmpeg through
        pipeline.data.pyav_read); raises DecodeError truncated / not_a_video / no_video_stream / decode_error."""
        if self._header is None:
            self._header = self._read_header()
        return self._header

    def _read_header(self) -> dict[str, Any]:
        path = self.path
        try:
            info = stream_info(self.av_input())
        except (ValueError, OSError) as e:
            if _known_container(self.head):
                raise DecodeError(path, "truncated", f"a known container whose index cannot be read: {e}") from e
            raise DecodeError(path, "not_a_video", f"no known container format: {e}") from e
        if info is None:
            raise DecodeError(path, "no_video_stream", "the container holds no video stream (audio only?)")
        if info["width"] <= 0 or info["height"] <= 0:
            raise DecodeError(path, "decode_error", f"video stream without a frame size ({info['codec']})")
        return info


def open_video(path: str) -> VideoFile:
    """Check the path and read what the decoders need (the whole object for a URI, the first bytes locally).

    Raises DecodeError missing / unreadable / is_directory / empty_file / not_a_video (text) with the path.
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
    return VideoFile(path, source, head)


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


# --------------------------------------------------------------------------------------------------------------
# Damage: one FFmpeg pass over the stream, whatever the backend, so decord and PyAV agree on the verdict
# --------------------------------------------------------------------------------------------------------------

def scan_damage(file: VideoFile, *, num_threads: int, accept_partial: bool) -> dict[str, Any]:
    """pyav_read.scan_stream plus the container checks it cannot make; raises the damage unless `accept_partial`."""
    path = file.path
    try:
        scan = scan_stream(file.av_input(), num_threads=num_threads)
    except ValueError as e:
        raise DecodeError(path, "decode_error", f"FFmpeg cannot read the stream: {short_error(e)}") from e
    container = _container_damage(file.head, file.size_bytes)
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
