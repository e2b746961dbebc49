"""What the sinks share: the consumer of `guestinfo.vmi.v1`, decoding its records, the consume loop
(`plumbing.consuming`) fed with the decoded changes, and the watch on its fetches their health reports."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord

from plumbing.consuming import Batch
from plumbing.consuming import consume_batches as plumbing_consume
from plumbing.kafka import make_consumer as make_kafka_consumer
from schemas.codec import DecodeError, decode
from schemas.events import split_vmi_key
from schemas.topics import UID_HEADER, VMI_TOPIC
from schemas.vmi import VMIRecord
from sinks.metrics import LAST_FETCH, RECORDS_SKIPPED

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
    """A consumer of the merged topic in group `group_id` (`plumbing.kafka`): manual commits, from the
    earliest offset for a new group; it logs the partitions each rebalance gives it."""
    consumer = make_kafka_consumer(bootstrap_servers, group_id=group_id, client_id=f"guestinfo-{group_id}")
    consumer.subscribe([VMI_TOPIC], listener=LoggedAssignment(group_id))
    return consumer


class LoggedAssignment(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped here
    """Logs the merged-topic partitions a sink's consumer is given at each rebalance."""

    def __init__(self, group_id: str) -> None:
        self.group_id = group_id

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        partitions = sorted(tp.partition for tp in assigned if tp.topic == VMI_TOPIC)
        log.info("%s: partitions %s of %s", self.group_id, partitions, VMI_TOPIC)


#: A sink whose brokers have not answered its fetches for this long says it is unhealthy (/healthz 503).
#: Kafka clients retry a request for 10 s, and an idle fetch is answered every 0.1 s.
STALE_AFTER = 30.0


class FetchWatch:
    """When a sink's consumer last had an answer from the brokers for its partitions, with records or
    without (aiokafka's `last_poll_timestamp`): the `guestinfo_sink_last_fetch_timestamp_seconds` gauge,
    and the sink's health. A consumer with no partitions has nothing to fetch: it counts as answered.

    Once caught up, a sink never knew that Kafka had gone away: its fetches came back empty either way."""

    def __init__(self, sink: str, stale_after: float | None = None) -> None:
        self.sink = sink
        self.stale_after = STALE_AFTER if stale_after is None else stale_after
        #: Unix time of the last answer; None before the first.
        self.last: float | None = None
        self._gauge = LAST_FETCH.labels(sink)

    def observe(self, consumer: AIOKafkaConsumer) -> None:
        """After a fetch of `consumer` (`plumbing.consuming.consume_batches`' `fetched`)."""
        assigned = consumer.assignment()
        stamps = [stamp for tp in assigned if (stamp := consumer.last_poll_timestamp(tp)) is not None]
        if stamps:
            latest = max(stamps) / 1000
        elif not assigned:
            latest = time.time()
        else:
            return
        if self.last is None or latest > self.last:
            self.last = latest
            self._gauge.set(latest)

    def health(self) -> tuple[bool, str]:
        """Whether the brokers answered within `stale_after` seconds, and what to say about it."""
        if self.last is None:
            return False, f"{self.sink} sink: no answer from Kafka yet"
        age = time.time() - self.last
        if age > self.stale_after:
            return False, f"{self.sink} sink: no answer from Kafka for {age:.0f}s"
        return True, "ok"


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
    consumer: AIOKafkaConsumer, sink: str, handle: Callable[[list[VMIChange]], Awaitable[bool]],
    watch: FetchWatch | None = None,
) -> None:
    """The loop of every sink (`plumbing.consuming`), until cancelled: each batch decoded and handed to
    `handle`, which says whether it is done; a batch not done is fetched again after a growing pause.
    `watch` follows the fetches (a watch of the sink's own when None)."""

    async def decoded(batch: Batch) -> bool:
        return await handle(decode_batch(batch, sink))

    await plumbing_consume(consumer, f"{sink} sink", decoded, (watch or FetchWatch(sink)).observe)


def decode_batch(batches: Batch, sink: str) -> list[VMIChange]:
    """All decodable changes of a `getmany` result, in partition order."""
    changes: list[VMIChange] = []
    for messages in batches.values():
        for msg in messages:
            change = decode_message(msg, sink)
            if change is not None:
                changes.append(change)
    return changes
