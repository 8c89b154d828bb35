"""Shared fixtures: one local Ray instance per test session (2-core machines: keep it small)."""

from __future__ import annotations

import os

import pytest

# Set before Ray or wandb are imported anywhere in the session.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# No Ray Data progress at all in the tests: the fixtures start Ray without pipeline.raystart.quiet, so Ray Data's
# progress log lines (what it prints instead of bars where stdout is not a terminal) would reach the test output.
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


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


def pytest_collection_modifyitems(config, items):
    """Files with cluster tests first, then files with other slow tests, then the rest (collection order kept within
    each group). `make test` runs two files at a time, so the suite ends when the last file started ends: a
    multi-minute file started last would run alone."""
    rank: dict[str, int] = {}
    for item in items:
        key = 0 if item.get_closest_marker("cluster") else 1 if item.get_closest_marker("slow") else 2
        rank[item.nodeid.split("::")[0]] = min(key, rank.get(item.nodeid.split("::")[0], 2))
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])  # by file, so a module's fixtures are set up once
