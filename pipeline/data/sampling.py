"""TSN segment sampling (Wang et al., ECCV 2016, section 3.1; ECO section 3.1): pure numpy, no I/O.

A video of `n` frames is split into `T` equal segments; segment k covers the frame interval [k*n/T, (k+1)*n/T).
Training draws one frame uniformly inside each segment (fresh every epoch), evaluation takes the segment centres,
and multi-clip evaluation shifts the point inside every segment: clip c of K takes the point (c + 0.5)/K of the
way through each segment (K=1 gives the centres).

Videos with fewer frames than segments (n < T) use the same continuous formula, so indices stay in temporal order
and frames repeat as evenly as possible (e.g. n=3, T=6 -> 0 0 1 1 2 2), as the authors' loaders do by padding.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _check(num_frames: int, num_segments: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1 (a video with no decodable frame cannot be sampled), got {num_frames}")
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")


def train_indices(num_frames: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """One random frame inside each of `num_segments` equal segments: int64 (T,), non-decreasing, in [0, n).

    With n >= T every segment holds at least one whole frame and the frame is drawn uniformly among the frames
    whose index falls in [floor(k*n/T), floor((k+1)*n/T)). With n < T a segment is narrower than a frame; the
    frame under a uniform point of the segment is taken.
    """
    _check(num_frames, num_segments)
    k = np.arange(num_segments)
    if num_frames >= num_segments:
        start = (k * num_frames) // num_segments
        stop = ((k + 1) * num_frames) // num_segments
        return rng.integers(start, stop).astype(np.int64)
    points = (k + rng.random(num_segments)) * num_frames / num_segments
    return np.minimum(np.floor(points).astype(np.int64), num_frames - 1)


def eval_indices(num_frames: int, num_segments: int, *, clip: int = 0, num_clips: int = 1) -> np.ndarray:
    """Deterministic indices: the point (clip + 0.5)/num_clips through each segment. int64 (T,), in [0, n).

    clip=0, num_clips=1 gives the segment centres floor((k + 0.5) * n / T) (TSN's test-time sampling).
    """
    _check(num_frames, num_segments)
    if num_clips < 1 or not 0 <= clip < num_clips:
        raise ValueError(f"clip must be in [0, num_clips) with num_clips >= 1, got clip={clip} num_clips={num_clips}")
    # Exact rational arithmetic: (k*K + clip + 0.5) * n / (T*K) computed as (2*(k*K + clip) + 1) * n // (2*T*K),
    # so float rounding never moves an index across a frame boundary.
    k = np.arange(num_segments, dtype=np.int64)
    numerator = (2 * (k * num_clips + clip) + 1) * num_frames
    idx = numerator // (2 * num_segments * num_clips)
    return np.minimum(idx, num_frames - 1)


def clip_rng(seed: int, epoch: int, video_id: str) -> np.random.Generator:
    """A generator seeded by (seed, epoch, video_id): identical in every process and on every machine.

    Python's hash() is salted per process (PYTHONHASHSEED), so the key is hashed with BLAKE2b instead.
    """
    digest = hashlib.blake2b(f"{int(seed)}\x1f{int(epoch)}\x1f{video_id}".encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def epoch_order(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch `epoch` visits `num_rows` manifest rows: a permutation (int64) that depends only
    on (seed, epoch), so a resumed run (or a restarted worker group) sees the same order as an uninterrupted one."""
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    digest = hashlib.blake2b(f"order\x1f{int(seed)}\x1f{int(epoch)}".encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little")).permutation(num_rows).astype(np.int64)


def exclude_rows(order: np.ndarray, trained: np.ndarray | None) -> np.ndarray:
    """`order` without the rows marked in the boolean mask `trained` (indexed by row, not by position), the
    others in their order: what a resumed epoch still has to visit (pipeline.training.elastic)."""
    if trained is None:
        return order
    trained = np.asarray(trained, dtype=bool)
    if trained.shape != (order.size,):
        raise ValueError(f"trained mask has shape {trained.shape}; the epoch orders {order.size} rows")
    return order[~trained[order]]


def epoch_rows(num_rows: int, seed: int, epoch: int, *, trained: np.ndarray | None = None, rank: int = 0,
               world: int = 1, limit: int | None = None) -> np.ndarray:
    """The rows rank `rank` of `world` trains in epoch `epoch`, in order: a pure function of its arguments.

    The epoch's order (`epoch_order`) less the rows already `trained` (a boolean mask over the rows: a resumed
    epoch), dealt round-robin over the ranks, each rank taking the same number (DDP steps in lockstep; the last
    `len % world` rows wait for the next epoch, as an equal split drops them), at most `limit` of them (the rows
    the remaining optimiser steps will use: a run stopped at train.max_steps decodes no more).
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world}")
    remaining = exclude_rows(epoch_order(num_rows, seed, epoch), trained)
    mine = remaining[rank::world][:remaining.size // world]
    return mine if limit is None else mine[:max(0, int(limit))]
