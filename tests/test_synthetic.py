"""The synthetic direction-of-motion task: single frames carry no class information; the videos are real."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.data.decode import decode_frames, probe
from pipeline.data.synthetic import DIRECTIONS, class_names, make_synthetic, render_clip, write_videos
from tests.videos import mean_abs_diff


def _render(classes: int, per_class: int, frames: int = 16, size=(64, 64), seed=0):
    clips, positions, labels = [], [], []
    for c in range(classes):
        for i in range(per_class):
            clip, pos = render_clip(c, np.random.default_rng([seed, c, i]), size=size, frames=frames)
            clips.append(clip)
            positions.append(pos)
            labels.append(c)
    return np.stack(clips), np.stack(positions), np.array(labels)


def test_classes_differ_only_in_direction_of_motion():
    _, positions, labels = _render(8, 20, frames=8, size=(64, 64))
    for c, (_, (dy, dx)) in enumerate(DIRECTIONS):
        steps = np.diff(positions[labels == c], axis=1)  # (N, F-1, 2)
        steps = (steps + 32) % 64 - 32  # undo the wrap-around
        assert np.all(np.sign(np.round(steps[..., 0], 6)) == dy) and np.all(np.sign(np.round(steps[..., 1], 6)) == dx)
        speed = np.hypot(steps[..., 0], steps[..., 1])
        assert 0.012 * 64 - 1e-6 <= speed.min() and speed.max() <= 0.02 * 64 + 1e-6


def test_single_frame_marginals_are_class_independent():
    # 1. The square's position is uniform over the frame for every class (wrap-around + uniform start).
    #    Frames of one video are correlated, so the tolerance is 4 sigma of a bin fraction over 300 videos.
    _, positions, labels = _render(4, 300, frames=2, size=(32, 32))
    for c in range(4):
        for axis in (0, 1):
            hist, _ = np.histogram(positions[labels == c][..., axis], bins=4, range=(0, 32))
            assert np.all(np.abs(hist / hist.sum() - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 300)), (c, axis, hist)
    clips, positions, labels = _render(4, 100, frames=8)
    # 2. Per-class mean frames agree (block-averaged to 8x8: colour statistics are class-independent too).
    means = clips.reshape(len(clips), 8, 8, 8, 8, 8, 3).mean(axis=(1, 3, 5))  # (N, 8, 8, 3)
    class_means = np.stack([means[labels == c].mean(axis=0) for c in range(4)])
    spread = np.abs(class_means - class_means.mean(axis=0)).max()
    noise = means.std(axis=0).max() / np.sqrt(100)
    assert spread < 5 * noise, (spread, noise)
    # 3. A classifier on single frames is at chance: nearest class-mean of 8x8 frames, train/test halves.
    frame_features = clips[:, ::2].reshape(len(clips), 4, 8, 8, 8, 8, 3).mean(axis=(3, 5)).reshape(len(clips), 4, -1)
    train = np.arange(len(clips)) % 2 == 0
    centroids = np.stack([frame_features[train & (labels == c)].reshape(-1, frame_features.shape[-1]).mean(0)
                          for c in range(4)])
    test_frames = frame_features[~train].reshape(-1, frame_features.shape[-1])
    test_labels = np.repeat(labels[~train], 4)
    predicted = np.argmin(((test_frames[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == test_labels).mean() < 0.25 + 0.08


def test_written_videos_decode_to_the_rendered_frames(tmp_path):
    paths = write_videos(tmp_path, classes=2, videos_per_class=2, size=(96, 64), frames=12, fps=12, seed=3)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == [
        "videos/move_left/move_left_0000.mp4", "videos/move_left/move_left_0001.mp4",
        "videos/move_right/move_right_0000.mp4", "videos/move_right/move_right_0001.mp4"]
    for path in paths:
        info = probe(path)
        assert (info.num_frames, info.width, info.height, info.fps, info.codec) == (12, 96, 64, 12.0, "h264")
    label = 1 if "left" in paths[0].name else 0
    rendered, _ = render_clip(label, np.random.default_rng([3, label, 0]), size=(96, 64), frames=12)
    decoded = decode_frames(paths[0], np.arange(12))
    assert decoded.shape == (12, 64, 96, 3)
    assert mean_abs_diff(decoded, rendered) < 4.0  # H.264 at crf 20


@pytest.mark.parametrize("classes", [1, 9])
def test_class_count_is_checked(classes):
    with pytest.raises(ValueError, match="2..8"):
        class_names(classes)


def test_make_synthetic_writes_manifest(tmp_path, ray_session):
    summary = make_synthetic(tmp_path, classes=2, videos_per_class=4, size=(64, 64), frames=12, fps=12, seed=0,
                             probe_workers=1)
    assert summary.accepted == 8 and summary.num_classes == 2
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert sorted(labels) == ["move_left", "move_right"]
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "manifest.parquet").to_pylist()
    assert len(table) == 8 and {row["num_frames"] for row in table} == {12}
    assert all(f"/{row['label_name']}/" in row["path"] and labels[row["label"]] == row["label_name"] for row in table)
    assert sum(row["split"] == "val" for row in table) == 2  # 25 % per class, stratified


def _motion_direction(frames: np.ndarray) -> tuple[int, int]:
    """Direction (sign dy, sign dx) from the order of frames: the shift between consecutive frame differences,
    found by circular cross-correlation (the square's edges move; the static background cancels)."""
    gray = frames.astype(np.float32).mean(-1)
    diffs = np.diff(gray, axis=0)
    votes = np.zeros(2)
    for a, b in zip(diffs[:-1], diffs[1:]):
        corr = np.fft.ifft2(np.fft.fft2(b) * np.conj(np.fft.fft2(a))).real
        h, w = corr.shape
        dy, dx = np.unravel_index(np.argmax(corr), corr.shape)
        votes += np.sign([dy - h if dy > h // 2 else dy, dx - w if dx > w // 2 else dx])
    return int(np.sign(votes[0])), int(np.sign(votes[1]))


def test_four_tsn_frames_in_order_determine_the_class():
    from pipeline.data.sampling import eval_indices

    correct = reversed_matches_opposite = total = 0
    for c, (_, direction) in enumerate(DIRECTIONS):
        for i in range(8):
            clip, _ = render_clip(c, np.random.default_rng([5, c, i]), size=(64, 64), frames=32)
            frames = clip[eval_indices(32, 4)]
            correct += _motion_direction(frames) == direction
            reversed_matches_opposite += _motion_direction(frames[::-1]) == (-direction[0], -direction[1])
            total += 1
    assert correct / total >= 0.95 and reversed_matches_opposite / total >= 0.95
