"""Ray Data sources for tests/test_ray_contract.py, in an importable module (Ray workers unpickle them by name)."""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import ray
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask


@ray.remote(num_cpus=0)
class Value:
    """A value the driver sets and a source reads when its dataset runs."""

    def __init__(self, value: int = 0):
        self.value = value

    def set(self, value: int) -> None:
        self.value = value

    def get(self) -> int:
        return self.value


def _read(row: int, value: int):
    # A generator of blocks, as pipeline.data.pipeline._decode_blocks yields them.
    yield BlockAccessor.batch_to_block({"x": np.asarray([row], np.int64), "value": np.asarray([value], np.int64)})


class ValueSource(Datasource):
    """The shape of pipeline.data.pipeline._ClipSource (read tasks yielding generated blocks): `n` rows stamped, in
    get_read_tasks, with the value the `Value` actor holds then."""

    def __init__(self, n: int, value):
        self.n, self.value = n, value

    def estimate_inmemory_data_size(self) -> int:
        return 16 * self.n

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        value = ray.get(self.value.get.remote())
        meta = BlockMetadata(num_rows=None, size_bytes=16, input_files=None, exec_stats=None)
        return [ReadTask(functools.partial(_read, i, value), meta, per_task_row_limit=per_task_row_limit)
                for i in range(self.n)]


def _four_blocks(_):
    for r in range(4):
        yield pa.table({"x": np.full(1000, r, np.int64)})


class FourBlocksSource(ValueSource):
    """One read task yielding four 1000-row blocks."""

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        meta = BlockMetadata(num_rows=None, size_bytes=32000, input_files=None, exec_stats=None)
        return [ReadTask(functools.partial(_four_blocks, 0), meta, per_task_row_limit=per_task_row_limit)]
