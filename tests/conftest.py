"""Shared fixtures: one local Ray instance per test session (2-core machines: keep it small)."""

from __future__ import annotations

import os

import pytest

# Set before Ray or wandb are imported anywhere in the session.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# Ray Data's progress bars stay out of the test output without being disabled: with stdout not a terminal (pytest
# captures it, Ray workers write to files) Ray Data logs its progress at INFO, which pipeline.raystart keeps in
# Ray's log files; disabling the bars would add Ray Data's "Progress bars disabled" warning to every run.


@pytest.fixture(scope="module")
def ray_session():
    """A real local Ray instance, fresh for each test module.

    Per module rather than per session: an actor pool or a Ray Train controller that one module leaves behind
    (a killed worker, an abandoned iterator) holds logical CPUs, and the next module's pipeline would wait for
    them forever. A fresh instance costs a few seconds per module.

    4 logical CPUs on a 2-core machine: 2 training workers must leave room for the Ray Data decode stage, or the
    pipeline waits forever (Ray schedules by logical CPUs, not load).
    """
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            object_store_memory=300 * 2**20,
            include_dashboard=False,
            logging_level="warning",
            log_to_driver=True,
        )
    yield ray
    ray.shutdown()
