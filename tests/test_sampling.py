"""TSN sampling: exact index tables, computed by hand from the segment definition (not by the code under test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.sampling import clip_rng, eval_indices, train_indices

REPO = str(Path(__file__).resolve().parents[1])

# (num_frames, T) -> segment centres floor((k + 0.5) * n / T).
EVAL_TABLE = [
    (16, 4, [2, 6, 10, 14]),          # segments of 4 frames: centres 2, 6, 10, 14
    (10, 4, [1, 3, 6, 8]),            # 1.25, 3.75, 6.25, 8.75
    (300, 16, [9, 28, 46, 65, 84, 103, 121, 140, 159, 178, 196, 215, 234, 253, 271, 290]),  # 9.375 + 18.75k
    (8, 8, [0, 1, 2, 3, 4, 5, 6, 7]),  # one frame per segment
    (3, 8, [0, 0, 0, 1, 1, 2, 2, 2]),  # fewer frames than segments: 0.1875, 0.5625, ..., 2.0625, 2.4375, 2.8125
    (1, 4, [0, 0, 0, 0]),
    (5, 1, [2]),
    (7, 2, [1, 5]),                   # 1.75, 5.25
]


@pytest.mark.parametrize("n,t,expected", EVAL_TABLE)
def test_eval_indices_are_segment_centres(n, t, expected):
    idx = eval_indices(n, t)
    assert idx.dtype == np.int64 and idx.tolist() == expected


# (n, T, K) -> per clip c: floor((k + (c + 0.5)/K) * n / T).
MULTI_CLIP_TABLE = [
    (16, 4, 2, [[1, 5, 9, 13], [3, 7, 11, 15]]),                  # offsets 1/4 and 3/4 of a 4-frame segment
    (30, 3, 3, [[1, 11, 21], [5, 15, 25], [8, 18, 28]]),          # 10-frame segments: 1.67, 5, 8.33
    (12, 4, 1, [[1, 4, 7, 10]]),                                  # K=1: the centres
    (2, 4, 2, [[0, 0, 1, 1], [0, 0, 1, 1]]),                      # n < T: 0.125,0.625,1.125,1.625 / 0.375,...
]


@pytest.mark.parametrize("n,t,k,expected", MULTI_CLIP_TABLE)
def test_multi_clip_offsets(n, t, k, expected):
    assert [eval_indices(n, t, clip=c, num_clips=k).tolist() for c in range(k)] == expected


def test_eval_indices_exact_for_large_counts():
    # Rational arithmetic: no float drift at Kinetics/long-video sizes.
    n, t = 10**9 + 7, 16
    expected = [((2 * k + 1) * n) // (2 * t) for k in range(t)]
    assert eval_indices(n, t).tolist() == expected


def test_train_indices_fall_inside_their_segments_and_cover_them():
    n, t = 10, 4  # segments [0,2) [2,5) [5,7) [7,10): floor(k*n/T) .. floor((k+1)*n/T)
    segments = [(0, 2), (2, 5), (5, 7), (7, 10)]
    rng = np.random.default_rng(0)
    draws = np.stack([train_indices(n, t, rng) for _ in range(2000)])
    assert draws.dtype == np.int64
    for k, (lo, hi) in enumerate(segments):
        values, counts = np.unique(draws[:, k], return_counts=True)
        assert values.tolist() == list(range(lo, hi))  # every frame of the segment, nothing outside
        assert counts.min() > 2000 / (hi - lo) * 0.8  # roughly uniform


def test_train_indices_one_frame_per_segment_when_n_equals_t():
    assert train_indices(8, 8, np.random.default_rng(1)).tolist() == list(range(8))


@pytest.mark.parametrize("n,t", [(3, 8), (1, 16), (5, 6)])
def test_train_indices_fewer_frames_than_segments(n, t):
    rng = np.random.default_rng(0)
    for _ in range(200):
        idx = train_indices(n, t, rng)
        assert idx.shape == (t,) and idx.min() >= 0 and idx.max() < n
        assert np.all(np.diff(idx) >= 0)  # temporal order kept
        # segment k spans frames [k*n/T, (k+1)*n/T): the drawn frame is one it overlaps
        for k, i in enumerate(idx):
            assert np.floor(k * n / t) <= i <= np.ceil((k + 1) * n / t) - 1
    # all frames appear over many draws
    assert set(np.concatenate([train_indices(n, t, rng) for _ in range(50)]).tolist()) == set(range(n))


def test_clip_rng_reproducible_and_distinct():
    a = train_indices(300, 16, clip_rng(0, 3, "vid_a"))
    assert a.tolist() == train_indices(300, 16, clip_rng(0, 3, "vid_a")).tolist()
    assert a.tolist() != train_indices(300, 16, clip_rng(0, 4, "vid_a")).tolist()  # fresh every epoch
    assert a.tolist() != train_indices(300, 16, clip_rng(0, 3, "vid_b")).tolist()
    assert a.tolist() != train_indices(300, 16, clip_rng(1, 3, "vid_a")).tolist()


def test_clip_rng_stable_across_processes():
    # hash() is salted per process; clip_rng must not be. A child with a different PYTHONHASHSEED agrees.
    code = ("from pipeline.data.sampling import clip_rng, train_indices;"
            "print(train_indices(300, 16, clip_rng(7, 2, 'abc')).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123"}, cwd=REPO)
    assert out.stdout.strip() == str(train_indices(300, 16, clip_rng(7, 2, "abc")).tolist())


@pytest.mark.parametrize("call", [
    lambda: train_indices(0, 4, np.random.default_rng(0)),
    lambda: eval_indices(10, 0),
    lambda: eval_indices(10, 4, clip=2, num_clips=2),
])
def test_invalid_arguments(call):
    with pytest.raises(ValueError):
        call()


def test_epoch_order_is_a_permutation_of_seed_and_epoch_only():
    from pipeline.data.sampling import epoch_order

    a = epoch_order(50, 7, 3)
    assert sorted(a.tolist()) == list(range(50)) and a.dtype == np.int64
    np.testing.assert_array_equal(a, epoch_order(50, 7, 3))  # a resumed run replays the same order
    assert not np.array_equal(a, epoch_order(50, 7, 4)) and not np.array_equal(a, epoch_order(50, 8, 3))
    assert epoch_order(0, 7, 3).tolist() == []
    with pytest.raises(ValueError, match="num_rows"):
        epoch_order(-1, 0, 0)
