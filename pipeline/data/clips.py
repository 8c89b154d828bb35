"""From one manifest row to its clips: the one training/evaluation clip computation, and the row decoders.

`clip_plans` is what a row's clips need before any frame is decoded (TSN indices, the shuffle, the augmentation's
draws); `clip_views` is the computation (plans + transforms, pure numpy; `fetch(indices)` supplies the frames);
`eval_clip` is its single centre view, what `eco predict` and batch inference feed the model. The row decoders
turn a decode batch of manifest rows into clips and return the rows that failed: `VideoClipDecoder` decodes
videos in the process's killable decode child (pipeline.data.isolation), `ShardClipDecoder` reads JPEG frames
from frame shards (pipeline.data.shards). They differ only in how they fetch frames and name their failures, so
that training from videos and from shards is the same computation. `ShardJpegDecoder` (data.decode_on=device)
ships the same plans' JPEG bytes undecoded, for the trainer's device to finish (pipeline.data.jpeg_clips). The
stage that calls them (pipeline.data.pipeline) records the failures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from pipeline.data import sampling, transforms
from pipeline.data.shards import ShardError, ShardReader

log = logging.getLogger(__name__)

# Manifest columns the video decoder reads; "backend" (the probe's choice) and "epoch" when the batch has them.
VIDEO_COLUMNS = ("video_id", "path", "label", "num_frames", "width", "height")
SHARD_COLUMNS = ("path", "video_id", "label", "num_frames", "batch_index")


@dataclass(frozen=True)
class ClipPlan:
    """What one temporal clip of a row needs before any frame is decoded: the frames to fetch (`indices`, in
    decode order), the order to put them in (`order`: the shuffle control's permutation, or None) and, for
    training, the augmentation's draws. A pure function of the row and the settings (`clip_plans`), so the decode
    worker and the trainer's device make the same clip from it."""

    clip: int  # temporal clip number (0 for training)
    indices: np.ndarray
    order: np.ndarray | None
    draws: transforms.TrainDraws | None


def clip_plans(video_id: str, num_frames: int, *, train: bool, num_segments: int, seed: int, epoch: int,
               multiscale: bool, flip: bool, shuffle_frames: bool, num_clips: int = 1) -> list[ClipPlan]:
    """The row's clip plans. Training: one, every draw from clip_rng(seed, epoch, video) in a fixed order (TSN
    offsets, the shuffle, then the crop and flip), so fresh every epoch and reproducible on any worker.
    Evaluation: `num_clips` deterministic ones (segment points shifted per clip)."""
    if train:
        rng = sampling.clip_rng(seed, epoch, video_id)
        indices = sampling.train_indices(num_frames, num_segments, rng)
        order = rng.permutation(len(indices)) if shuffle_frames else None
        return [ClipPlan(0, indices, order, transforms.draw_train(rng, multiscale=multiscale, flip=flip))]
    plans = []
    for c in range(num_clips):
        indices = sampling.eval_indices(num_frames, num_segments, clip=c, num_clips=num_clips)
        # The control experiment holds at evaluation too: frame order is never available to the model.
        order = (sampling.clip_rng(seed, 0, f"{video_id}#{c}").permutation(len(indices)) if shuffle_frames
                 else None)
        plans.append(ClipPlan(c, indices, order, None))
    return plans


def clip_views(fetch: Callable[[np.ndarray], np.ndarray], video_id: str, num_frames: int, *, train: bool,
               num_segments: int, seed: int, epoch: int, short_side: int, crop_size: int, multiscale: bool,
               flip: bool, shuffle_frames: bool, num_clips: int = 1, crops: int = 1
               ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (clip_index, uint8 (T, crop, crop, 3)); `fetch(indices)` returns uint8 (T, H, W, 3) frames.

    Training: one clip (`clip_plans`). Evaluation: `num_clips` x `crops` views in a fixed order,
    clip_index = clip * crops + crop.
    """
    for plan in clip_plans(video_id, num_frames, train=train, num_segments=num_segments, seed=seed, epoch=epoch,
                           multiscale=multiscale, flip=flip, shuffle_frames=shuffle_frames, num_clips=num_clips):
        frames = fetch(plan.indices)
        if plan.order is not None:
            frames = frames[plan.order]
        if plan.draws is not None:
            yield 0, transforms.apply_train(frames, plan.draws, crop_size=crop_size)
            continue
        views = transforms.eval_transform(frames, short_side=short_side, crop_size=crop_size, crops=crops)
        for k in range(crops):
            yield plan.clip * crops + k, np.ascontiguousarray(views[k])


def eval_clip(fetch: Callable[[np.ndarray], np.ndarray], num_frames: int, *, num_segments: int, short_side: int,
              crop_size: int) -> np.ndarray:
    """The single evaluation view of a video (segment centres, centre crop): uint8 (T, crop, crop, 3).

    Exactly clip_views(train=False, num_clips=1, crops=1)'s clip; `fetch(indices)` returns uint8 (T, H, W, 3).
    """
    (_, clip), = clip_views(fetch, "", num_frames, train=False, num_segments=num_segments, seed=0, epoch=0,
                            short_side=short_side, crop_size=crop_size, multiscale=False, flip=False,
                            shuffle_frames=False)
    return clip


def centre_view(frames: np.ndarray, *, short_side: int, crop_size: int) -> np.ndarray:
    """uint8 frames (T, H, W, 3) -> the evaluation transform's centre crop (T, crop, crop, 3) (online inference,
    which transforms frame by frame as they arrive)."""
    views = transforms.eval_transform(frames, short_side=short_side, crop_size=crop_size, crops=1)
    return np.ascontiguousarray(views[0])


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
    """A decode batch of manifest rows -> (clips, failure records): what the video and the frame-shard decoders
    share. Subclasses name the columns they read (`columns`), fetch a row's frames (`_fetch(row, indices)` -> uint8
    (T, H, W, 3)) and describe a failure (`_describe(row, error)` -> (reason, detail)). Failures are returned, not
    recorded: the caller (the pipeline's decode stage) owns the run state they go to.

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

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
        """(output batch, failure records: path, video_id, reason, detail, epoch) of a decode batch."""
        names = [*self.columns, *(c for c in self.optional_columns if c in batch)]
        rows = ({k: batch[k][i] for k in names} for i in range(len(batch["path"])))
        return clips_batch(rows, self._clips, self._failure, num_segments=self.T, crop_size=self.crop_size)

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


class VideoClipDecoder(RowClipDecoder):
    """Video-manifest rows -> clips, decoding in this process's shared `IsolatedDecoder`
    (pipeline.data.isolation.shared_decoder): decord in a child process that is killed on a timeout or dies alone
    on a native crash, so one bad file costs one clip, not the job; the child lives as long as the Ray worker
    process, across tasks and epochs. Failures carry the decoder's reason code (pipeline.data.decode.REASONS).
    """

    columns = VIDEO_COLUMNS
    # The probe's backend (manifests written before it existed have none: "auto").
    optional_columns = ("epoch", "backend")

    def __init__(self, *, num_threads: int, timeout_s: float, max_clips_per_process: int,
                 decode_fn: Callable | None = None, backend: str = "auto", **clip_kwargs):
        from pipeline.data.isolation import shared_decoder

        super().__init__(**clip_kwargs)
        self.num_threads = num_threads
        self.backend = backend  # data.decoder: "auto" follows each row's probed backend
        self.decoder = shared_decoder(timeout_s=timeout_s, max_clips_per_process=max_clips_per_process,
                                      decode_fn=decode_fn)

    def _fetch(self, row: dict[str, Any], indices: np.ndarray) -> np.ndarray:
        # num_frames (probed) clamps indices to frames that really decode; size saves a header read.
        return self.decoder.decode(str(row["path"]), indices, short_side=self.short_side,
                                   num_threads=self.num_threads, num_frames=int(row["num_frames"]),
                                   size=(int(row["width"]), int(row["height"])), backend=self._backend(row))

    def _backend(self, row: dict[str, Any]) -> str:
        if self.backend != "auto":
            return self.backend
        return str(row.get("backend") or "auto")

    def _describe(self, row: dict[str, Any], error: Exception) -> tuple[str, str]:
        from pipeline.data.decode import DecodeError

        if isinstance(error, DecodeError):
            return error.reason, str(getattr(error, "detail", "") or error)
        log.error("decoding %s failed unexpectedly", row["path"], exc_info=error)
        return "decode_error", f"{type(error).__name__}: {error}"


class ShardClipDecoder(RowClipDecoder):
    """Shard-manifest rows -> clips: the frame-shard twin of `VideoClipDecoder`, with the same constructor keywords
    (so the pipeline picks either class from `data.format`) and the same rows, sampling and transforms.

    `num_frames` is the shard manifest's KEPT frame count, so sampling spans the same time as in the video. The
    decord-specific keywords (num_threads, timeout_s, max_clips_per_process, decode_fn) are accepted and unused:
    JPEG decoding does not hang in native code, so no child process is needed. A row whose shard cannot be read
    fails with reason "shard_error".
    """

    columns = SHARD_COLUMNS

    def __init__(self, *, jpeg_backend: str = "torchvision", shard_root: str | None = None,
                 num_threads: int = 1, timeout_s: float | None = None, max_clips_per_process: int | None = None,
                 decode_fn: Callable | None = None, **clip_kwargs):
        super().__init__(**clip_kwargs)
        self.reader = ShardReader(shard_root, backend=jpeg_backend)

    def _fetch(self, row: dict[str, Any], indices: np.ndarray) -> np.ndarray:
        return self.reader.decode(str(row["path"]), int(row["batch_index"]), indices,
                                  video_id=str(row["video_id"]))

    def _describe(self, row: dict[str, Any], error: Exception) -> tuple[str, str]:
        if isinstance(error, ShardError):
            return "shard_error", str(error)
        log.error("reading %s from %s failed unexpectedly", row["video_id"], row["path"], exc_info=error)
        return "decode_error", f"{type(error).__name__}: {error}"


class ShardJpegDecoder(ShardClipDecoder):
    """Shard-manifest rows -> clip views as JPEG bytes (`data.decode_on=device`): the plans of `ShardClipDecoder`
    (the same `clip_plans`: indices, shuffle, draws), the frames' bytes read from the shard and not decoded. The
    trainer decodes and augments them on its device (pipeline.data.jpeg_clips). Output columns: jpeg,
    jpeg_offsets, augment, label, video_id, clip_index; constructor and failures as `ShardClipDecoder`'s.
    """

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
        from pipeline.data.jpeg_clips import NO_DRAWS, pack

        names = [*self.columns, *(c for c in self.optional_columns if c in batch)]
        blobs, offsets, draws, labels, video_ids, clip_indices, failures = [], [], [], [], [], [], []
        for i in range(len(batch["path"])):
            row = {k: batch[k][i] for k in names}
            try:
                views = []
                for plan in clip_plans(str(row["video_id"]), int(row["num_frames"]), train=self.train,
                                       num_segments=self.T, seed=self.seed, epoch=self._epoch(row),
                                       multiscale=self.multiscale, flip=self.flip,
                                       shuffle_frames=self.shuffle_frames, num_clips=self.num_clips):
                    jpegs = self.reader.read_jpegs(str(row["path"]), int(row["batch_index"]), plan.indices,
                                                   video_id=str(row["video_id"]))
                    if plan.order is not None:
                        jpegs = [jpegs[j] for j in plan.order]
                    blob, offs = pack(jpegs)
                    aug = plan.draws.as_array() if plan.draws is not None else NO_DRAWS
                    views.extend((plan.clip * self.crops + k, blob, offs, aug)
                                 for k in range(1 if self.train else self.crops))
            except Exception as e:  # noqa: BLE001 - a bad row is dropped and recorded, the epoch goes on
                failures.append(self._failure(row, e))
                continue
            for clip_index, blob, offs, aug in views:
                blobs.append(blob)
                offsets.append(offs)
                draws.append(aug)
                labels.append(int(row["label"]))
                video_ids.append(str(row["video_id"]))
                clip_indices.append(clip_index)
        out = {
            "jpeg": np.asarray(blobs, dtype=object),
            "jpeg_offsets": (np.stack(offsets) if offsets else np.zeros((0, self.T + 1), np.int64)),
            "augment": np.stack(draws) if draws else np.zeros((0, 4), np.float64),
            "label": np.asarray(labels, np.int64),
            "video_id": np.asarray(video_ids, dtype=object),
            "clip_index": np.asarray(clip_indices, np.int64),
        }
        return out, failures

    def _describe(self, row: dict[str, Any], error: Exception) -> tuple[str, str]:
        return ShardClipDecoder._describe(self, row, error)
