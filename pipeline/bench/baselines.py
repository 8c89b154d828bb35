"""Baselines for `eco bench decode` and `eco bench shards`: what a plain decord loader does, and a full decode.

None of pipeline.data.decode's defences (explicit threads, probed frame counts, mid-GOP handling): these measure
what the defences cost and what the common loaders get wrong. Benchmarks only.
"""

from __future__ import annotations

import numpy as np

# Imported first: it loads PyAV before decord (see pipeline.data.decode for why the order matters).
from pipeline.data.decode import scaled_size
from pipeline.data.encode import stream_info

import decord  # noqa: E402


def naive_get_batch(path: str, indices) -> np.ndarray:
    """What common data loaders do: decord.VideoReader(path) with default settings (automatic thread count), then
    get_batch at full resolution."""
    reader = decord.VideoReader(str(path))
    return reader.get_batch([int(i) for i in indices]).asnumpy()


def decode_all(path: str, *, num_threads: int = 1, short_side: int | None = None,
               size: tuple[int, int] | None = None) -> int:
    """Decode every frame of the local file `path` sequentially (the cost of the whole file); returns the count.

    `size`: the (width, height) if known, saving a header read."""
    kwargs = {}
    if short_side:
        if size is None:
            info = stream_info(str(path))
            size = (info["width"], info["height"])
        out_h, out_w = scaled_size(int(size[1]), int(size[0]), short_side)
        kwargs = {"width": out_w, "height": out_h}
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads, **kwargs)
    count = 0
    try:
        while True:
            reader.next()
            count += 1
    except StopIteration:
        return count
