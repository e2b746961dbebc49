"""What both sinks share: the consumer of `guestinfo.vmi.v1` and decoding its records."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from schemas.codec import DecodeError, decode
from schemas.events import split_vmi_key
from schemas.topics import UID_HEADER, VMI_TOPIC
from schemas.vmi import VMIRecord
from sinks.metrics import RECORDS_SKIPPED

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VMIChange:
    """One decoded topic record: `record` None is a tombstone (the VMI went away); a tombstone's `uid`
    is the removed VMI's, when the join knew it."""

    namespace: str
    name: str
    record: VMIRecord | None
    uid: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def make_consumer(bootstrap_servers: str, group_id: str) -> AIOKafkaConsumer:
    """A consumer of the merged topic: manual commits, from the earliest offset for a new group.

    A short session makes group joins quick on Tansu (join waits session/2, docs/kafka-on-tansu.md §1).
    """
    return AIOKafkaConsumer(
        VMI_TOPIC,
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        # Tansu answers a held fetch on its own schedule within this wait, not when data arrives: the
        # wait adds to every record's latency (500 ms default: median 59 ms, up to 0.22 s; 100 ms:
        # 17 ms, up to 37 ms). See streams/consumer.py.
        fetch_max_wait_ms=100,
    )


def _where(msg: ConsumerRecord[bytes, bytes]) -> str:
    return f"topic={msg.topic} partition={msg.partition} offset={msg.offset}"


def _split_key(key: bytes | None) -> tuple[str, str] | None:
    if not key:
        return None
    try:
        return split_vmi_key(key.decode())
    except UnicodeDecodeError:
        return None


def decode_message(msg: ConsumerRecord[bytes, bytes], sink: str) -> VMIChange | None:
    """Decode one record of the merged topic; a bad one is logged (where it is) and gives None."""
    if msg.value is None:
        ref = _split_key(msg.key)
        if ref is None:
            log.warning("%s sink: skipping tombstone with bad key %r at %s", sink, msg.key, _where(msg))
            RECORDS_SKIPPED.labels(sink, "bad_key").inc()
            return None
        return VMIChange(ref[0], ref[1], None, tombstone_uid(msg))
    try:
        record = decode(VMIRecord, msg.value)
    except DecodeError as exc:
        reason = str(exc).splitlines()[0][:300]
        log.warning("%s sink: skipping undecodable record at %s: %s", sink, _where(msg), reason)
        RECORDS_SKIPPED.labels(sink, "undecodable").inc()
        return None
    return VMIChange(record.vmi.namespace, record.vmi.name, record)


def tombstone_uid(msg: ConsumerRecord[bytes, bytes]) -> str:
    """The uid a tombstone names in `UID_HEADER`; "" when it names none (or not readably)."""
    for name, value in msg.headers or ():
        if name == UID_HEADER and value:
            return value.decode("utf-8", errors="replace")[:128]
    return ""


#: Records fetched per batch.
MAX_BATCH = 500
#: Pause before a batch that was not fully handled is fetched again, growing to the maximum.
RETRY_PAUSE = 0.5
RETRY_PAUSE_MAX = 30.0


async def consume_batches(
    consumer: AIOKafkaConsumer, sink: str, handle: Callable[[list[VMIChange]], Awaitable[bool]]
) -> None:
    """The loop of every sink, until cancelled: fetch a batch, decode it, hand it to `handle`.

    Offsets are committed only after `handle` says the batch is done. When it says not, the batch's
    partitions are rewound to where the batch began and it is fetched again after a growing pause:
    nothing is committed past work that did not happen.
    """
    pause = RETRY_PAUSE
    while True:
        batches = await consumer.getmany(timeout_ms=1000, max_records=MAX_BATCH)
        if not batches:
            continue
        if not await handle(decode_batch(batches, sink)):
            for partition, messages in batches.items():
                consumer.seek(partition, messages[0].offset)
            log.warning("%s sink: batch not fully applied; fetching it again in %.1fs", sink, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_PAUSE_MAX)
            continue
        pause = RETRY_PAUSE
        try:
            await consumer.commit()
        except KafkaError as exc:
            # The batch is applied; its records come again after a rebalance (sinks are idempotent).
            log.warning("%s sink: offset commit failed, records may be re-delivered: %s", sink, exc)


def decode_batch(
    batches: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]], sink: str
) -> list[VMIChange]:
    """All decodable changes of a `getmany` result, in partition order."""
    changes: list[VMIChange] = []
    for messages in batches.values():
        for msg in messages:
            change = decode_message(msg, sink)
            if change is not None:
                changes.append(change)
    return changes
