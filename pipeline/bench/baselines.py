"""Baselines for `eco bench decode` and `eco bench shards`: what the common loaders do, and a full decode.

The peers of `eco bench decode`, each as its documentation shows it, then resized to the clip's short side on uint8
with torchvision (what loaders built on them do): naive decord (VideoReader with default settings, get_batch),
naive PyAV (seek to each frame, decode forward to it) and TorchCodec (VideoDecoder, get_frames_at; optional: it
needs the OS's FFmpeg libraries, `pip install eco-pipeline[bench]` after e.g. `apt-get install libavcodec-dev
libavformat-dev libavutil-dev libswscale-dev libavdevice-dev libavfilter-dev`).
None of pipeline.data.decode's defences (explicit threads, probed frame counts, mid-GOP handling): these measure
what the defences cost and what the common loaders get wrong. Benchmarks only.
"""

from __future__ import annotations

import numpy as np

# Imported first: it loads PyAV before decord (see pipeline.data.decord_backend for why the order matters).
from pipeline.data.decode import scaled_size
from pipeline.data.pyav_read import stream_info

import decord  # noqa: E402


def naive_get_batch(path: str, indices) -> np.ndarray:
    """What common data loaders do: decord.VideoReader(path) with default settings (automatic thread count), then
    get_batch at full resolution."""
    reader = decord.VideoReader(str(path))
    return reader.get_batch([int(i) for i in indices]).asnumpy()


def _resize_short_side(frames, short_side: int | None):
    """uint8 (T, C, H, W) torch frames -> short side `short_side`, with torchvision (antialiased bilinear)."""
    if not short_side:
        return frames
    import torchvision.transforms.v2.functional as F

    height, width = frames.shape[-2:]
    out_h, out_w = scaled_size(int(height), int(width), short_side)
    return F.resize(frames, [out_h, out_w], antialias=True)


def naive_decord_clip(path: str, indices, short_side: int | None):
    """decord.VideoReader(path) (default settings), get_batch, torchvision resize -> uint8 (T, C, H, W)."""
    import torch

    frames = torch.from_numpy(naive_get_batch(path, indices)).permute(0, 3, 1, 2)
    return _resize_short_side(frames, short_side)


def naive_pyav_clip(path: str, indices, short_side: int | None):
    """PyAV as its documentation shows random access: for each index, seek to the keyframe before its timestamp
    (pts = index / frame rate) and decode forward to it; torchvision resize -> uint8 (T, C, H, W)."""
    import av
    import torch

    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate, base = stream.average_rate, stream.time_base
        start = stream.start_time or 0
        for i in indices:
            target = start + int(round(int(i) / rate / base))
            container.seek(target, stream=stream, backward=True)
            frame = None
            for frame in container.decode(stream):
                if frame.pts is not None and frame.pts >= target:
                    break
            out.append(frame.to_ndarray(format="rgb24"))
    frames = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return _resize_short_side(frames, short_side)


def torchcodec_available() -> bool:
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except (ImportError, RuntimeError, OSError):  # not installed, or no OS FFmpeg libraries for it
        return False
    return True


def torchcodec_clip(path: str, indices, short_side: int | None):
    """TorchCodec: VideoDecoder(path) (exact seek mode, one FFmpeg thread: its defaults), get_frames_at,
    torchvision resize -> uint8 (T, C, H, W)."""
    from torchcodec.decoders import VideoDecoder

    frames = VideoDecoder(str(path)).get_frames_at([int(i) for i in indices]).data
    return _resize_short_side(frames, short_side)


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
