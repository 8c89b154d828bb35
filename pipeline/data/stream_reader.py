"""Reading one video chunk after chunk (online inference: `eco predict --online`, serving): `StreamReader`.

The decode child (pipeline.data.isolation) holds one reader, so its stream stays open between calls and every frame
is decoded once, in order. `decode_frames` on each chunk would seek back to the chunk's keyframe every time: up to
a whole GOP of extra decoding per chunk on long-GOP files.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from pipeline.data.decode import backends_for
from pipeline.data.video_file import DecodeError, open_video, short_error


class StreamReader:
    """The stream being read: which file and settings, its frame iterator, the position of its next frame."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._frames: Iterator[np.ndarray] | None = None
        self._next = 0
        self._shape = (0, 0)

    def read(self, path: str, start: int, count: int, *, short_side: int | None = None, num_threads: int = 1,
             size: tuple[int, int] | None = None, num_frames: int | None = None,
             backend: str = "auto") -> np.ndarray:
        """Frames [start, start + count) of `path` in presentation order -> uint8 (n, H, W, 3), n < count at the end.

        A call that continues where the previous one stopped (same file and settings) reads on; any other call
        reopens the stream and reads up to `start`. Same frames (numbering, scaling, display rotation, mid-GOP
        cuts, narrow widths, `backend`) as decode_frames; `num_frames` (the probed count) ends the stream where
        decode_frames would clamp: decord pads an over-reported end with copies of the last frame. Raises
        DecodeError with a reason code.
        """
        path = str(path)
        order = backends_for(backend)
        if start < 0 or count < 1:
            raise ValueError(f"{path}: need start >= 0 and count >= 1, got start={start} count={count}")
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 (0 breaks VP9 WebM, dmlc/decord#246), got {num_threads}")
        key = (path, short_side, num_threads, size, backend)
        reopen = self._key != key or self._next != start
        if reopen:
            self.close()
            self._open(path, order, short_side=short_side, num_threads=num_threads, size=size)
            self._key = key
        if num_frames is not None:
            count = min(count, max(int(num_frames) - start, 0))
        out = []
        try:
            if reopen:
                for _ in range(start):
                    if next(self._frames, None) is None:
                        break
            for _ in range(count):
                frame = next(self._frames, None)
                if frame is None:
                    break
                out.append(frame)
        except Exception as e:  # noqa: BLE001 - decoders fail mid-stream on corrupt packets
            self.close()
            raise DecodeError(path, "decode_error", f"decoding frames from {start} failed: {short_error(e)}") from e
        self._next = start + len(out)
        if not out:
            return np.zeros((0, *self._shape, 3), np.uint8)
        return np.stack(out)

    def close(self) -> None:
        """Forget the stream (its decoder is released with the iterator)."""
        self._key, self._frames, self._next = None, None, 0

    def _open(self, path: str, order: tuple, *, short_side: int | None, num_threads: int,
              size: tuple[int, int] | None) -> None:
        """Open the stream with the first backend in `order` that decodes the file (auto: the next one where one
        fails with decode_error)."""
        file = open_video(path)
        for i, backend in enumerate(order):
            try:
                self._shape, self._frames = backend.stream(file, short_side=short_side, num_threads=num_threads,
                                                           size=size)
                return
            except DecodeError as e:
                if i == len(order) - 1 or e.reason != "decode_error":
                    raise
