"""The PyAV backend (`PyAVBackend`): FFmpeg through PyAV (pipeline.data.pyav_read's primitives) behind the backends'
interface, for the codecs decord 0.6's FFmpeg lacks (AV1), the files decord cannot open, and the files `auto`'s
trial finds it faster on.

Frames are numbered as FFmpeg presents them (the probe's count). Random access seeks where the packets stand 1:1 for
the probed frames (first packet a keyframe, every packet timed, as many packets as frames): frame i is the packet
with the i-th smallest pts, found by seeking to the keyframe before it. Elsewhere (mid-GOP cuts, no probed count)
frames are read in presentation order, which is exact on every file at the price of decoding the head of the video.
The display rotation is applied, as decord does.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import numpy as np

from pipeline.data.pyav_read import frames_at, indexed_frames_at, iter_frames
from pipeline.data.video_file import COUNT_SIZE, DecodeError, FileCache, VideoFile, VideoInfo, scaled_size, short_error

log = logging.getLogger(__name__)


class PyAVBackend:
    """PyAV behind the backends' interface: `probe` a file, `frames` at indices, `stream` in order."""

    name = "pyav"

    def __init__(self) -> None:
        # Packet timestamps of the files decoded in this process, by (path, stream size): one demux pass (no
        # decoding) per file, then every clip seeks. None where the packets do not stand for the frames.
        self.packet_index = FileCache(1024)

    def unsupported(self, info: dict[str, Any]) -> str:
        """Why this backend cannot decode a file with header `info`: "" (every codec of PyAV's FFmpeg)."""
        return ""

    def forget(self, path: str) -> None:
        self.packet_index.forget(path)

    def clear(self) -> None:
        self.packet_index.clear()

    def probe(self, file: VideoFile, info: dict[str, Any], *, exact: bool, num_threads: int,
              scan: dict[str, Any] | None = None) -> VideoInfo:
        """The file's facts as FFmpeg presents it; the count is the damage scan's where one ran."""
        reported = int(info["frames"])
        if scan is not None:
            num_frames = scan["frames"]  # the damage scan decoded every presentable frame with FFmpeg already
        elif exact or reported < 1:
            try:
                num_frames = sum(1 for _ in iter_frames(file.av_input(), size=COUNT_SIZE, num_threads=num_threads))
            except (ValueError, RuntimeError) as e:
                raise DecodeError(file.path, "decode_error", f"PyAV decoding failed: {short_error(e)}") from e
        else:
            num_frames = reported
        if num_frames < 1:
            raise DecodeError(file.path, "decode_error", f"no frame decodes with PyAV (the container claims "
                                                         f"{reported})")
        fps = float(info["fps"] or 0.0)
        return VideoInfo(
            num_frames=int(num_frames), fps=fps, width=int(info["width"]), height=int(info["height"]),
            duration=float(num_frames / fps) if fps > 0 else 0.0, codec=str(info["codec"]), reported_frames=reported,
            backend=self.name, rotation=int(info["rotation"]),
        )

    def frames(self, file: VideoFile, idx: np.ndarray, *, short_side: int | None, num_threads: int,
               num_frames: int | None, size: tuple[int, int] | None) -> np.ndarray:
        """uint8 (len(idx), H, W, 3) for ascending unique `idx` in FFmpeg's numbering of presentable frames,
        scaled to `short_side` while decoding; indices clamped to `num_frames` (the probed count)."""
        path = file.path
        stream_size = size
        if size is None:
            info = file.header()
            size = (info["width"], info["height"])
        width, height = int(size[0]), int(size[1])
        out_h, out_w = scaled_size(height, width, short_side)
        if num_frames:
            idx = np.clip(idx, 0, max(int(num_frames) - 1, 0))
        out_size = None if (out_w, out_h) == (width, height) else (out_w, out_h)
        out = None
        if num_frames:
            out = self._seek(file, idx, num_frames=int(num_frames), stream_size=stream_size, out_size=out_size,
                             num_threads=num_threads)
        if out is None:
            out = _read_in_order(file, idx, stream_size=stream_size, out_size=out_size, num_threads=num_threads)
        if out.shape[1:] != (out_h, out_w, 3):
            raise DecodeError(path, "decode_error", f"PyAV returned frames of shape {out.shape[1:]}, expected "
                                                    f"{(out_h, out_w, 3)} (is the manifest's size stale?)")
        return out

    def _seek(self, file: VideoFile, idx: np.ndarray, *, num_frames: int, stream_size, out_size,
              num_threads: int) -> np.ndarray | None:
        """Frames at `idx` by seeking, or None where the packets do not stand for the frames."""
        path = file.path
        key = (path, None if stream_size is None else tuple(int(v) for v in stream_size))
        positions = sorted(set(int(i) for i in idx))
        try:
            if key in self.packet_index:
                index = self.packet_index[key]
                if index is None or len(index[0]) != num_frames or not index[1]:
                    return None
                pts = index[0]
                got = frames_at(file.av_input(), [pts[i] for i in positions], index[1], stream_size=stream_size,
                                size=out_size, num_threads=num_threads)
                found = {i: got[pts[i]] for i in positions if pts[i] in got}
            else:  # the file's first clip in this process: index and frames through one opening
                try:
                    index, found = indexed_frames_at(file.av_input(), positions, num_frames=num_frames,
                                                     stream_size=stream_size, size=out_size, num_threads=num_threads)
                except ValueError:
                    index, found = None, None
                self.packet_index.put(key, index)
                if found is None:
                    return None
        except (ValueError, RuntimeError) as e:
            log.debug("%s: PyAV random access failed (%s); reading sequentially", path, short_error(e))
            return None
        if len(found) != len(positions):
            log.debug("%s: PyAV random access missed %d frames; reading sequentially", path,
                      len(positions) - len(found))
            return None
        return np.stack([found[int(i)] for i in idx])

    def stream(self, file: VideoFile, *, short_side: int | None, num_threads: int, size: tuple[int, int] | None
               ) -> tuple[tuple[int, int], Iterator[np.ndarray]]:
        """((out_h, out_w), the file's frames in presentation order at that size)."""
        if size is None:
            info = file.header()
            width, height = info["width"], info["height"]
        else:
            width, height = int(size[0]), int(size[1])
        out_h, out_w = scaled_size(height, width, short_side)
        return (out_h, out_w), iter_frames(file.av_input(), size=(out_w, out_h), stream_size=size,
                                           num_threads=num_threads)


def _read_in_order(file: VideoFile, idx: np.ndarray, *, stream_size, out_size, num_threads: int) -> np.ndarray:
    """Frames at `idx` read in presentation order up to max(idx); indices past the end (no probed count) get the
    last frame, as decord's clamped ones do."""
    wanted, last_wanted = set(idx.tolist()), int(idx.max())
    kept: dict[int, np.ndarray] = {}
    last = None
    frames = iter_frames(file.av_input(), size=out_size, stream_size=stream_size, num_threads=num_threads)
    try:
        for position, frame in enumerate(frames):
            last = frame
            if position in wanted:
                kept[position] = frame
            if position >= last_wanted:
                break
    except (ValueError, RuntimeError) as e:
        file.header()  # classify a container FFmpeg cannot read (truncated, not_a_video, ...)
        raise DecodeError(file.path, "decode_error", f"PyAV decoding frames up to {last_wanted} failed: "
                                                     f"{short_error(e)}") from e
    finally:
        frames.close()
    if last is None:
        raise DecodeError(file.path, "decode_error", "no frame decodes with PyAV")
    return np.stack([kept.get(int(i), last) for i in idx])
