"""The one consume loop, and its failure policy, that every sink runs.

Fetch a batch, hand it to the sink, commit its offsets once the sink says it is done. A sink that
cannot finish a batch (its store or API failing) says so instead of raising or retrying on its own:
the batch's partitions are rewound to where it began and it is fetched again after a pause that
doubles up to `RETRY_MOST` (`plumbing.backoff`). Nothing is committed past work that did not happen,
and a sink that recovers goes on where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from plumbing.backoff import Backoff

log = logging.getLogger(__name__)

Batch = Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]

#: Records fetched per batch.
MAX_BATCH = 500
#: Pause before a batch that was not done is fetched again, doubling to the most.
RETRY_FIRST, RETRY_MOST = 0.5, 30.0


async def consume_batches(consumer: AIOKafkaConsumer, name: str, handle: Callable[[Batch], Awaitable[bool]],
                          fetched: Callable[[AIOKafkaConsumer], None] | None = None) -> None:
    """Run the loop until cancelled; `handle` returns whether the batch is done (see the module).
    `fetched` is told after every fetch, with records or without."""
    backoff = Backoff(RETRY_FIRST, RETRY_MOST)
    while True:
        batch = await consumer.getmany(timeout_ms=1000, max_records=MAX_BATCH)
        if fetched is not None:
            fetched(consumer)
        if not batch:
            continue
        if not await handle(batch):
            for partition, messages in batch.items():
                consumer.seek(partition, messages[0].offset)
            pause = backoff.next()
            log.warning("%s: batch not done (%d in a row); fetching it again in %.1fs", name, backoff.failures, pause)
            await asyncio.sleep(pause)
            continue
        backoff.reset()
        try:
            await consumer.commit()
        except KafkaError as exc:
            # The batch is done; its records come again after a rebalance (sinks are idempotent).
            log.warning("%s: offset commit failed, records may be re-delivered: %s", name, exc)

