"""Clips that travel as JPEG bytes and are decoded and augmented on the trainer's device (`data.decode_on=device`).

Why: decoding 16 JPEGs and cropping them is nearly all of a shard decode worker's cost per clip, and a GPU can
decode JPEGs itself (nvJPEG, through torchvision). In this mode the decode worker only samples the clip (indices,
shuffle, the augmentation's draws: pipeline.data.clips.clip_plans, exactly what the CPU path draws) and reads the
sampled frames' bytes from the shard; the trainer turns a batch of them into the same uint8 clips the CPU path
ships, where they are to be used: one batched `decode_jpeg` call per batch (`device="cuda"`: nvJPEG, the frames
never reach host memory), then `transforms.apply_train` / `transforms.eval_transform` with torch ops on the device.
On a CPU device it is the same code on the CPU: the same libjpeg-turbo decoder and uint8 resize as the CPU path,
so the clips are equal exactly (tests/test_jpeg_clips.py); on CUDA they differ by the decoders' and the float
resize's rounding (measured by `eco check gpu`).

A batch in this mode (what the decode stage yields per row = one clip view):
    "jpeg"          bytes: the clip's T JPEG frames, concatenated in clip order
    "jpeg_offsets"  int64 (T + 1,): frame t is jpeg[offsets[t]:offsets[t + 1]]
    "augment"       float64 (4,): training: TrainDraws.as_array() (scale, fx, fy, flip); evaluation: zeros
    "label", "video_id", "clip_index" as in the CPU mode (evaluation: clip_index = clip * crops + crop)

torch, torchvision and numpy only: no Ray, so `eco check gpu` measures it on machines without Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from pipeline.data import transforms

JPEG_COLUMNS = ("jpeg", "jpeg_offsets", "augment")
NO_DRAWS = np.zeros(4, np.float64)  # the "augment" of an evaluation view: its crop comes from clip_index


@dataclass(frozen=True)
class ClipFinish:
    """How the trainer finishes the clips of one dataset: training draws per clip, or the evaluation views."""

    train: bool
    crop_size: int
    short_side: int
    crops: int = 1  # evaluation: spatial crops per temporal clip (view = clip_index % crops)


def pack(blobs: Sequence[bytes | memoryview]) -> tuple[bytes, np.ndarray]:
    """T JPEGs -> (their concatenation, int64 offsets (T + 1,)). One copy out of the shard's (mmapped) pages."""
    sizes = np.fromiter((len(b) for b in blobs), np.int64, count=len(blobs))
    offsets = np.zeros(len(blobs) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return b"".join(blobs), offsets


def _frames_of(blob: Any, offsets: np.ndarray) -> list[torch.Tensor]:
    # bytearray: decode_jpeg wants tensors that own writable memory (Ray hands read-only bytes); one copy per clip,
    # then T zero-copy slices of it.
    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    offsets = np.asarray(offsets, np.int64)
    return [data[int(offsets[t]):int(offsets[t + 1])] for t in range(len(offsets) - 1)]


def decode_clips(batch: dict[str, Any], finish: ClipFinish, *, device: str | torch.device = "cpu") -> torch.Tensor:
    """A batch of this mode -> uint8 clips (N, T, crop, crop, 3) on `device`, exactly the clips the CPU mode's
    decode worker would have made (on CUDA: within the decoders' rounding).

    All N x T JPEGs go to ONE `decode_jpeg` call (nvJPEG decodes a list as a batch); each clip is then cropped and
    resized on the device. Raises ValueError naming the clip when a frame is not a decodable JPEG.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    blobs, offsets = batch["jpeg"], batch["jpeg_offsets"]
    n = len(blobs)
    if n == 0:
        raise ValueError("decode_clips: an empty batch")
    per_clip = [_frames_of(blobs[i], offsets[i]) for i in range(n)]
    datas = [frame for frames in per_clip for frame in frames]
    try:
        decoded = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)  # N*T x (3, H, W)
    except RuntimeError as e:
        ids = list(batch.get("video_id", []))
        raise ValueError(f"decode_clips: a JPEG frame of the batch (videos {ids}) does not decode: {e}") from e
    clips, start = [], 0
    for i, frames in enumerate(per_clip):
        # (3, H, W) -> (H, W, 3) views, stacked: (T, H, W, 3), the layout (and on CPU the bytes) of the CPU path.
        clip = torch.stack([f.permute(1, 2, 0) for f in decoded[start:start + len(frames)]])
        start += len(frames)
        if finish.train:
            draws = transforms.TrainDraws.from_array(batch["augment"][i])
            clips.append(transforms.apply_train(clip, draws, crop_size=finish.crop_size))
        else:
            view = int(batch["clip_index"][i]) % finish.crops
            clips.append(transforms.eval_transform(clip, short_side=finish.short_side, crop_size=finish.crop_size,
                                                   crops=finish.crops)[view])
    return torch.stack(clips)  # (N, T, crop, crop, 3) uint8 on `device`
