"""One-change writes to a store, as the tests make them (the store sink writes batches)."""

from __future__ import annotations

from schemas.vmi import VMIRecord
from sinks.store import Store, Tombstone


async def upsert(store: Store, record: VMIRecord) -> bool:
    """Write `record` unless a higher revision is stored; True when the row was written."""
    return await store.write_batch([record]) > 0


async def delete(store: Store, namespace: str, name: str) -> bool:
    """Delete the VMI's row; True when there was one."""
    return await store.write_batch([Tombstone(namespace, name)]) > 0
