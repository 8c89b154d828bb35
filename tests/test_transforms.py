"""Transforms: crops at the right places, one decision per clip, exact normalisation values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.transforms import (
    CROP_POSITIONS,
    MULTISCALE_SCALES,
    NORMALIZATION_PRESETS,
    eval_transform,
    normalize,
    resize,
    resize_short_side,
    short_side_size,
    train_transform,
)


def coordinate_clip(t=3, h=60, w=80):
    """uint8 (T, H, W, 3): R = column, G = row, B = frame index, so any crop reveals where it came from."""
    frames = np.zeros((t, h, w, 3), np.uint8)
    frames[..., 0] = np.arange(w)[None, None, :]
    frames[..., 1] = np.arange(h)[None, :, None]
    frames[..., 2] = np.arange(t)[:, None, None]
    return frames


@pytest.mark.parametrize("h,w,size,expected", [
    (240, 320, 128, (128, 171)),   # 170.67 -> 171
    (320, 240, 128, (171, 128)),   # portrait
    (256, 340, 256, (256, 340)),   # already there
    (720, 1280, 256, (256, 455)),  # 455.1
])
def test_short_side_size(h, w, size, expected):
    assert short_side_size(h, w, size) == expected


def test_resize_short_side_types_and_values():
    frames = np.full((2, 60, 80, 3), 77, np.uint8)
    out = resize_short_side(frames, 30)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (2, 30, 40, 3)
    assert np.all(out == 77)  # a constant image stays constant
    t = resize_short_side(torch.from_numpy(frames), 30)
    assert isinstance(t, torch.Tensor) and t.shape == (2, 30, 40, 3)
    assert resize_short_side(frames, 60) is frames or np.array_equal(resize_short_side(frames, 60), frames)
    # antialiased downscale of a 2x2 checkerboard is its mean
    board = np.zeros((1, 40, 40, 3), np.uint8)
    board[:, ::2, ::2] = 200
    board[:, 1::2, 1::2] = 200
    assert abs(int(resize(board, 10, 10).mean()) - 100) <= 2


def test_train_transform_crops_are_square_scaled_and_positioned():
    frames = coordinate_clip()
    h, w = 60, 80
    seen_sides, seen_positions = set(), set()
    rng = np.random.default_rng(0)
    for _ in range(300):
        # crop_size = the crop side for scale 1.0, so that case is an exact copy we can locate
        out = train_transform(frames, crop_size=60, rng=rng, flip=False)
        assert out.shape == (3, 60, 60, 3) and out.dtype == np.uint8
        # B channel: frames stay in order; the same crop for all frames (R/G identical across frames)
        assert out[:, 0, 0, 2].tolist() == [0, 1, 2]
        assert np.array_equal(out[0, ..., :2], out[2, ..., :2])
        left, top = int(out[0, 0, 0, 0]), int(out[0, 0, 0, 1])
        right, bottom = int(out[0, -1, -1, 0]), int(out[0, -1, -1, 1])
        side = bottom - top + 1
        seen_sides.add(round(side / 60, 2))
        seen_positions.add((left, top))
    assert seen_sides <= {1.0, 0.87, 0.88, 0.75, 0.66, 0.67, 0.65} and len(seen_sides) == 4
    # the 5 positions of a full-height crop: x in {0, 10, 20}, y = 0
    rng = np.random.default_rng(1)
    full = {tuple(train_transform(frames, crop_size=60, rng=rng, multiscale=False, flip=False)[0, 0, 0, :2])
            for _ in range(200)}
    assert full == {(0, 0), (20, 0), (10, 0)}
    assert len(CROP_POSITIONS) == 5 and MULTISCALE_SCALES == (1.0, 0.875, 0.75, 0.66)


def test_train_transform_flip_mirrors_every_frame():
    frames = coordinate_clip()
    flips = 0
    rng = np.random.default_rng(3)
    for _ in range(100):
        out = train_transform(frames, crop_size=60, rng=rng, multiscale=False)
        columns = out[0, 0, :, 0].astype(int)
        if columns[0] > columns[-1]:
            flips += 1
            assert np.all(out[:, 0, :, 0] == out[0, 0, :, 0])  # every frame mirrored alike
        else:
            assert np.all(np.diff(columns) == 1)
    assert 30 < flips < 70
    no_flip = np.random.default_rng(3)
    for _ in range(50):
        out = train_transform(frames, crop_size=60, rng=no_flip, multiscale=False, flip=False)
        assert np.all(np.diff(out[0, 0, :, 0].astype(int)) == 1)  # columns always ascending


def test_train_transform_reproducible_from_rng():
    frames = coordinate_clip()
    a = train_transform(frames, crop_size=32, rng=np.random.default_rng(5))
    b = train_transform(frames, crop_size=32, rng=np.random.default_rng(5))
    assert np.array_equal(a, b) and a.shape == (3, 32, 32, 3)


def test_eval_transform_centre_and_three_crops():
    frames = coordinate_clip(h=60, w=80)
    one = eval_transform(frames, short_side=60, crop_size=40, crops=1)
    assert one.shape == (1, 3, 40, 40, 3)
    assert (one[0, 0, 0, 0, 0], one[0, 0, 0, 0, 1]) == (20, 10)  # centre: x=(80-40)/2, y=(60-40)/2
    three = eval_transform(frames, short_side=60, crop_size=40, crops=3)
    assert three.shape == (3, 3, 40, 40, 3)
    assert [(int(c[0, 0, 0, 0]), int(c[0, 0, 0, 1])) for c in three] == [(0, 10), (20, 10), (40, 10)]
    portrait = coordinate_clip(h=80, w=60)
    three = eval_transform(portrait, short_side=60, crop_size=40, crops=3)
    assert [(int(c[0, 0, 0, 0]), int(c[0, 0, 0, 1])) for c in three] == [(10, 0), (10, 20), (10, 40)]
    # resizing first: 120x160 -> short side 60 then centre crop 60
    big = np.zeros((1, 120, 160, 3), np.uint8)
    assert eval_transform(big, short_side=60, crop_size=60).shape == (1, 1, 60, 60, 3)
    with pytest.raises(ValueError, match="crops"):
        eval_transform(frames, short_side=60, crop_size=40, crops=2)


def test_normalize_eco_preset_is_bgr_0_255_minus_mean():
    clips = torch.zeros((2, 4, 5, 6, 3), dtype=torch.uint8)
    clips[..., 0], clips[..., 1], clips[..., 2] = 200, 100, 50  # R, G, B
    out = normalize(clips, "eco")
    assert out.dtype == torch.float32 and out.shape == (2, 4, 3, 5, 6)
    # channel 0 = B - 104, 1 = G - 117, 2 = R - 128
    assert out[0, 0, :, 0, 0].tolist() == [50 - 104, 100 - 117, 200 - 128]


def test_normalize_imagenet_preset_values():
    clips = torch.full((1, 1, 2, 2, 3), 255, dtype=torch.uint8)
    out = normalize(clips, "imagenet")[0, 0, :, 0, 0]
    expected = [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    assert torch.allclose(out, torch.tensor(expected), atol=1e-5)
    assert set(NORMALIZATION_PRESETS) >= {"eco", "imagenet"}
    with pytest.raises(ValueError, match="valid: eco"):
        normalize(clips, "nope")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_normalize_stays_on_device():
    clips = torch.zeros((1, 2, 4, 4, 3), dtype=torch.uint8, device="cuda")
    assert normalize(clips, "eco").device.type == "cuda"
