"""Elastic training (issue 15), the pure parts: the num_workers range in the config, gradient accumulation per world
size, the data position bitmap and the resumed epoch's order, restart causes and redone steps, the epoch's chunks.
The two-node run that loses and regains a worker is in tests/test_cluster_elastic.py."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import Config, ConfigError
from pipeline.data.sampling import epoch_order, epoch_rows, exclude_rows
from pipeline.training import elastic
from pipeline.training.optim import Schedule, lr_at


@pytest.mark.parametrize("value, expected", [
    (2, (2, 2, False)), ([1, 2], (1, 2, True)), ([4, 4], (4, 4, True)),
])
def test_num_workers_fixed_or_range(value, expected):
    s = Config().replace({"scaling.num_workers": value}).scaling
    assert (s.min_workers, s.max_workers, s.elastic) == expected
    # The range travels through to_dict/from_dict (W&B, checkpoints) and reaches Ray as a tuple.
    assert Config.from_dict(Config().replace({"scaling.num_workers": value}).to_dict()).scaling == s


@pytest.mark.parametrize("overrides, message", [
    ({"scaling.num_workers": [2, 1]}, "scaling.num_workers: [min, max] needs 1 <= min <= max, got [2, 1]"),
    ({"scaling.num_workers": [0, 2]}, "scaling.num_workers: [min, max] needs 1 <= min <= max, got [0, 2]"),
    ({"scaling.num_workers": [1, 2, 3]}, "scaling.num_workers: expected an integer or [min, max], got [1, 2, 3]"),
    ({"scaling.num_workers": 0}, "scaling.num_workers: must be >= 1"),
    ({"scaling.num_workers": "two"}, "scaling.num_workers: expected an integer"),
    # 4 x 1 micro-batches cannot be split over 3 workers; grad_accum_steps 3 makes 12, divisible by 3 and 4.
    ({"scaling.num_workers": [3, 4]}, "train.grad_accum_steps to a multiple of 3"),
    ({"scaling.num_workers": [1, 4]}, "cannot be split evenly over 3 workers"),
    ({"checkpoint.every_steps": -1}, "checkpoint.every_steps: must be >= 0"),
])
def test_invalid_scaling_is_rejected_with_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Config().replace(overrides)


def test_a_range_with_enough_accumulation_is_accepted():
    cfg = Config().replace({"scaling.num_workers": [3, 4], "train.grad_accum_steps": 3})
    assert [elastic.accum_for_world(w, 4, 3) for w in (3, 4)] == [4, 3]


@pytest.mark.parametrize("world, max_workers, accum, expected", [
    (2, 2, 1, 1), (1, 2, 1, 2), (1, 8, 2, 16), (4, 8, 2, 4), (8, 8, 2, 2), (3, 6, 1, 2),
])
def test_accumulation_keeps_the_global_batch(world, max_workers, accum, expected):
    got = elastic.accum_for_world(world, max_workers, accum)
    assert got == expected
    assert world * got == max_workers * accum  # micro-batches per optimiser step, whatever the world size


def test_accumulation_rejects_uneven_and_out_of_range_worlds():
    with pytest.raises(ValueError, match="cannot be split evenly over 3 workers"):
        elastic.accum_for_world(3, 4, 1)
    with pytest.raises(ValueError, match="outside"):
        elastic.accum_for_world(5, 4, 1)


def test_lr_schedule_is_continuous_across_a_resize():
    # The step counter and the schedule do not depend on the world size: the lr at the step after a resize is the
    # one an uninterrupted run uses there.
    s = Schedule(peak_lr=0.1, total_steps=30, steps_per_epoch=10, warmup_steps=3, kind="cosine")
    fixed = [lr_at(k, s) for k in range(30)]
    # World 2 for steps 0-11, world 1 (accumulating twice as many micro-batches) for 12-19, 2 again after.
    elastic_run = [lr_at(k, s) for k in range(0, 12)] + [lr_at(k, s) for k in range(12, 20)] + \
                  [lr_at(k, s) for k in range(20, 30)]
    assert elastic_run == fixed


def test_data_position_bitmap_round_trip():
    rows = [0, 5, 7, 8, 239_999]
    packed = elastic.pack_rows(rows, 240_000)
    assert packed.dtype == np.uint8 and packed.size == 30_000  # Kinetics' 240k rows in 30 KB
    mask = elastic.unpack_rows(packed, 240_000)
    assert np.flatnonzero(mask).tolist() == rows
    assert np.flatnonzero(elastic.unpack_rows(elastic.pack_rows([], 13), 13)).tolist() == []
    with pytest.raises(ValueError, match="out of range"):
        elastic.pack_rows([13], 13)
    with pytest.raises(ValueError, match="2 bytes; 24 rows need 3"):
        elastic.unpack_rows(packed[:2], 24)
    pos = elastic.data_position(3, mask[:16])
    assert (pos["epoch"], pos["num_rows"], pos["rows_trained"]) == (3, 16, 4)


def test_resumed_epoch_visits_exactly_the_rows_not_trained():
    n = 20
    order = epoch_order(n, seed=7, epoch=2)
    # Two ranks took positions 0..7 of the epoch's order (in any interleaving) before the checkpoint.
    trained = np.zeros(n, dtype=bool)
    trained[order[:8]] = True
    rest = exclude_rows(order, trained)
    # Independently: the order's tail, same relative order, no row twice, none missing.
    assert rest.tolist() == order[8:].tolist()
    assert sorted(rest.tolist() + order[:8].tolist()) == list(range(n))
    # Rows trained out of order (dynamic block hand-out) are removed wherever they are.
    scattered = np.zeros(n, dtype=bool)
    scattered[order[[1, 4, 9, 19]]] = True
    assert exclude_rows(order, scattered).tolist() == [r for i, r in enumerate(order) if i not in (1, 4, 9, 19)]
    assert exclude_rows(order, None) is order
    with pytest.raises(ValueError, match="orders 20 rows"):
        exclude_rows(order, np.zeros(19, dtype=bool))


@pytest.mark.parametrize("previous, world, resumed, expected", [
    (None, 2, False, "start"),
    (None, 2, True, "resumed from storage"),
    (2, 1, True, "shrunk 2->1 (worker lost)"),
    (1, 2, True, "grown 1->2 (resources returned)"),
    (2, 2, True, "restarted at 2 (worker failed)"),
])
def test_restart_cause(previous, world, resumed, expected):
    assert elastic.restart_cause(previous, world, resumed=resumed) == expected


def test_steps_redone():
    assert elastic.steps_redone(None, 4) == 0  # first group of the launch
    assert elastic.steps_redone(7, 4) == 3  # steps 5, 6, 7 trained again after restoring step 4
    assert elastic.steps_redone(4, 4) == 0


@pytest.mark.parametrize("step, every, max_steps, expected", [
    (0, 0, 0, None),  # the whole epoch
    (0, 4, 0, 4), (3, 4, 0, 1), (4, 4, 0, 4),  # up to the next multiple of every_steps
    (0, 0, 6, 6), (5, 4, 6, 1), (2, 4, 3, 1),  # never past max_steps
])
def test_chunk_steps(step, every, max_steps, expected):
    assert elastic.steps_to_checkpoint(step, every, max_steps) == expected


@pytest.mark.parametrize("step, every, check, max_steps, expected", [
    (0, 0, 3, 0, 3), (3, 0, 3, 0, 3),  # preemption checks alone
    (0, 4, 3, 0, 3), (3, 4, 3, 0, 1), (4, 4, 3, 0, 2), (6, 4, 3, 0, 2),  # the nearer of a check and a checkpoint
    (5, 4, 3, 7, 1), (6, 0, 3, 7, 1),  # never past max_steps
])
def test_chunk_steps_end_at_preemption_checks(step, every, check, max_steps, expected):
    assert elastic.steps_to_checkpoint(step, every, max_steps, check) == expected


@pytest.mark.parametrize("step, every, new_notice, expected", [
    (4, 4, False, "every_steps"), (5, 4, False, None), (5, 0, False, None),
    (5, 4, True, "preemption notice"), (4, 4, True, "preemption notice"), (3, 0, True, "preemption notice"),
])
def test_checkpoint_reason(step, every, new_notice, expected):
    assert elastic.checkpoint_reason(step, every, new_notice=new_notice) == expected


def test_epoch_rows_are_a_pure_function_dealt_equally_over_the_ranks():
    order = epoch_order(10, 5, 2)
    assert epoch_rows(10, 5, 2).tolist() == order.tolist()  # one rank: the epoch's order
    again = [epoch_rows(10, 5, 2, rank=r, world=3) for r in range(3)]
    assert [a.tolist() for a in again] == [epoch_rows(10, 5, 2, rank=r, world=3).tolist() for r in range(3)]
    assert [a.tolist() for a in again] == [order[r::3][:3].tolist() for r in range(3)]  # 3 each, 1 row waits
    assert len(set(np.concatenate(again).tolist())) == 9
    assert epoch_rows(10, 5, 3).tolist() != order.tolist()  # another epoch, another order
    assert epoch_rows(10, 5, 2, rank=1, world=2, limit=2).tolist() == order[1::2][:2].tolist()
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2"):
        epoch_rows(10, 5, 2, rank=2, world=2)


def test_epoch_position_resumes_exactly_the_rows_not_yet_trained_at_any_world_size():
    """Two ranks train part of epoch 2 and checkpoint; the resumed epoch, on one rank or on three, visits every
    other row exactly once and none of the trained ones."""
    position = elastic.EpochPosition.start(2, 10)
    plans = [position.plan(5, r, 2) for r in range(2)]
    per_rank = [p[:2].tolist() for p in plans]  # each rank trained its first two rows
    ranks = [elastic.EpochPosition(2, position.trained.copy()) for _ in range(2)]
    for rank, rows in zip(ranks, per_rank):
        rank.record(rows)
    for rank in ranks:
        rank.sync(lambda _mine: per_rank)  # the all-gather: every rank's rows
    record = ranks[0].as_record()
    assert record["rows_trained"] == 4 and np.array_equal(ranks[0].trained, ranks[1].trained)
    trained = sorted(sum(per_rank, []))
    for world in (1, 3):
        resumed = elastic.EpochPosition.start(2, 10, record)
        rest = [resumed.plan(5, r, world).tolist() for r in range(world)]
        flat = sum(rest, [])
        assert not set(flat) & set(trained) and len(flat) == len(set(flat))
        assert len(flat) == (6 // world) * world  # the equal split's remainder waits for the next epoch
        assert sorted(flat + trained) == sorted(set(flat) | set(trained))
    assert elastic.EpochPosition.start(3, 10, record).rows_trained == 0  # another epoch starts whole
    assert elastic.EpochPosition.start(2, 11, record).rows_trained == 0  # another split: not this position
    done = elastic.EpochPosition.start(2, 10, elastic.data_position(2, np.ones(10, bool)))
    assert done.plan(5, 0, 2).size == 0  # every row trained: an empty pass, not an error
