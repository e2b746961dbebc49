"""How long the join worker's consumer lets the broker hold a fetch that finds no data.

faust-streaming builds its aiokafka consumer with a fixed `fetch_max_wait_ms=1500`. Tansu does not
answer a held fetch when data arrives but on its own schedule within that wait, so the wait adds to
every event's latency: measured here (one record at random times, the consumer idle), a 1,500 ms
wait gave a median delay of 0.28 s and up to 0.58 s; 100 ms gave 17 ms and up to 37 ms. With a
real Kafka the broker answers as soon as data arrives and a shorter wait only costs a few more empty
fetches a second while idle.

Faust offers no setting for it, so the app uses a transport whose consumer thread sets it: the only
change made to Faust's own classes.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

#: The longest a fetch is held by the broker when there is no data (the consumer's own default is 500).
FETCH_MAX_WAIT_MS = 100


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class ShortFetchApp(faust.App):
    """A Faust app whose consumer fetches with `FETCH_MAX_WAIT_MS` (broker URLs must be `kafka://`)."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
