"""Clip transforms: pure functions on uint8 frames (T, H, W, 3) RGB, numpy or torch; no Ray or decord imports.

Every function applies ONE geometric decision to all frames of a clip (the same crop, the same flip), so the
motion between frames is preserved. Crops and flips run on uint8 in the decode workers (small tensors cross the
object store); conversion to float and normalisation run on the trainer's device with `normalize`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# TSN/ECO multi-scale crop: crop side = short side x one of these (ECO's GroupMultiScaleCrop scales).
MULTISCALE_SCALES: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
# The 5 crop positions of the multi-scale crop, as fractions (x, y) of the free space: 4 corners + centre.
CROP_POSITIONS: tuple[tuple[float, float], ...] = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5))


def _to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    return frames


def _like(result: torch.Tensor, template: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    return result.numpy() if isinstance(template, np.ndarray) else result


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(new_height, new_width) with the short side equal to `size` and the aspect ratio kept (rounded)."""
    if height <= width:
        return size, max(1, round(width * size / height))
    return max(1, round(height * size / width)), size


def _resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> uint8 (T, height, width, 3), bilinear with antialiasing (matches PIL when shrinking)."""
    if frames.shape[1] == height and frames.shape[2] == width:
        return frames
    # (T, H, W, 3) -> (T, 3, H, W): interpolate works on channels-first; uint8 stays uint8 (no float round trip).
    x = frames.permute(0, 3, 1, 2)
    if x.device.type == "cpu":
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    else:
        # torch's antialiased bilinear kernel takes uint8 on CPU only: elsewhere (CUDA) in float, rounded back. On
        # the CPU this float route differs from the uint8 kernel (fixed-point weights) by at most one grey level,
        # 0.13-0.2 on average, even on random noise; `eco check gpu` measures the device's difference.
        x = F.interpolate(x.float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    # (T, 3, h, w) -> (T, h, w, 3)
    return x.permute(0, 2, 3, 1).contiguous()


def resize_short_side(frames: np.ndarray | torch.Tensor, size: int) -> np.ndarray | torch.Tensor:
    """Resize so the short side is `size` (aspect kept). Same type out as in (numpy or torch uint8)."""
    t = _to_tensor(frames)
    height, width = short_side_size(t.shape[1], t.shape[2], size)
    return _like(_resize(t, height, width), frames)


def resize(frames: np.ndarray | torch.Tensor, height: int, width: int) -> np.ndarray | torch.Tensor:
    """Resize every frame to exactly (height, width)."""
    return _like(_resize(_to_tensor(frames), height, width), frames)


def crop(frames: np.ndarray | torch.Tensor, top: int, left: int, height: int, width: int):
    """The window [top:top+height, left:left+width] of every frame (a view, no copy)."""
    if top < 0 or left < 0 or top + height > frames.shape[1] or left + width > frames.shape[2]:
        raise ValueError(f"crop {height}x{width} at ({top}, {left}) outside frames of {tuple(frames.shape[1:3])}")
    return frames[:, top:top + height, left:left + width]


@dataclass(frozen=True)
class TrainDraws:
    """The random choices of one training clip's augmentation, independent of the frame size: the crop side as a
    fraction of the short side, the crop position as fractions (x, y) of the free space, and the mirror.

    Drawn once (`draw_train`) wherever the clip is sampled, applied (`apply_train`) wherever its frames are: the
    decode worker (`train_transform`) or the trainer's device (pipeline.data.jpeg_clips), the same crop either way.
    """

    scale: float
    fx: float
    fy: float
    flip: bool

    def as_array(self) -> np.ndarray:
        return np.asarray([self.scale, self.fx, self.fy, float(self.flip)], np.float64)

    @classmethod
    def from_array(cls, a) -> "TrainDraws":
        scale, fx, fy, flip = (float(v) for v in a)
        return cls(scale, fx, fy, flip >= 0.5)


def draw_train(rng: np.random.Generator, *, multiscale: bool = True, flip: bool = True,
               scales: tuple[float, ...] = MULTISCALE_SCALES) -> TrainDraws:
    """The TSN/ECO augmentation's draws from `rng`, in this order: scale (only when multiscale), position, flip
    (only when flip). The order is part of the contract: clips sampled before this split draw the same crops."""
    scale = scales[rng.integers(len(scales))] if multiscale else 1.0
    fx, fy = CROP_POSITIONS[rng.integers(len(CROP_POSITIONS))]
    mirrored = bool(flip and rng.random() < 0.5)
    return TrainDraws(float(scale), float(fx), float(fy), mirrored)


def train_box(draws: TrainDraws, height: int, width: int) -> tuple[int, int, int]:
    """(top, left, side) of the square crop that `draws` selects in frames of (height, width)."""
    side = max(1, int(min(height, width) * draws.scale))
    return round((height - side) * draws.fy), round((width - side) * draws.fx), side


def apply_train(frames: np.ndarray | torch.Tensor, draws: TrainDraws, *, crop_size: int
                ) -> np.ndarray | torch.Tensor:
    """uint8 (T, H, W, 3) -> uint8 (T, crop_size, crop_size, 3): the crop of `draws`, resized, mirrored if drawn.
    Runs where the frames are (numpy and CPU tensors on the host, CUDA tensors on the GPU)."""
    t = _to_tensor(frames)
    top, left, side = train_box(draws, t.shape[1], t.shape[2])
    out = _resize(crop(t, top, left, side, side), crop_size, crop_size)
    if draws.flip:
        out = out.flip(2)  # (T, H, W, 3): dim 2 is W
    return _like(out.contiguous(), frames)


def train_transform(
    frames: np.ndarray | torch.Tensor,
    *,
    crop_size: int,
    rng: np.random.Generator,
    multiscale: bool = True,
    flip: bool = True,
    scales: tuple[float, ...] = MULTISCALE_SCALES,
) -> np.ndarray | torch.Tensor:
    """TSN/ECO training augmentation -> uint8 (T, crop_size, crop_size, 3).

    A square crop of side short_side x s (s drawn from `scales`; only 1.0 when multiscale=False) at one of the 5
    CROP_POSITIONS, resized to crop_size, then mirrored left-right with probability 0.5 when `flip`.
    Turn `flip` off for direction-of-motion tasks: a mirrored "left to right" clip is a "right to left" clip.
    """
    _to_tensor(frames)  # reject bad input before drawing
    return apply_train(frames, draw_train(rng, multiscale=multiscale, flip=flip, scales=scales), crop_size=crop_size)


def eval_transform(
    frames: np.ndarray | torch.Tensor, *, short_side: int, crop_size: int, crops: int = 1
) -> np.ndarray | torch.Tensor:
    """Evaluation views -> uint8 (crops, T, crop_size, crop_size, 3).

    Resize the short side to `short_side` (skipped when already there), then crops=1: the centre crop;
    crops=3: three crops along the long side (left/centre/right for landscape, top/centre/bottom for portrait),
    the standard "3-crop" test protocol.
    """
    if crops not in (1, 3):
        raise ValueError(f"crops must be 1 or 3, got {crops}")
    if crop_size > short_side:
        raise ValueError(f"crop_size {crop_size} is larger than short_side {short_side}")
    t = _to_tensor(frames)
    h, w = short_side_size(t.shape[1], t.shape[2], short_side)
    t = _resize(t, h, w)
    centre_top, centre_left = (h - crop_size) // 2, (w - crop_size) // 2
    if crops == 1:
        boxes = [(centre_top, centre_left)]
    elif w >= h:
        boxes = [(centre_top, 0), (centre_top, centre_left), (centre_top, w - crop_size)]
    else:
        boxes = [(0, centre_left), (centre_top, centre_left), (h - crop_size, centre_left)]
    out = torch.stack([crop(t, top, left, crop_size, crop_size) for top, left in boxes])
    return _like(out, frames)


@dataclass(frozen=True)
class Normalization:
    """x_float = (pixel[channel_order] * scale - mean) / std, channels in `channel_order`."""

    channel_order: str  # "RGB" or "BGR": the order the model's first conv expects
    scale: float  # 1.0 keeps 0-255 (Caffe-trained weights); 1/255 maps to 0-1
    mean: tuple[float, float, float]  # in channel_order, after scaling
    std: tuple[float, float, float]


NORMALIZATION_PRESETS: dict[str, Normalization] = {
    # The official ECO weights (Caffe heritage): BGR, 0-255, mean B104 G117 R128 (the authors' PyTorch port;
    # their Caffe release used R123), std 1. ECO_REFERENCE.md: the book swaps the means; this does not.
    "eco": Normalization("BGR", 1.0, (104.0, 117.0, 128.0), (1.0, 1.0, 1.0)),
    # torchvision/timm ImageNet statistics, RGB in 0-1.
    "imagenet": Normalization("RGB", 1.0 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # Plain 0-1 RGB, for models trained from scratch without dataset statistics.
    "unit": Normalization("RGB", 1.0 / 255.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def normalize(clips: torch.Tensor, preset: str | Normalization) -> torch.Tensor:
    """uint8 (..., H, W, 3) RGB -> float32 (..., 3, H, W) normalised by `preset`, on the tensor's own device.

    Typically clips (N, T, H, W, 3) -> (N, T, 3, H, W), the model's input layout.
    """
    if isinstance(preset, str):
        if preset not in NORMALIZATION_PRESETS:
            raise ValueError(f"unknown normalization preset {preset!r}; valid: {', '.join(NORMALIZATION_PRESETS)}")
        preset = NORMALIZATION_PRESETS[preset]
    if clips.dtype != torch.uint8 or clips.shape[-1] != 3:
        raise ValueError(f"expected uint8 clips (..., H, W, 3), got {clips.dtype} {tuple(clips.shape)}")
    # (..., H, W, 3) -> (..., 3, H, W)
    x = clips.movedim(-1, -3).to(torch.float32)
    if preset.channel_order == "BGR":
        x = x.flip(-3)
    mean = torch.tensor(preset.mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(preset.std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x * preset.scale - mean) / std
