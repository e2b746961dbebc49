"""Sending the join's output: merged records, tombstones and dead letters.

They go out on a producer of the join's own, not through Faust's `topic.send`: every send of a batch
is handed to the producer at once (a few µs each, against ~0.3 ms per Faust send, docs/kafka.md §2),
with a short linger and no queueing behind the table's changelog records, and the batch waits for
all the acks; what fails for a passing reason is resent until it is delivered. Only then are the
batch's states written and its raw events acknowledged: at-least-once, an outage delays and never
loses (`streams.app`, docs/join-rules.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from aiokafka.structs import RecordMetadata

from plumbing.backoff import Backoff
from plumbing.kafka import Compression, start_producer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Send:
    """One record to send; `value` None is a tombstone."""

    topic: str
    key: bytes
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class Producer(Protocol):
    """What `deliver` uses of a producer (aiokafka's `AIOKafkaProducer.send`)."""

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, partition: int | None = None,
        timestamp_ms: int | None = None, headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[object]: ...


async def start_output_producer(bootstrap_servers: str, max_request_size: int,
                                compression: Compression = "none") -> AIOKafkaProducer:
    """The join's own producer, started (`plumbing.kafka`): a short linger and large batches, so that a
    batch's sends share produce requests."""
    return await start_producer(bootstrap_servers, client_id="guestinfo-join-output", max_request_size=max_request_size,
                         linger_ms=5, max_batch_size=512 * 1024, compression=compression)


#: Pauses between rounds of resending what failed for a passing reason: doubling from the first to the most.
RETRY_FIRST, RETRY_MOST = 0.1, 10.0


def passing(error: KafkaError) -> bool:
    """A failure that sending again can cure: the broker away or slow, a leader moving."""
    return bool(error.retriable) or isinstance(error, KafkaTimeoutError | KafkaConnectionError)


async def deliver(
    producer: Producer, sends: Sequence[Send], on_ack: Callable[[Send, RecordMetadata], None] | None = None
) -> list[KafkaError | None]:
    """Send everything and wait for the acks.

    What fails for a passing reason (`passing`: the broker away, a timeout, a leader moving) is sent
    again, pausing longer each round (`RETRY_FIRST` doubling up to `RETRY_MOST`), for as long as it
    takes: the caller acknowledges the raw events only after this returns, so an outage delays output
    and never loses it. Returns, per send, None when delivered or the error no resend can cure (the
    broker refuses the record: too large, an invalid topic...). Anything but a Kafka error is a bug: raised.
    """
    outcome: list[KafkaError | None] = [None] * len(sends)
    todo = list(range(len(sends)))
    backoff = Backoff(RETRY_FIRST, RETRY_MOST)
    while True:
        futures: list[tuple[int, asyncio.Future[object]]] = []
        for index in todo:
            send = sends[index]
            try:
                futures.append(
                    (index, await producer.send(send.topic, send.value, key=send.key, headers=list(send.headers)))
                )
            except KafkaError as exc:
                outcome[index] = exc
        results = await asyncio.gather(*(future for _, future in futures), return_exceptions=True)
        for (index, _), result in zip(futures, results, strict=True):
            if isinstance(result, KafkaError):
                outcome[index] = result
            elif isinstance(result, BaseException):
                raise result
            else:
                outcome[index] = None
                if on_ack is not None:
                    on_ack(sends[index], cast(RecordMetadata, result))
        todo = [index for index in todo if (error := outcome[index]) is not None and passing(error)]
        if not todo:
            return outcome
        pause = backoff.next()
        log.warning("%d of %d sends failed (round %d), e.g. to %s: %s; sending them again in %.1fs",
                    len(todo), len(sends), backoff.failures, sends[todo[0]].topic, outcome[todo[0]], pause)
        await asyncio.sleep(pause)
