"""Elastic training bookkeeping as pure functions (numpy only; no Ray, no torch.distributed, no wandb).

Ray Train V2 does the scheduling (ScalingConfig(num_workers=(min, max)): start with what the cluster gives,
restart with the workers that remain after a loss, grow back when resources return; docs/cluster.md). What the
project adds, here, is what keeps the *training* identical whatever the world size (docs/training.md):

- the global batch of `max` workers at every world size, by gradient accumulation (`accum_for_world`), so the lr
  schedule, a pure function of the optimiser step, never jumps;
- the exact data position of an epoch (`EpochPosition`): the set of manifest rows every rank has trained on, kept
  as a bitmap (`pack_rows` / `unpack_rows`: 30 KB for Kinetics' 240k rows) in each mid-epoch checkpoint; the
  resumed epoch visits only the rows outside it (pipeline.data.sampling.epoch_rows);
- the record of each (re)start of the worker group: its world size, why it started (`restart_cause`) and the
  optimiser steps redone (`steps_redone`);
- when a mid-epoch checkpoint is written (`checkpoint_reason`): every `checkpoint.every_steps` steps, and at once
  when Ray Train delivers a new preemption notice (ray.train.get_preemption_info).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from pipeline.data.sampling import epoch_rows


def accum_for_world(world: int, max_workers: int, grad_accum_steps: int) -> int:
    """Micro-batches per optimiser step on each of `world` workers so that a step sees the global batch of
    `max_workers` x `grad_accum_steps` micro-batches (config validation guarantees it divides evenly)."""
    if not 1 <= world <= max_workers:
        raise ValueError(f"world size {world} is outside scaling.num_workers' range [1, {max_workers}]")
    total = max_workers * grad_accum_steps
    if total % world:
        raise ValueError(f"a global batch of {max_workers} x {grad_accum_steps} micro-batches cannot be split evenly "
                         f"over {world} workers (scaling.num_workers / train.grad_accum_steps)")
    return total // world


def pack_rows(rows: Iterable[int] | np.ndarray, num_rows: int) -> np.ndarray:
    """The set `rows` (indices into the split's manifest rows) as a bitmap: uint8, ceil(num_rows / 8) bytes."""
    mask = np.zeros(num_rows, dtype=bool)
    idx = np.fromiter(rows, dtype=np.int64) if not isinstance(rows, np.ndarray) else rows.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= num_rows):
        raise ValueError(f"row index out of range [0, {num_rows}): {int(idx.min())}..{int(idx.max())}")
    mask[idx] = True
    return np.packbits(mask)


def unpack_rows(packed: np.ndarray | bytes, num_rows: int) -> np.ndarray:
    """The boolean mask (num_rows,) of a `pack_rows` bitmap."""
    packed = np.frombuffer(packed, dtype=np.uint8) if isinstance(packed, bytes | bytearray) else np.asarray(packed)
    if packed.size != (num_rows + 7) // 8:
        raise ValueError(f"data position bitmap has {packed.size} bytes; {num_rows} rows need {(num_rows + 7) // 8}")
    return np.unpackbits(packed.astype(np.uint8), count=num_rows).astype(bool)


def restart_cause(previous_world: int | None, world: int, *, resumed: bool) -> str:
    """Why this worker group started, from the world size of the previous group of the same launch (None: this
    is the launch's first group) and whether a checkpoint was restored.

    Ray Train V2 restarts a group for two reasons only: a worker failed (the node left: the new group has the
    workers that remain, or as many as before once the node is replaced) or the elastic policy saw room for more
    workers (a resize: the group grows). A group that grew is therefore a resize, one that shrank or kept its
    size followed a failure.
    """
    if previous_world is None:
        return "resumed from storage" if resumed else "start"
    if world > previous_world:
        return f"grown {previous_world}->{world} (resources returned)"
    if world < previous_world:
        return f"shrunk {previous_world}->{world} (worker lost)"
    return f"restarted at {world} (worker failed)"


def steps_redone(furthest_step: int | None, restored_step: int) -> int:
    """Optimiser steps trained before the restart that the restored checkpoint does not contain (done again)."""
    return max(0, int(furthest_step) - int(restored_step)) if furthest_step is not None else 0


def checkpoint_reason(step: int, every_steps: int, *, new_notice: bool) -> str | None:
    """Why the loop writes a mid-epoch checkpoint after optimiser step `step`, or None: the periodic checkpoint
    (`every_steps`, 0: none) or a preemption notice not acted on yet (a node of the group is draining)."""
    if new_notice:
        return "preemption notice"
    if every_steps and step % every_steps == 0:
        return "every_steps"
    return None


def steps_to_checkpoint(step: int, every_steps: int, max_steps: int, check_steps: int = 0) -> int | None:
    """Optimiser steps from `step` to where the loop next stops to look: the next multiple of every_steps (a
    checkpoint) or of check_steps (a preemption check), at most to max_steps (None: the rest of the epoch)."""
    ends = [(step // n + 1) * n for n in (every_steps, check_steps) if n] + ([max_steps] if max_steps else [])
    return min(ends) - step if ends else None


def data_position(epoch: int, trained: np.ndarray) -> dict[str, Any]:
    """The checkpoint's record of epoch `epoch`'s progress: the packed mask of manifest rows trained on so far."""
    return {"epoch": int(epoch), "num_rows": int(trained.size), "rows_trained": int(trained.sum()),
            "trained": np.packbits(trained)}


@dataclass
class EpochPosition:
    """How far epoch `epoch` has got: the rows every rank has trained on (`trained`, synced at checkpoints) and
    the rows this rank has trained on since the last sync (`pending`). What a checkpoint stores and a resume
    starts from; the rows a rank trains next are a pure function of it (`plan`)."""

    epoch: int
    trained: np.ndarray  # bool (num_rows,), indexed by the split's row number
    pending: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, epoch: int, num_rows: int, record: dict[str, Any] | None = None) -> "EpochPosition":
        """Epoch `epoch` from the beginning, or from a checkpoint's `record` (`as_record`) of the same epoch and
        split; a record of another epoch or split size is not this epoch's and is ignored."""
        trained = np.zeros(num_rows, dtype=bool)
        if record is not None and int(record["epoch"]) == epoch and int(record["num_rows"]) == num_rows:
            trained = unpack_rows(np.asarray(record["trained"]), num_rows)
        return cls(epoch=int(epoch), trained=trained)

    @property
    def num_rows(self) -> int:
        return int(self.trained.size)

    @property
    def rows_trained(self) -> int:
        return int(self.trained.sum())

    def plan(self, seed: int, rank: int, world: int, limit: int | None = None) -> np.ndarray:
        """The rows `rank` trains next, in order (sampling.epoch_rows over the rows not yet trained)."""
        return epoch_rows(self.num_rows, seed, self.epoch, trained=self.trained, rank=rank, world=world,
                          limit=limit)

    def record(self, rows: Iterable[int]) -> None:
        """This rank handed `rows` to the training step."""
        self.pending.extend(int(r) for r in rows)

    def sync(self, gather: Callable[[list[int]], list[list[int]]]) -> None:
        """Merge every rank's pending rows into `trained`; `gather` returns every rank's list (a collective:
        every rank calls it at the same point)."""
        for part in gather(list(self.pending)):
            self.trained[np.asarray(part, dtype=np.int64)] = True
        self.pending.clear()

    def as_record(self) -> dict[str, Any]:
        """The checkpoint's record (synced rows only)."""
        return data_position(self.epoch, self.trained)
