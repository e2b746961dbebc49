"""Removals that cannot be published are kept and sent again; a live report of the VMI voids them.

Kafka failures cannot be provoked on demand from a real broker, so these tests give the publisher a
producer that records what it is sent and fails while told to.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from prometheus_client import REGISTRY

from collectors.publisher import ReportPublisher
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


async def test_undelivered_removals_are_sent_with_the_next_reports() -> None:
    producer = FlakyProducer()
    publisher = ReportPublisher(producer)  # type: ignore[arg-type]
    producer.down = True
    await publisher.send([domain("a", 1.0, removed=True)], [])
    producer.late = True
    await publisher.send([domain("b", 2.0, removed=True)], [agent("c", 2.0)])
    assert {r.vmi.name for r in publisher.pending_removals} == {"a", "b"}
    assert producer.delivered == []

    producer.down = producer.late = False
    before = published(DOMAIN_TOPIC), published(AGENT_TOPIC)
    await publisher.send([domain("c", 3.0)], [agent("c", 3.0)])
    assert publisher.pending_removals == []
    assert [(topic, key, record["removed"]) for topic, key, record in producer.delivered if topic == DOMAIN_TOPIC] \
        == [(DOMAIN_TOPIC, b"ns/c", False), (DOMAIN_TOPIC, b"ns/a", True), (DOMAIN_TOPIC, b"ns/b", True)]
    assert (published(DOMAIN_TOPIC), published(AGENT_TOPIC)) == (before[0] + 3, before[1] + 1)


async def test_a_pending_removal_is_dropped_when_the_vmi_is_alive_again() -> None:
    producer = FlakyProducer()
    publisher = ReportPublisher(producer)  # type: ignore[arg-type]
    producer.down = True
    await publisher.send([domain("a", 1.0, removed=True)], [])
    producer.down = False
    await publisher.send([domain("a", 2.0)], [])
    assert publisher.pending_removals == []
    assert [(key, record["removed"]) for _, key, record in producer.delivered] == [(b"ns/a", False)]
