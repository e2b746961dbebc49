"""`publish`: every report sent, the undelivered ones returned (and counted), whatever way Kafka fails.

Kafka failures cannot be provoked on demand from a real broker, so these tests give it a producer that
records what it is sent and fails while told to (the real-broker outage is tests/collectors/test_broker_outage.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from prometheus_client import REGISTRY

from collectors.publisher import publish
from schemas.events import AgentReport, DomainReport, VMIRef
from schemas.topics import AGENT_TOPIC, DOMAIN_TOPIC


class FlakyProducer:
    """Delivers records, except while `down`: then `send` raises, or the delivery fails (`late`)."""

    def __init__(self) -> None:
        self.down = False
        self.late = False
        self.delivered: list[tuple[str, bytes, dict[str, Any]]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[object]:
        if self.down and not self.late:
            raise KafkaTimeoutError("no broker")
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self.down:
            future.set_exception(KafkaConnectionError("lost"))
        else:
            self.delivered.append((topic, key, orjson.loads(value)))
            future.set_result(None)
        return future


def domain(name: str, at: float, *, removed: bool = False) -> DomainReport:
    return DomainReport(vmi=VMIRef(namespace="ns", name=name), node="n", observed_at=at, removed=removed)


def agent(name: str, at: float) -> AgentReport:
    return AgentReport(vmi=VMIRef(namespace="ns", name=name), node="n", observed_at=at, connected=True)


def published(name: str) -> float:
    return REGISTRY.get_sample_value("guestinfo_collector_reports_published_total", {"topic": name}) or 0.0


async def test_undelivered_reports_are_returned_and_delivered_ones_counted() -> None:
    producer = FlakyProducer()
    producer.down = True
    refused = await publish(producer, [domain("a", 1.0, removed=True)], [])  # type: ignore[arg-type]
    producer.late = True
    lost = await publish(producer, [domain("b", 2.0, removed=True)], [agent("c", 2.0)])  # type: ignore[arg-type]
    assert [r.vmi.name for r in refused] == ["a"] and sorted(r.vmi.name for r in lost) == ["b", "c"]
    assert producer.delivered == []

    producer.down = producer.late = False
    before = published(DOMAIN_TOPIC), published(AGENT_TOPIC)
    failed = await publish(producer, [domain("c", 3.0), *refused], [agent("c", 3.0)])  # type: ignore[arg-type]
    assert failed == []
    assert [(topic, key, record["removed"]) for topic, key, record in producer.delivered if topic == DOMAIN_TOPIC] \
        == [(DOMAIN_TOPIC, b"ns/c", False), (DOMAIN_TOPIC, b"ns/a", True)]
    assert (published(DOMAIN_TOPIC), published(AGENT_TOPIC)) == (before[0] + 2, before[1] + 1)
