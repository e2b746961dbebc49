"""Sending the join's output: merged records, tombstones and dead letters.

They go out on a producer of the join's own, not through Faust's `topic.send`: every send of a batch
is handed to the producer at once (a few µs each, against ~0.3 ms per Faust send, docs/kafka-on-tansu.md §2),
with a short linger and no queueing behind the table's changelog records, and the batch waits for
all the acks; what fails for a passing reason is resent until it is delivered. Only then are the
batch's states written and its raw events acknowledged: at-least-once, an outage delays and never
loses (`streams.app`, docs/join-rules.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

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


#: Compression of the join's produce batches. "none" is the default: aiokafka compresses gzip at level 9
#: in the event loop, which cost the join a sixth of its CPU at bench load; lz4 and zstd (cramjam) are
#: cheap and shrink the JSON records about fourfold, for a Kafka where bytes cost more than CPU.
Compression = Literal["none", "gzip", "lz4", "zstd"]


def make_output_producer(bootstrap_servers: str, max_request_size: int,
                         compression: Compression = "none") -> AIOKafkaProducer:
    """Acks from all replicas, a short linger so that a batch's sends share produce requests."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        linger_ms=5,
        max_batch_size=512 * 1024,
        compression_type=None if compression == "none" else compression,
        # Tansu rejects the idempotent producer (docs/kafka-on-tansu.md §1); a duplicate after a retry is
        # harmless: records carry revisions and consumers drop what they have seen.
        enable_idempotence=False,
        request_timeout_ms=10_000,
        max_request_size=max_request_size,
        client_id="guestinfo-join-output",
    )


#: Pauses between rounds of resending what failed for a passing reason: doubling up to the last.
RETRY_PAUSES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def passing(error: KafkaError) -> bool:
    """A failure that sending again can cure: the broker away or slow, a leader moving."""
    return bool(error.retriable) or isinstance(error, KafkaTimeoutError | KafkaConnectionError)


async def deliver(producer: Producer, sends: Sequence[Send]) -> list[KafkaError | None]:
    """Send everything and wait for the acks.

    What fails for a passing reason (`passing`: the broker away, a timeout, a leader moving) is sent
    again, pausing longer each round (`RETRY_PAUSES`), for as long as it takes: the caller acknowledges
    the raw events only after this returns, so an outage delays output and never loses it. Returns,
    per send, None when delivered or the error no resend can cure (the broker refuses the record:
    too large, an invalid topic...). Anything that is not a Kafka error is a bug and is raised.
    """
    outcome: list[KafkaError | None] = [None] * len(sends)
    todo = list(range(len(sends)))
    rounds = 0
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
        todo = [index for index in todo if (error := outcome[index]) is not None and passing(error)]
        if not todo:
            return outcome
        pause = RETRY_PAUSES[min(rounds, len(RETRY_PAUSES) - 1)]
        rounds += 1
        log.warning("%d of %d sends failed (round %d), e.g. to %s: %s; sending them again in %.1fs",
                    len(todo), len(sends), rounds, sends[todo[0]].topic, outcome[todo[0]], pause)
        await asyncio.sleep(pause)
