"""`eco bench decode`'s paths decode the same frames: a ratio between loaders means something only if every loader
returns the clip it was asked for."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.bench import baselines
from pipeline.bench.decode import PATHS, _paths, camera_like_frames
from pipeline.data.decode import probe
from pipeline.data.encode import write_video
from tests.videos import frame_ids, reference_frames, write_test_video


@pytest.mark.timeout(120)
def test_every_path_returns_the_requested_frames_at_the_short_side(tmp_path):
    # B-frames (x264's default) and 2 GOPs: seeking, reordering and skipped non-reference frames all happen.
    path = write_test_video(tmp_path / "clip.mp4", num_frames=48, width=64, height=48, gop=24)
    info = probe(path)
    ref = reference_frames(path)
    fns = _paths(str(path), info, torchcodec=baselines.torchcodec_available())
    assert set(fns) <= set(PATHS) and {"project", "naive_decord", "naive_pyav"} <= set(fns)
    idx = np.array([3, 11, 11, 20, 29, 47])
    for name, fn in fns.items():
        frames = fn(idx)
        if not isinstance(frames, np.ndarray):  # the peers return torch (T, C, H, W)
            frames = frames.permute(0, 2, 3, 1).numpy()
        assert frames.shape == (6, 256, 341, 3), name  # upscaled to short side 256: 64x48 -> 341x256
        # Which frame: by mean colour (the test frames' red level rises with the index), free of the scaling.
        colours, ref_colours = frames.mean(axis=(1, 2))[:, None, None], ref.mean(axis=(1, 2))[:, None, None]
        assert frame_ids(colours, ref_colours).tolist() == idx.tolist(), name


@pytest.mark.timeout(60)
def test_camera_like_frames_move_and_are_noisy(tmp_path):
    frames = np.stack(list(camera_like_frames(1.0, 8, 96, 64, seed=0)))
    assert frames.shape == (8, 64, 96, 3) and frames.dtype == np.uint8
    # Sensor noise: neighbouring pixels differ; shake and the subject: consecutive frames differ.
    assert np.abs(np.diff(frames[0].astype(int), axis=1)).mean() > 3
    assert all(np.abs(frames[i + 1].astype(int) - frames[i]).mean() > 2 for i in range(7))
    assert write_video(tmp_path / "camera.mp4", frames, 8).stat().st_size > 0
