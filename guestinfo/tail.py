"""`guestinfo tail`: a topic as JSON lines, for analytics users and for debugging.

One JSON document per line, on stdout: a record's value as it is (a merged record, an event, a raw
report, a dead letter), a tombstone as `{"key": KEY, "deleted": true}` (with `"uid"` when its
`guestinfo-uid` header names the VMI it removes), a value that is not JSON as
`{"key": KEY, "undecodable": TEXT}`. `--namespace` and `--name` select VMIs by the key, so records are
not decoded to be filtered. Without `--from-beginning` it starts at the topic's end and prints what
comes; `--max N` stops after N lines; otherwise Ctrl-C or SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from plumbing.kafka import make_consumer, topic_partitions
from schemas.events import split_vmi_key
from schemas.topics import UID_HEADER

log = logging.getLogger(__name__)

#: How long to wait for the topic's metadata before saying it does not exist.
METADATA_WAIT = 10.0


class TailError(RuntimeError):
    """The topic cannot be read (it does not exist, the broker does not answer)."""


@dataclass(frozen=True)
class Selection:
    """Which VMIs to print (None: any)."""

    namespace: str | None = None
    name: str | None = None

    def wants(self, key: bytes | None) -> bool:
        if self.namespace is None and self.name is None:
            return True
        vmi = split_vmi_key(key.decode(errors="replace")) if key is not None else None
        if vmi is None:
            return False
        return (self.namespace is None or vmi[0] == self.namespace) and (self.name is None or vmi[1] == self.name)


def line(record: ConsumerRecord[bytes, bytes]) -> bytes:
    """One record as one line of JSON (newline included)."""
    key = record.key.decode(errors="replace") if record.key is not None else None
    if record.value is None:
        tombstone: dict[str, object] = {"key": key, "deleted": True}
        uid = next((value for name, value in record.headers or () if name == UID_HEADER), None)
        if uid:
            tombstone["uid"] = uid.decode(errors="replace")
        return orjson.dumps(tombstone) + b"\n"
    try:
        # Decoded and encoded again: the value as it is, on one line, whatever its producer wrote.
        return orjson.dumps(orjson.loads(record.value)) + b"\n"
    except orjson.JSONDecodeError:
        return orjson.dumps({"key": key, "undecodable": record.value.decode(errors="replace")}) + b"\n"


async def tail(bootstrap_servers: str, topic: str, *, from_beginning: bool = False,
               selection: Selection = Selection(), limit: int | None = None, out: IO[bytes] | None = None,
               stop: asyncio.Event | None = None) -> int:
    """Print `topic` until `limit` lines are printed or `stop` is set; returns the lines printed."""
    output = out if out is not None else sys.stdout.buffer
    stop = stop if stop is not None else asyncio.Event()
    consumer = make_consumer(bootstrap_servers, group_id=None, client_id="guestinfo-tail")
    printed = 0
    try:
        await consumer.start()
        partitions = await _partitions(consumer, topic)
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        while not stop.is_set() and (limit is None or printed < limit):
            fetched = await consumer.getmany(timeout_ms=200, max_records=500)
            for record in _in_order(fetched.values()):
                if not selection.wants(record.key):
                    continue
                output.write(line(record))
                printed += 1
                if limit is not None and printed >= limit:
                    break
            output.flush()
    except KafkaError as exc:
        raise TailError(f"cannot read {topic} from {bootstrap_servers}: {exc}") from exc
    finally:
        await consumer.stop()
    return printed


def _in_order(batches: Iterable[list[ConsumerRecord[bytes, bytes]]]) -> Iterable[ConsumerRecord[bytes, bytes]]:
    """The records fetched from several partitions, merged by time; each partition's in offset order
    (a record stamped earlier than the one before it in its partition keeps its place)."""
    return heapq.merge(*batches, key=lambda record: record.timestamp)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    deadline = asyncio.get_running_loop().time() + METADATA_WAIT
    while True:
        found = await topic_partitions(consumer, topic)
        if found:
            return found
        if asyncio.get_running_loop().time() >= deadline:
            raise TailError(f"topic {topic} does not exist on the broker")
        await asyncio.sleep(0.2)


async def run_tail(bootstrap_servers: str, topic: str, from_beginning: bool, selection: Selection,
                   limit: int | None) -> int:
    """`guestinfo tail` until done or signalled: 0, or 1 when the topic cannot be read."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await tail(bootstrap_servers, topic, from_beginning=from_beginning, selection=selection, limit=limit,
                   stop=stop)
    except TailError as exc:
        print(f"guestinfo tail: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `| head`: the reader has gone
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0
