"""Sending the join's output: merged records, tombstones and dead letters.

They go out on a producer of the join's own, not Faust's: Faust's producer sends one record per
produce batch on Tansu (broker-notes §1: the table's changelog needs that, or its recovery reads a
wrong highwater), which costs a produce round trip per record and partition. The merged and
dead-letter topics are never recovered from, so they batch normally: one batch of raw events gives
one burst of sends, all awaited before the batch's events are acknowledged (at-least-once: an event
whose output was not delivered is read again after a restart).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Send:
    """One record to send; `value` None is a tombstone."""

    topic: str
    key: bytes
    value: bytes | None


def make_output_producer(bootstrap_servers: str, max_request_size: int) -> AIOKafkaProducer:
    """Acks from all replicas, a short linger so that a batch's sends share produce requests, gzip."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        linger_ms=5,
        max_batch_size=512 * 1024,
        compression_type="gzip",
        # Tansu rejects the idempotent producer (broker-notes §1); a duplicate after a retry is
        # harmless: records carry revisions and consumers drop what they have seen.
        enable_idempotence=False,
        request_timeout_ms=10_000,
        max_request_size=max_request_size,
        client_id="guestinfo-join-output",
    )


async def deliver(producer: AIOKafkaProducer, sends: Sequence[Send], attempts: int = 3) -> list[Exception | None]:
    """Send everything and wait for the acks; what fails is retried, up to `attempts` in all.

    Returns, per send, None when delivered or the last error.
    """
    outcome: list[Exception | None] = [None] * len(sends)
    todo = list(range(len(sends)))
    for attempt in range(1, attempts + 1):
        failed: list[int] = []
        futures: list[tuple[int, asyncio.Future[object]]] = []
        for index in todo:
            send = sends[index]
            try:
                futures.append((index, await producer.send(send.topic, send.value, key=send.key)))
            except KafkaError as exc:
                outcome[index] = exc
                failed.append(index)
        results = await asyncio.gather(*(future for _, future in futures), return_exceptions=True)
        for (index, _), result in zip(futures, results, strict=True):
            if isinstance(result, Exception):
                outcome[index] = result
                failed.append(index)
            elif isinstance(result, BaseException):
                raise result
            else:
                outcome[index] = None
        if not failed:
            break
        log.warning(
            "%d of %d sends failed (attempt #%d/%d), e.g. to %s: %s",
            len(failed), len(todo), attempt, attempts, sends[failed[0]].topic, outcome[failed[0]],
        )
        todo = sorted(failed)
        if attempt < attempts:
            await asyncio.sleep(0.1 * attempt)
    return outcome
