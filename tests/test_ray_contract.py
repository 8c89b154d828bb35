"""What the project relies on from Ray beyond its documented surface: one test per behaviour, on a local instance.

Ray is pinned to the minor version these pass on (pyproject.toml); an upgrade that changes one of them fails here,
in seconds, instead of on a cluster. Each test names the code that depends on the behaviour.
"""

from __future__ import annotations

import inspect
import threading
import time

import pytest
import ray


from tests.ray_sources import FourBlocksSource, Value, ValueSource


def test_datasource_read_tasks_are_made_when_each_execution_starts(ray_session):
    """pipeline.data.pipeline._ClipSource: get_read_tasks(parallelism, per_task_row_limit, data_context) runs again
    when each execution (each epoch) starts, so what it reads then (the epoch) is current; ReadTask takes a
    generator of blocks and unknown num_rows; read_datasource takes compute=TaskPoolStrategy and
    override_num_blocks."""
    value = Value.remote(1)
    ds = ray.data.read_datasource(ValueSource(6, value), override_num_blocks=6,
                                  compute=ray.data.TaskPoolStrategy(size=2))
    assert sorted((r["x"], r["value"]) for r in ds.take_all()) == [(i, 1) for i in range(6)]
    ray.get(value.set.remote(2))
    assert sorted((r["x"], r["value"]) for r in ds.take_all()) == [(i, 2) for i in range(6)]


def test_streaming_split_starts_an_epoch_only_when_every_consumer_asked(ray_session):
    """pipeline.data.run_state.DataRunState: with streaming_split, the execution of the next epoch (and so the
    source's get_read_tasks, which reads the epoch) starts only after ALL consumers asked for it (the split
    coordinator's barrier). So a rank that asks early still gets the epoch rank 0 sets before it asks."""
    value = Value.remote(1)
    ds = ray.data.read_datasource(ValueSource(4, value), override_num_blocks=4)
    rank0, rank1 = ds.streaming_split(2, equal=False)

    def consume(it, out):
        out.extend((r["x"], r["value"]) for r in it.iter_rows())

    for epoch in (1, 2):
        got0, got1 = [], []
        early = threading.Thread(target=consume, args=(rank1, got1))
        early.start()  # rank 1 asks for the epoch first ...
        time.sleep(2.0)
        ray.get(value.set.remote(epoch))  # ... rank 0 sets it, then asks
        late = threading.Thread(target=consume, args=(rank0, got0))
        late.start()
        early.join(120)
        late.join(120)
        assert not early.is_alive() and not late.is_alive()
        assert sorted(got0 + got1) == [(i, epoch) for i in range(4)]


def test_data_config_configure_signature():
    """pipeline.training.run._ExactEvalDataConfig overrides DataConfig.configure(datasets, world_size,
    worker_handles, worker_node_ids, **kwargs) and passes datasets_to_split= to the constructor."""
    from ray.train import DataConfig

    params = list(inspect.signature(DataConfig.configure).parameters)
    assert params[:5] == ["self", "datasets", "world_size", "worker_handles", "worker_node_ids"]
    assert "datasets_to_split" in inspect.signature(DataConfig.__init__).parameters


def test_internal_names_the_project_uses_exist():
    """The few Ray internals named in the code: Ray Train V2's context module (pipeline.raystart.quiet_train
    silences its per-report INFO logger by its file name) and the head-node resource (pipeline.data.run_state
    pins the run state actor to the head)."""
    import importlib.util

    spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    assert spec is not None and spec.origin
    from ray.data.collate_fn import NumpyBatchCollateFn  # pipeline.data.pipeline.ClipCollate subclasses it

    assert callable(NumpyBatchCollateFn)


def test_head_node_resource(ray_session):
    assert any("node:__internal_head__" in n.get("Resources", {}) for n in ray.nodes() if n.get("Alive"))


def test_target_max_block_size_splits_a_task_output(ray_session):
    """pipeline.data.pipeline._dataset sets DataContext.target_max_block_size so a read task's yielded batches
    leave as separate blocks (not coalesced into one)."""
    ds = ray.data.read_datasource(FourBlocksSource(1, Value.remote()), override_num_blocks=1)
    ds.context.target_max_block_size = 9000
    sizes = [b.num_rows for b in ds.iter_batches(batch_size=None, batch_format="pyarrow")]
    assert sum(sizes) == 4000 and len(sizes) >= 4, sizes


@pytest.mark.parametrize("version", [ray.__version__])
def test_pinned_minor(version):
    """pyproject.toml pins this minor; bump both together after running this file on the new one."""
    assert version.startswith("2.60."), version
