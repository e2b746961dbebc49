"""aiokafka forgets the metadata of topics a producer did not look up itself (`plumbing.kafka`)."""

from __future__ import annotations

import asyncio
import time

import pytest

from guestinfo.broker import EmbeddedBroker
from guestinfo.lab.bench import create_topics
from plumbing.kafka import make_producer, track_topics

pytestmark = pytest.mark.integration


async def sends_in_time(broker: EmbeddedBroker, unique: str, *, tracked: bool) -> float:
    known, later = f"known-{unique}", f"later-{unique}"
    await create_topics(broker.bootstrap_servers, [known])
    producer = make_producer(broker.bootstrap_servers, client_id="t", max_request_size=2**20, linger_ms=50)
    await producer.start()  # learns `known` (every topic) without tracking it
    try:
        await create_topics(broker.bootstrap_servers, [later])
        if tracked:
            await track_topics(producer, [known, later])
        started = time.monotonic()
        queued = await producer.send(known, b"{}", key=b"k")  # waits for its linger...
        await (await producer.send(later, b"{}", key=b"k"))  # ...while `later` is looked up
        await asyncio.wait_for(queued, 20)
        return time.monotonic() - started
    finally:
        await producer.stop()


async def test_a_tracked_topic_keeps_its_leader_while_another_is_looked_up(broker: EmbeddedBroker,
                                                                           unique: str) -> None:
    assert await sends_in_time(broker, unique, tracked=True) < 2.0


async def test_without_tracking_the_queued_record_waits_for_its_timeout(broker: EmbeddedBroker, unique: str) -> None:
    """The behaviour `track_topics` is for: should aiokafka change it, this fails and the helper can go."""
    with pytest.raises(Exception, match="NotLeaderForPartition"):
        await sends_in_time(broker, unique, tracked=False)
