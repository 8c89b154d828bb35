"""What the project relies on from Ray, one test per behaviour, on a local instance.

The library uses Ray's public API only; these pin the parts whose behaviour (not just their names) the project
depends on, and the one setting Ray offers only as an environment variable. They run on every supported Ray minor
(`make ray-compat`, README); a new minor that changes one fails here, in seconds, instead of on a cluster.
"""

from __future__ import annotations

import os

import pytest
import ray

from tests.ray_sources import FourBlocksSource, Value, ValueSource

SUPPORTED_MINORS = ("2.58.", "2.59.", "2.60.")


def test_datasource_read_tasks_yield_blocks_with_unknown_row_counts(ray_session):
    """pipeline.data.pipeline._ClipSource: ReadTask takes a generator of blocks and unknown num_rows;
    read_datasource takes compute=TaskPoolStrategy, override_num_blocks and ray_remote_args; a dataset made again
    reads again (each pass of training makes its own)."""
    value = Value.remote(1)
    ds = ray.data.read_datasource(ValueSource(6, value), override_num_blocks=6, ray_remote_args={"max_retries": 1},
                                  compute=ray.data.TaskPoolStrategy(size=2))
    assert sorted((r["x"], r["value"]) for r in ds.take_all()) == [(i, 1) for i in range(6)]
    ray.get(value.set.remote(2))
    again = ray.data.read_datasource(ValueSource(6, value), override_num_blocks=6,
                                     compute=ray.data.TaskPoolStrategy(size=2))
    assert sorted((r["x"], r["value"]) for r in again.take_all()) == [(i, 2) for i in range(6)]


def test_an_abandoned_iterator_can_be_closed(ray_session):
    """pipeline.training.engine.BatchStream.close: iter_torch_batches returns a generator; closing it part way
    (a rank leaves its surplus batches) ends the pass, and the next dataset runs normally."""
    ds = ray.data.read_datasource(FourBlocksSource(1, Value.remote()), override_num_blocks=1)
    it = iter(ds.iter_torch_batches(batch_size=100))
    first = next(it)
    assert int(first["x"].shape[0]) == 100
    it.close()
    with pytest.raises(StopIteration):
        next(it)
    assert ray.data.range(10).count() == 10


def test_worker_group_start_timeout_is_read_from_this_variable():
    """pipeline.training.run.controller_env sets Ray Train's worker-group start timeout, which Ray offers only as
    this environment variable (no ScalingConfig/RunConfig field)."""
    from ray.train.v2._internal import constants

    assert constants.WORKER_GROUP_START_TIMEOUT_S_ENV_VAR == "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
    assert "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S" in constants.ENV_VARS_TO_PROPAGATE


def test_train_report_logger_is_named_by_a_path_in_rays_package():
    """pipeline.raystart.quiet_worker keeps the loggers named by paths inside Ray's package at warnings: Ray
    Train's per-report INFO line comes from one."""
    import importlib

    module = importlib.import_module("ray.train.v2._internal.execution.context")
    assert module.logger.name == module.__file__
    assert module.logger.name.startswith(os.path.dirname(ray.__file__))


def test_a_checkpoint_uploaded_by_the_worker_is_reported_as_it_is():
    """pipeline.training.loop._Reporter uploads a checkpoint itself (within its retry budget) to the run directory
    of the worker's storage context and reports it with NO_UPLOAD; RunConfig takes the retrying filesystem."""
    import inspect

    from ray.train.v2.api.context import TrainContext

    assert ray.train.CheckpointUploadMode.NO_UPLOAD.value
    assert {"checkpoint_upload_mode", "delete_local_checkpoint_after_upload"} <= set(
        inspect.signature(ray.train.report).parameters)
    assert hasattr(TrainContext, "get_storage")
    assert "storage_filesystem" in inspect.signature(ray.train.RunConfig).parameters


def test_ray_data_logs_progress_instead_of_bars_without_a_terminal():
    """pipeline.raystart.quiet turns Ray Data's distributed tqdm off where stdout is not a terminal: Ray Data then
    logs its progress (at INFO, kept in its log file) instead of drawing bars or warning that they are off."""
    import inspect

    from ray.data._internal import progress

    source = inspect.getsource(progress.get_progress_manager)
    assert "isatty" in source and "use_ray_tqdm" in source and "LoggingExecutionProgressManager" in source


def test_collate_base_class_is_public():
    """pipeline.data.pipeline.ClipCollate subclasses NumpyBatchCollateFn, which iter_torch_batches accepts."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    assert NumpyBatchCollateFn.__module__ == "ray.data.collate_fn"


def test_init_returns_the_session_directory(ray_session):
    """pipeline.raystart.log_dir names Ray's log folder from what ray.init returned."""
    context = ray.init(ignore_reinit_error=True)
    session = context.address_info.get("session_dir")
    assert session and os.path.isdir(os.path.join(session, "logs"))


def test_target_max_block_size_splits_a_task_output(ray_session):
    """pipeline.data.pipeline._dataset sets DataContext.target_max_block_size so a read task's yielded batches
    leave as separate blocks (not coalesced into one)."""
    ds = ray.data.read_datasource(FourBlocksSource(1, Value.remote()), override_num_blocks=1)
    ds.context.target_max_block_size = 9000
    sizes = [b.num_rows for b in ds.iter_batches(batch_size=None, batch_format="pyarrow")]
    assert sum(sizes) == 4000 and len(sizes) >= 4, sizes


def test_supported_minor():
    """pyproject.toml's Ray range: run this file (and `make ray-compat`) on a new minor before widening it."""
    assert ray.__version__.startswith(SUPPORTED_MINORS), ray.__version__


def test_the_head_node_carries_the_marker_resource(ray_session):
    """pipeline.data.run_state keeps the run state on the head node, the one node with this resource."""
    from pipeline.data.run_state import HEAD_NODE_RESOURCE

    heads = [n for n in ray.nodes() if n.get("Alive") and HEAD_NODE_RESOURCE in n.get("Resources", {})]
    assert len(heads) == 1
