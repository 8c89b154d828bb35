"""The run state of a data pipeline: the actor that carries the epoch to the decoders and the failures back.

`DataRunState` is one small Ray actor per training (or evaluation) run: rank 0 sets the epoch before iterating it,
the pipeline's source reads it when the epoch's execution starts (pipeline.data.pipeline), the decode stage
records every dropped row in it, and an elastic restart (issue 15) finds the attempts and steps of the run there.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from pipeline import raystart

log = logging.getLogger(__name__)

RUN_STATE_NAME = "eco-data-run-state"


@ray.remote(num_cpus=0, max_concurrency=8)
class DataRunState:
    """Epoch counter and failure log shared by the trainer (rank 0 sets the epoch) and the data pipeline.

    Why the epoch is read when an execution starts: every pass over a dataset (every epoch) is a new execution,
    and its source (`_ClipSource.get_read_tasks`) runs once, when the executor starts. With
    `streaming_split`/`get_dataset_shard`, SplitCoordinator.start_epoch() is a barrier: the executor of the next
    epoch is created only after ALL n consumers asked for it (ray/data/_internal/iterator/
    stream_split_iterator.py, `_barrier` -> `_try_start_new_epoch`). Rank 0 calls `ray.get(set_epoch.remote(e))`
    before it starts iterating epoch e, so the execution of epoch e reads e, shuffles with it and stamps it on
    every row; rows of epoch e-1 still being decoded for a slower rank keep the e-1 stamped on them.
    """

    def __init__(self):
        self._epoch = 0
        self._failures: list[dict[str, Any]] = []
        self._trained: tuple[int, Any] | None = None
        self._attempts: list[dict[str, Any]] = []
        self._furthest_step: int | None = None

    def set_epoch(self, epoch: int, trained: Any = None) -> None:
        """Start epoch `epoch`; `trained` (a pipeline.training.elastic.pack_rows bitmap, or None) marks the
        training rows a resumed epoch has already trained on: its execution leaves them out."""
        self._epoch = int(epoch)
        self._trained = (int(epoch), trained) if trained is not None else None

    def get_epoch(self) -> int:
        return self._epoch

    def get_trained(self, epoch: int) -> Any:
        return self._trained[1] if self._trained is not None and self._trained[0] == epoch else None

    # The worker groups of this launch (elastic restarts, issue 15): each records itself when it starts, and
    # rank 0 reports the furthest optimiser step reached, so the next group can count the steps it redoes.
    def begin_attempt(self, attempt: dict[str, Any]) -> tuple[list[dict[str, Any]], int | None]:
        previous, furthest = list(self._attempts), self._furthest_step
        self._attempts.append(dict(attempt))
        return previous, furthest

    def note_step(self, step: int) -> None:
        self._furthest_step = max(int(step), self._furthest_step or 0)

    def record_failures(self, failures: list[dict[str, Any]]) -> None:
        self._failures.extend(failures)

    def failures(self, epoch: int | None = None) -> list[dict[str, Any]]:
        return [f for f in self._failures if epoch is None or f["epoch"] == epoch]

    def failure_count(self, epoch: int | None = None) -> int:
        return len(self.failures(epoch))


def create_run_state(name: str | None = None) -> ray.actor.ActorHandle:
    """A new DataRunState, or (with `name`) the one of that name in this Ray namespace, created if missing."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    raystart.ensure_ray()
    # On the head node (soft): the state must outlive the loss of any worker node (elastic runs on spot nodes,
    # issue 15), and the head is the one node a cluster keeps. Ray marks it with the `node:__internal_head__`
    # resource; the driver's own node is not enough (a driver can be attached to any node's raylet).
    # Pinned the way Ray Train pins its own state actor (train/v2/_internal/state/state_actor.py).
    head = "node:__internal_head__"
    # An explicit scheduling strategy also keeps the actor out of a placement group its creator runs in (a sweep
    # trial's Tune placement group would otherwise capture it, and its bundles have no head-node resource).
    if any(head in n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")):
        placement: dict[str, Any] = {"resources": {head: 0.001}, "scheduling_strategy": "DEFAULT"}
    else:  # e.g. a cluster without a head marker: at least not on a node chosen at random
        placement = {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                           soft=True)}
    if name is None:
        return DataRunState.options(**placement).remote()
    return DataRunState.options(name=name, get_if_exists=True, **placement).remote()



def record_failures(run_state, failures: list[dict[str, Any]]) -> None:
    """Log dropped clips and record them in the run state (blocking, so that a consumer that finished the epoch
    finds every failure of it recorded)."""
    if not failures:
        return
    log.warning("dropped %d clips: %s", len(failures),
                ", ".join(f"{f['video_id']} in {f['path']} ({f['reason']})" for f in failures))
    if run_state is not None:
        ray.get(run_state.record_failures.remote(failures))
