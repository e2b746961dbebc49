"""`streams.tables.partition_of`: the partition of a key is the one aiokafka's producer gives its raw
events and changelog records (the RocksDB store keeps a database per partition)."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams.tables import partition_of


@pytest.mark.parametrize("partitions", [1, 4, 7, 32])
def test_a_keys_partition_is_the_producers(partitions: int) -> None:
    producer = DefaultPartitioner()
    every = list(range(partitions))
    keys = [f"ns-{i % 13}/vm-{i:05d}".encode() for i in range(2_000)] + ["ns/ünïcode-ẞ".encode(), b"a/b"]
    assert [partition_of(key, partitions) for key in keys] == [producer(key, every, every) for key in keys]
