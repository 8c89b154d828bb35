"""From one manifest row to its clips: TSN sampling + transforms, whatever stores the frames (pure; no Ray/decord).

The video decoder (pipeline.data.pipeline) and the frame-shard decoder (pipeline.data.shards) differ only in how
they fetch frames and name their failures; both are `RowClipDecoder`s, so that training from videos and from
shards is the same computation.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

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


def clips_batch(rows: Iterable[dict[str, Any]],
                clips_of: Callable[[dict[str, Any]], Iterator[tuple[int, np.ndarray]]],
                failure_of: Callable[[dict[str, Any], Exception], dict[str, Any]], *, num_segments: int,
                crop_size: int) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Run `clips_of` over a decode batch's rows -> (output batch, failure records).

    A row whose frames cannot be had is dropped and described by `failure_of(row, error)`; the other rows go on.
    The output columns are the pipeline's: clip uint8 (N, T, crop, crop, 3), label, video_id, clip_index.
    """
    clips, labels, video_ids, clip_indices, failures = [], [], [], [], []
    for row in rows:
        try:
            for clip_index, clip in clips_of(row):
                clips.append(clip)
                labels.append(int(row["label"]))
                video_ids.append(str(row["video_id"]))
                clip_indices.append(clip_index)
        except Exception as e:  # noqa: BLE001 - a bad row is dropped and recorded, the epoch goes on
            failures.append(failure_of(row, e))
    batch = {
        "clip": np.stack(clips) if clips else np.zeros((0, num_segments, crop_size, crop_size, 3), np.uint8),
        "label": np.asarray(labels, np.int64),
        "video_id": np.asarray(video_ids, dtype=object),
        "clip_index": np.asarray(clip_indices, np.int64),
    }
    return batch, failures


class RowClipDecoder:
    """A decode batch of manifest rows -> clips: what the video decoder (pipeline.data.pipeline) and the frame-shard
    decoder (pipeline.data.shards) share. Subclasses name the columns they read (`columns`), fetch a row's frames
    (`_fetch(row, indices)` -> uint8 (T, H, W, 3)), describe a failure (`_describe(row, error)` -> (reason,
    detail)) and record failures (`_record(failures)`).

    A row's "epoch" column (stamped by the pipeline's source when an epoch's execution starts) selects its TSN
    offsets; `epoch` is the fallback for rows without one (direct use, as in tests).
    """

    columns: tuple[str, ...] = ()
    # Read when the batch has them: "epoch" (see above); subclasses add theirs.
    optional_columns: tuple[str, ...] = ("epoch",)

    def __init__(self, *, train: bool, num_segments: int, short_side: int, crop_size: int, multiscale: bool,
                 flip: bool, shuffle_frames: bool, seed: int, num_clips: int = 1, crops: int = 1, epoch: int = 0):
        self.train, self.T = train, num_segments
        self.short_side, self.crop_size = short_side, crop_size
        self.multiscale, self.flip, self.shuffle_frames = multiscale, flip, shuffle_frames
        self.seed, self.num_clips, self.crops = seed, num_clips, crops
        self.epoch = int(epoch)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [*self.columns, *(c for c in self.optional_columns if c in batch)]
        rows = ({k: batch[k][i] for k in names} for i in range(len(batch["path"])))
        out, failures = clips_batch(rows, self._clips, self._failure, num_segments=self.T, crop_size=self.crop_size)
        if failures:
            self._record(failures)
        return out

    def _epoch(self, row: dict[str, Any]) -> int:
        return int(row["epoch"]) if "epoch" in row else self.epoch

    def _failure(self, row: dict[str, Any], error: Exception) -> dict[str, Any]:
        reason, detail = self._describe(row, error)
        return {"path": str(row["path"]), "video_id": str(row["video_id"]), "reason": reason, "detail": detail,
                "epoch": self._epoch(row)}

    def _clips(self, row: dict[str, Any]) -> Iterator[tuple[int, np.ndarray]]:
        return clip_views(lambda indices: self._fetch(row, indices), str(row["video_id"]), int(row["num_frames"]),
                          train=self.train, num_segments=self.T, seed=self.seed, epoch=self._epoch(row),
                          short_side=self.short_side, crop_size=self.crop_size, multiscale=self.multiscale,
                          flip=self.flip, shuffle_frames=self.shuffle_frames, num_clips=self.num_clips,
                          crops=self.crops)

    def _fetch(self, row: dict[str, Any], indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _describe(self, row: dict[str, Any], error: Exception) -> tuple[str, str]:
        raise NotImplementedError

    def _record(self, failures: list[dict[str, Any]]) -> None:
        raise NotImplementedError
