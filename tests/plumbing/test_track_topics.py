"""aiokafka forgets the metadata of topics a producer did not look up itself (`plumbing.kafka`)."""

from __future__ import annotations

import asyncio
import time

import pytest

from guestinfo.engines import Broker
from guestinfo.lab.bench import create_topics
from plumbing.kafka import start_producer, track_topics
from tests.conftest import engine_of

pytestmark = pytest.mark.integration


async def sends_in_time(broker: Broker, unique: str, *, tracked: bool) -> float:
    known, later = f"known-{unique}", f"later-{unique}"
    await create_topics(broker.bootstrap_servers, [known])
    # learns `known` (every topic) without tracking it
    producer = await start_producer(broker.bootstrap_servers, client_id="t", max_request_size=2**20, linger_ms=500)
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


async def test_a_tracked_topic_keeps_its_leader_while_another_is_looked_up(broker: Broker,
                                                                           unique: str) -> None:
    assert await sends_in_time(broker, unique, tracked=True) < 2.0


async def test_without_tracking_the_queued_record_waits_for_its_timeout_on_tansu(broker: Broker,
                                                                                 unique: str) -> None:
    """The behaviour `track_topics` is for: should aiokafka or Tansu change it, this fails and the helper
    can go. Apache Kafka answers the producer's first metadata request (no topics) with no topic, so a
    producer looks every topic up itself, and tracks it: there the record goes out at once."""
    if engine_of(broker) == "tansu":
        with pytest.raises(Exception, match="NotLeaderForPartition"):
            await sends_in_time(broker, unique, tracked=False)
    else:
        assert await sends_in_time(broker, unique, tracked=False) < 2.0
