"""A training rank's clips: a Ray Data dataset made for each pass, from rows the rank computes itself.

Every rank holds the split's rows (manifest order, pipeline.data.pipeline.split_rows) and computes the rows it
trains in an epoch with a pure function (`EpochPosition.plan` -> sampling.epoch_rows: the epoch's order less the
rows already trained, dealt round-robin over the ranks, cut at the rows the remaining steps use). It then makes a
dataset of exactly those rows and iterates it; the decode tasks run wherever the cluster has room (CPU-only nodes
included), `data.decode_workers` in flight over all ranks. Only documented Ray Data calls are used: nothing
reaches a running dataset from outside, so the epoch contract does not depend on how Ray Data schedules a split.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from pipeline.config import Config
from pipeline.data.pipeline import ClipCollate, clip_dataset, clip_finish
from pipeline.training.elastic import EpochPosition
from pipeline.training.engine import BatchStream


class RankData:
    """Rank `rank` of `world`'s training and evaluation batches (dicts of tensors, `batch_hook` applied)."""

    def __init__(self, cfg: Config, train_rows: pa.Table, val_rows: pa.Table, *, rank: int, world: int,
                 run_state=None, batch_hook: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 device: Any = "cpu"):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.device = device  # where data.decode_on=device decodes: this rank's training device
        self.train_rows, self.val_rows = train_rows, val_rows
        self.run_state, self.hook = run_state, batch_hook
        self._row_of = {str(v): i for i, v in enumerate(train_rows.column("video_id").to_pylist())}
        # The run's decode tasks in flight, shared out over the ranks' datasets.
        self._decode_workers = max(1, -(-cfg.data.decode_workers // world))

    @property
    def num_train_rows(self) -> int:
        return self.train_rows.num_rows

    def train_stream(self, position: EpochPosition, *, limit: int | None, group: Any = None
                     ) -> tuple[BatchStream, bool]:
        """This rank's batches for the rest of `position`'s epoch, at most `limit` clips; each batch's rows are
        recorded in `position` as the step takes it. Returns (stream, whether `limit` cut the epoch short)."""
        t = self.cfg.train
        rows = position.plan(t.seed, self.rank, self.world)
        truncated = limit is not None and limit < rows.size
        rows = rows[:limit] if truncated else rows
        batches: Iterator[dict[str, Any]] = iter(())
        if rows.size:
            ds = clip_dataset(self.cfg, self.train_rows.take(rows), train=True, epoch=position.epoch,
                              decode_workers=self._decode_workers, run_state=self.run_state)
            collate = ClipCollate(keep_video_id=True, finish=clip_finish(self.cfg, train=True), device=self.device)
            batches = ds.iter_torch_batches(batch_size=t.batch_size, collate_fn=collate,
                                            prefetch_batches=self.cfg.data.prefetch_batches)

        def take(batch: dict[str, Any]) -> dict[str, Any]:
            position.record(self._row_of[v] for v in batch.pop("video_id"))
            return batch

        return BatchStream(batches, group=group, on_pull=self.hook, on_batch=take), truncated

    def val_batches(self) -> Iterator[dict[str, Any]]:
        """This rank's share of the validation clips (every clip is scored by exactly one rank)."""
        rows = np.arange(self.val_rows.num_rows, dtype=np.int64)[self.rank::self.world]
        if not rows.size:
            return iter(())
        ds = clip_dataset(self.cfg, self.val_rows.take(rows), train=False, decode_workers=self._decode_workers,
                          run_state=self.run_state)
        collate = ClipCollate(finish=clip_finish(self.cfg, train=False), device=self.device)
        it = ds.iter_torch_batches(batch_size=self.cfg.train.eval_batch_size, collate_fn=collate,
                                   prefetch_batches=self.cfg.data.prefetch_batches)
        return map(self.hook, it) if self.hook is not None else iter(it)
