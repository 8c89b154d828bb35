"""From one manifest row to its clips: TSN sampling + transforms, whatever stores the frames (pure; no Ray/decord).

The video decoder (pipeline.data.pipeline) and the frame-shard decoder (pipeline.data.shards) differ only in how
they fetch frames; both call `clip_views` so that training from videos and from shards is the same computation.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from pipeline.data import sampling, transforms


def clip_views(fetch: Callable[[np.ndarray], np.ndarray], video_id: str, num_frames: int, *, train: bool,
               num_segments: int, seed: int, epoch: int, short_side: int, crop_size: int, multiscale: bool,
               flip: bool, shuffle_frames: bool, num_clips: int = 1, crops: int = 1
               ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (clip_index, uint8 (T, crop, crop, 3)); `fetch(indices)` returns uint8 (T, H, W, 3) frames.

    Training: one clip; offsets, crop, flip and the control shuffle all come from clip_rng(seed, epoch, video), so
    they are fresh every epoch and reproducible on any worker. Evaluation: `num_clips` x `crops` views in a fixed
    order, clip_index = clip * crops + crop.
    """
    if train:
        rng = sampling.clip_rng(seed, epoch, video_id)
        frames = fetch(sampling.train_indices(num_frames, num_segments, rng))
        if shuffle_frames:
            frames = frames[rng.permutation(len(frames))]
        yield 0, transforms.train_transform(frames, crop_size=crop_size, rng=rng, multiscale=multiscale, flip=flip)
        return
    for c in range(num_clips):
        frames = fetch(sampling.eval_indices(num_frames, num_segments, clip=c, num_clips=num_clips))
        if shuffle_frames:
            # The control experiment holds at evaluation too: frame order is never available to the model.
            frames = frames[sampling.clip_rng(seed, 0, f"{video_id}#{c}").permutation(len(frames))]
        views = transforms.eval_transform(frames, short_side=short_side, crop_size=crop_size, crops=crops)
        for k in range(crops):
            yield c * crops + k, np.ascontiguousarray(views[k])
