"""Publishing reports to the raw topics, keyed by `namespace/name`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from collectors.metrics import REPORTS_PUBLISHED, REPORTS_UNPUBLISHED
from plumbing.kafka import start_producer as start_kafka_producer
from schemas.codec import encode
from schemas.events import AgentReport, DomainReport
from schemas.topics import AGENT_TOPIC, DOMAIN_TOPIC

log = logging.getLogger(__name__)

#: Largest record sent; an agent report is held to `collectors.budget.AGENT_REPORT_BUDGET`.
MAX_RECORD_BYTES = 8 * 1024 * 1024

Report = DomainReport | AgentReport


async def start_producer(bootstrap_servers: str) -> AIOKafkaProducer:
    """The collector's producer, started (`plumbing.kafka`): a 20 ms linger, so that the reports of one
    round go out together; gzip. A broker gone is noticed within 10 s: the state waits in the outbox."""
    return await start_kafka_producer(bootstrap_servers, client_id="guestinfo-collector",
                                      max_request_size=MAX_RECORD_BYTES, linger_ms=20, compression="gzip")


async def publish(
    producer: AIOKafkaProducer, domains: Iterable[DomainReport], agents: Iterable[AgentReport]
) -> list[Report]:
    """Send every report and wait for delivery; returns the reports not delivered (each is logged)."""
    records: list[tuple[str, Report]] = [(DOMAIN_TOPIC, r) for r in domains]
    records += [(AGENT_TOPIC, r) for r in agents]
    pending: list[tuple[str, Report, asyncio.Future[object]]] = []
    failed: list[Report] = []
    for topic, report in records:
        try:
            future = await producer.send(topic, encode(report), key=report.vmi.key.encode())
        except KafkaError as exc:
            failed.append(report)
            REPORTS_UNPUBLISHED.labels(topic).inc()
            log.warning("not published to %s for %s: %s", topic, report.vmi.key, exc)
            continue
        pending.append((topic, report, future))
    results = await asyncio.gather(*(future for _, _, future in pending), return_exceptions=True)
    for (topic, report, _), result in zip(pending, results, strict=True):
        if isinstance(result, BaseException):
            failed.append(report)
            REPORTS_UNPUBLISHED.labels(topic).inc()
            log.warning("delivery to %s for %s failed: %s", topic, report.vmi.key, result)
        else:
            REPORTS_PUBLISHED.labels(topic).inc()
    log.debug("published %d of %d reports", len(records) - len(failed), len(records))
    return failed
