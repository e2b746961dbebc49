"""The join worker's Kafka consumer: two changes to faust-streaming's, both for the Tansu broker.

1. **Fetch wait.** faust-streaming builds its aiokafka consumer with a fixed `fetch_max_wait_ms=1500`;
   on Tansu the wait adds to every event's latency (`plumbing.kafka`). The consumer gets the same
   100 ms as every other.
2. **Highwaters.** Table recovery reads a changelog partition up to its highwater, which Faust takes
   from ListOffsets(LATEST). Tansu answers that with the base offset of the newest batch + 1, short of
   the end whenever that batch holds more than one record (docs/kafka.md §1): the tail of the changelog
   would be skipped and states come back stale. The highwater is confirmed with a fetch, whose
   high watermark is right, and the higher of the two is used. On Kafka both agree. So the
   changelog can be sent in ordinary multi-record batches (one record per batch cost the join half of
   its throughput).

Faust has no settings for either; the app uses a transport whose consumer thread makes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import faust
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from faust.transport.drivers import aiokafka as faust_aiokafka

from plumbing.kafka import FETCH_MAX_WAIT_MS, make_consumer

log = logging.getLogger(__name__)

#: How long confirming the highwaters may take before the reported ones are used (and a warning logged).
CONFIRM_TIMEOUT = 15.0


async def confirmed_highwaters(servers: Sequence[str], reported: Mapping[Any, int]) -> dict[Any, int]:
    """`reported` highwaters (ListOffsets), each raised to the high watermark a fetch of that partition
    returns. A partition whose fetch gives no answer within `CONFIRM_TIMEOUT` keeps its reported value."""
    if not reported:
        return {}
    consumer = make_consumer(",".join(servers), group_id=None, client_id="guestinfo-join-highwaters")
    await consumer.start()
    try:
        partitions = {TopicPartition(tp.topic, tp.partition): tp for tp in reported}
        consumer.assign(list(partitions))
        for partition, tp in partitions.items():
            consumer.seek(partition, max(reported[tp] - 1, 0))
        deadline = asyncio.get_running_loop().time() + CONFIRM_TIMEOUT
        while any(consumer.highwater(p) is None for p in partitions):
            if asyncio.get_running_loop().time() > deadline:
                missing = sorted(f"{p.topic}[{p.partition}]" for p in partitions if consumer.highwater(p) is None)
                log.warning("no fetch answer for %s within %.0fs: recovering them to the reported highwater",
                            ", ".join(missing), CONFIRM_TIMEOUT)
                break
            try:
                await consumer.getmany(timeout_ms=200)
            except KafkaError as exc:  # the high watermark is all this fetch is for: try again
                log.debug("fetching for the highwaters: %s", exc)
                await asyncio.sleep(0.2)
        confirmed: dict[Any, int] = {}
        for partition, tp in partitions.items():
            fetched = consumer.highwater(partition)
            confirmed[tp] = max(reported[tp], fetched or 0)
            if confirmed[tp] != reported[tp]:
                log.info("highwater of %s[%d]: %d, not %d as ListOffsets says (the broker under-reports)",
                         tp.topic, tp.partition, confirmed[tp], reported[tp])
        return confirmed
    finally:
        await consumer.stop()


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    #: The bootstrap servers, as the consumer got them.
    _servers: list[str]

    def _create_worker_consumer(self, transport: Any) -> Any:
        self._servers = faust_aiokafka.server_list(transport.url, transport.default_port)
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
        return consumer

    async def _highwaters(self, partitions: list[Any]) -> Mapping[Any, int]:
        reported = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return reported
        return await confirmed_highwaters(self._servers, reported)


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class JoinApp(faust.App):
    """A Faust app with the consumer above (broker URLs must be `kafka://`)."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
