"""Publishing the reports of a tick to the raw topics, keyed by `namespace/name`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import BaseModel

from schemas.codec import encode
from schemas.events import AgentReport, DomainReport
from schemas.topics import AGENT_TOPIC, DOMAIN_TOPIC

log = logging.getLogger(__name__)

#: Largest record sent; agent replies are bounded to 1 MiB per command, reports stay well below this.
MAX_RECORD_BYTES = 8 * 1024 * 1024


def make_producer(bootstrap_servers: str) -> AIOKafkaProducer:
    """The collector's producer: acks from all replicas, small linger, gzip; not idempotent (Tansu)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        linger_ms=20,
        compression_type="gzip",
        enable_idempotence=False,
        max_request_size=MAX_RECORD_BYTES,
        client_id="guestinfo-collector",
    )


async def publish(
    producer: AIOKafkaProducer, domains: Iterable[DomainReport], agents: Iterable[AgentReport]
) -> int:
    """Send every report and wait for delivery; returns how many were delivered (failures are logged)."""
    records: list[tuple[str, str, BaseModel]] = [(DOMAIN_TOPIC, r.vmi.key, r) for r in domains]
    records += [(AGENT_TOPIC, r.vmi.key, r) for r in agents]
    pending: list[tuple[str, str, asyncio.Future[object]]] = []
    failed = 0
    for topic, key, report in records:
        try:
            future = await producer.send(topic, encode(report), key=key.encode())
        except KafkaError as exc:
            failed += 1
            log.warning("not published to %s for %s: %s", topic, key, exc)
            continue
        pending.append((topic, key, future))
    results = await asyncio.gather(*(future for _, _, future in pending), return_exceptions=True)
    for (topic, key, _), result in zip(pending, results, strict=True):
        if isinstance(result, BaseException):
            failed += 1
            log.warning("delivery to %s for %s failed: %s", topic, key, result)
    delivered = len(records) - failed
    log.debug("published %d of %d reports", delivered, len(records))
    return delivered
