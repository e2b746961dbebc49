"""What both sinks share: the consumer of `guestinfo.vmi.v1`, decoding its records, and the consume
loop (`plumbing.consuming`) fed with the decoded changes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from plumbing.consuming import Batch
from plumbing.consuming import consume_batches as plumbing_consume
from plumbing.kafka import make_consumer as make_kafka_consumer
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
    """A consumer of the merged topic (`plumbing.kafka`): manual commits, from the earliest offset for
    a new group."""
    return make_kafka_consumer(bootstrap_servers, VMI_TOPIC, group_id=group_id, client_id=f"guestinfo-{group_id}")


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


async def consume_batches(
    consumer: AIOKafkaConsumer, sink: str, handle: Callable[[list[VMIChange]], Awaitable[bool]]
) -> None:
    """The loop of every sink (`plumbing.consuming`), until cancelled: each batch decoded and handed to
    `handle`, which says whether it is done; a batch not done is fetched again after a growing pause."""

    async def decoded(batch: Batch) -> bool:
        return await handle(decode_batch(batch, sink))

    await plumbing_consume(consumer, f"{sink} sink", decoded)


def decode_batch(batches: Batch, sink: str) -> list[VMIChange]:
    """All decodable changes of a `getmany` result, in partition order."""
    changes: list[VMIChange] = []
    for messages in batches.values():
        for msg in messages:
            change = decode_message(msg, sink)
            if change is not None:
                changes.append(change)
    return changes
