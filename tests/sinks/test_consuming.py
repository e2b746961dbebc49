"""The sinks' shared consume loop on the real broker: nothing is committed past work not done."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from guestinfo.broker import ensure_topics
from guestinfo.engines import Broker
from schemas.topics import PARTITIONS, VMI_TOPIC
from sinks.consuming import VMIChange, consume_batches, make_consumer
from tests.sinks.conftest import eventually, produce
from tests.sinks.records import full_record

pytestmark = pytest.mark.integration


async def test_a_refused_batch_is_fetched_again_and_not_committed_before(broker: Broker, unique: str) -> None:
    await ensure_topics(broker.bootstrap_servers)
    ns = f"ns-{unique}"
    keys = {f"{ns}/vm1", f"{ns}/vm2", f"{ns}/vm3"}
    await produce(broker.bootstrap_servers, [full_record(ns, "vm1"), full_record(ns, "vm2"), (ns, "vm3")])
    consumer = make_consumer(broker.bootstrap_servers, f"consume-{unique}")
    calls: list[tuple[set[str], list[int]]] = []  # (our keys in the batch, committed offsets when handed)

    async def committed() -> list[int]:
        return [await consumer.committed(TopicPartition(VMI_TOPIC, p)) or 0 for p in range(PARTITIONS)]

    async def handle(changes: list[VMIChange]) -> bool:
        mine = {c.key for c in changes if c.namespace == ns}
        if not mine:
            return True  # other tests' records share the topic
        calls.append((mine, await committed()))
        return len(calls) > 1  # the first batch with our records is refused (say, the API is down)

    async def all_applied() -> bool:
        return set().union(*(mine for mine, _ in calls[1:])) == keys

    await consumer.start()
    task = asyncio.create_task(consume_batches(consumer, "test", handle))
    try:
        await eventually(all_applied, what="the refused records handed again and applied")
        refused_at = calls[0][1]
        await eventually(lambda: _committed_past(committed, refused_at), what="a commit after the retry")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await consumer.stop()
    refused, refused_at = calls[0]
    retried, retried_at = calls[1]
    assert refused <= retried, "the retry starts where the refused batch began"
    assert retried_at == refused_at, "nothing was committed between the refusal and the retry"


async def _committed_past(committed, floor: list[int]) -> bool:  # type: ignore[no-untyped-def]
    now = await committed()
    return now != floor and all(a >= b for a, b in zip(now, floor, strict=True))
