"""The run state of a data pipeline: the actor that collects what a run's decoders dropped and its worker groups.

`DataRunState` is one small Ray actor per training (or evaluation) run, created by the driver: the decode tasks
record every dropped row in it, and an elastic restart finds the earlier worker groups of the launch and the
furthest step they reached there. It carries nothing to the decoders: what a pass decodes is fixed when its
dataset is made (pipeline.data.pipeline).
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
    """Decode failures and worker groups of one run (training or evaluation)."""

    def __init__(self):
        self._failures: list[dict[str, Any]] = []
        self._decoded = {"train": 0, "eval": 0}
        self._attempts: list[dict[str, Any]] = []
        self._furthest_step: int | None = None

    # The worker groups of this launch (elastic restarts): each records itself when it starts, and rank 0 reports
    # the furthest optimiser step reached, so the next group can count the steps it redoes.
    def begin_attempt(self, attempt: dict[str, Any]) -> tuple[list[dict[str, Any]], int | None]:
        previous, furthest = list(self._attempts), self._furthest_step
        self._attempts.append(dict(attempt))
        return previous, furthest

    def note_step(self, step: int) -> None:
        self._furthest_step = max(int(step), self._furthest_step or 0)

    def record_failures(self, failures: list[dict[str, Any]]) -> None:
        self._failures.extend(failures)

    def record_decoded(self, kind: str, clips: int) -> None:
        """`clips` clips decoded for training (`kind` "train") or evaluation ("eval")."""
        self._decoded[kind] = self._decoded.get(kind, 0) + int(clips)

    def snapshot(self) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """(every failure so far, clips decoded so far by kind): what an epoch's report reads, in one call."""
        return list(self._failures), dict(self._decoded)

    def failures(self, epoch: int | None = None) -> list[dict[str, Any]]:
        return [f for f in self._failures if epoch is None or f["epoch"] == epoch]

    def failure_count(self, epoch: int | None = None) -> int:
        return len(self.failures(epoch))


def create_run_state(name: str | None = None) -> ray.actor.ActorHandle:
    """A new DataRunState, or (with `name`) the one of that name in this Ray namespace, created if missing.

    Kept on the head node: the state must outlive the loss of any worker node (elastic runs on spot nodes), and
    the head is the one node a cluster keeps. (The driver's own node is not enough: on a machine that runs several
    nodes, a driver can be attached to any of their raylets.) The explicit strategy also keeps the actor out of a
    placement group its creator runs in (a sweep trial's Tune placement group would otherwise capture it).
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    raystart.ensure_ray()
    if _head_node_id() is not None:  # a sliver of the head's marker resource: only the head can run it
        placement: dict[str, Any] = {"resources": {HEAD_NODE_RESOURCE: 0.001}, "scheduling_strategy": "DEFAULT"}
    else:
        placement = {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                           soft=True)}
    if name is None:
        return DataRunState.options(**placement).remote()
    return DataRunState.options(name=name, get_if_exists=True, **placement).remote()


# The resource Ray gives the head node (and no other). Ray's public API has no call that names the head node (the
# State API's `is_head_node` needs the dashboard and its authentication), so this one function reads it;
# tests/test_ray_contract.py checks that Ray still sets it.
HEAD_NODE_RESOURCE = "node:__internal_head__"


def _head_node_id() -> str | None:
    """The head node of the connected cluster (None: no node carries the marker)."""
    heads = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and HEAD_NODE_RESOURCE in n.get("Resources", {})]
    return heads[0] if heads else None


def record_failures(run_state, failures: list[dict[str, Any]]) -> None:
    """Log dropped clips and record them in the run state (blocking, so that a consumer that finished the epoch
    finds every failure of it recorded)."""
    if not failures:
        return
    log.warning("dropped %d clips: %s", len(failures),
                ", ".join(f"{f['video_id']} in {f['path']} ({f['reason']})" for f in failures))
    if run_state is not None:
        ray.get(run_state.record_failures.remote(failures))
