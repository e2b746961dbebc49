"""The store sink: `guestinfo.vmi.v1` → the store. Writes a fetched batch, then commits its offsets."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sinks.consuming import FetchWatch, VMIChange, consume_batches, make_consumer
from sinks.metrics import STORE_WRITES
from sinks.store import Change, Store, Tombstone

log = logging.getLogger(__name__)

def to_changes(changes: list[VMIChange]) -> list[Change]:
    """Decoded topic changes → store changes (a tombstone deletes)."""
    return [c.record if c.record is not None else Tombstone(c.namespace, c.name) for c in changes]


async def write_batch(store: Store, changes: list[VMIChange]) -> int:
    """Write one batch to the store and count it in the metrics."""
    if not changes:
        return 0
    written = await store.write_batch(to_changes(changes))
    deletes = sum(1 for c in changes if c.record is None)
    STORE_WRITES.labels("delete").inc(min(deletes, written))
    STORE_WRITES.labels("upsert").inc(max(written - deletes, 0))
    return written


async def run_store_sink(
    bootstrap_servers: str, group_id: str, store: Store, written: Callable[[], None] | None = None,
    watch: FetchWatch | None = None,
) -> None:
    """Consume the merged topic into `store` until cancelled; the consumer is stopped on exit.
    `written` is called after each batch is stored (the API's watches read the change log then);
    `watch` follows the fetches (the API's /healthz)."""
    consumer = make_consumer(bootstrap_servers, group_id)
    await consumer.start()
    log.info("store sink consuming as group %s from %s", group_id, bootstrap_servers)
    async def write(changes: list[VMIChange]) -> bool:
        """One batch into the store; a store failure leaves the batch to the consume loop's policy
        (`plumbing.consuming`: fetched again after a growing pause, offsets not committed)."""
        try:
            rows = await write_batch(store, changes)
        except Exception as exc:  # any store failure: keep the batch, never crash the loop
            log.error("store sink: writing %d changes failed: %s", len(changes), exc)
            return False
        log.debug("store sink: %d changes, %d rows changed", len(changes), rows)
        if written is not None:
            written()
        return True

    try:
        await consume_batches(consumer, "store", write, watch)
    finally:
        await consumer.stop()
        log.info("store sink stopped")
