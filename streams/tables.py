"""The join's states in its Faust table's store: in memory, or on disk in RocksDB (one database per
partition, Faust's rocksdict store).

`JoinBatches` writes the states itself, not through `table[key] = value` (one Faust send per write), so
this adapter does what Faust would otherwise do on a write:
- **The partition.** RocksDB keeps a database per partition, and Faust's store finds it from the event
  being processed, which a batch written after its events has none of. The partition of a key is the
  one its raw events and its changelog records have: the producer's default partitioner (murmur2 of the
  key), as Faust's with `use_partitioner=True`.
- **The persisted offset.** Once a changelog record is stored, the partition's database remembers its
  offset, so that a restarted worker recovers the changelog from there instead of from the beginning.
  The memory store keeps nothing across restarts and ignores it.

A state reaches the store only once the changelog holds it, and the persisted offset only after the
state (`streams.batches`): a store on disk is never ahead of its changelog. One state dir per worker: two
workers sharing one would share RocksDB's files, which lock.

Faust's store API has no public call for either; the two private ones used (`_db_for_partition`,
`_key_index`) are held to their behaviour by `tests/streams/test_join_recovery.py`.
"""

from __future__ import annotations

from typing import Any, Literal

from aiokafka.partitioner import murmur2
from faust.types import TP

TableStore = Literal["memory", "rocksdb"]


def partition_of(key: bytes, partitions: int) -> int:
    """The partition aiokafka's default partitioner gives `key` (Kafka's murmur2, positive, modulo)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class TableStates:
    """The states of a Faust table's store, written per partition, with their persisted offsets."""

    def __init__(self, table: Any, partitions: int) -> None:
        self._store = table.data
        self._changelog = table.changelog_topic.get_topic_name()
        self._partitions = partitions
        self._on_disk = hasattr(self._store, "_db_for_partition")

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._store.get(key)
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        if not self._on_disk:
            self._store[key] = value
            return
        partition = partition_of(key, self._partitions)
        self._store._db_for_partition(partition).put(key, value)
        self._store._key_index[key] = partition

    def persisted(self, partition: int, offset: int) -> None:
        """The changelog holds the states of `partition` up to `offset`."""
        if self._on_disk:
            self._store.set_persisted_offset(TP(self._changelog, partition), offset)
