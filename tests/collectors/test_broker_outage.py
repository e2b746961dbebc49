"""Kafka away and back, on the real broker: the collector's state waits, bounded, then all of it goes out."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from collectors.changes import StatePublisher
from collectors.reports import TickReports
from guestinfo.broker import ensure_topics, free_port
from schemas.codec import decode
from schemas.events import AgentReport, DomainReport, VMIRef
from schemas.topics import AGENT_TOPIC, DOMAIN_TOPIC
from tests.conftest import restartable

pytestmark = pytest.mark.integration


def reports(node: str, at: float, hostname: str, vmis: int) -> TickReports:
    refs = [VMIRef(namespace="outage", name=f"vm{i}") for i in range(vmis)]
    return TickReports(
        domains=[DomainReport(vmi=ref, node=node, observed_at=at) for ref in refs],
        agents=[AgentReport(vmi=ref, node=node, observed_at=at, connected=True, session="s", hostname=hostname)
                for ref in refs],
    )


async def read_all(
    bootstrap: str, node: str, want: int, timeout: float = 30.0, newer_than: float = -1.0
) -> tuple[list[DomainReport], list[AgentReport]]:
    """The reports of `node` observed after `newer_than`, read until `want` such domain reports came and
    then 1 s passed quietly."""
    consumer = AIOKafkaConsumer(DOMAIN_TOPIC, AGENT_TOPIC, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    domains: list[DomainReport] = []
    agents: list[AgentReport] = []
    try:
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            mine = sum(1 for d in domains if d.node == node and d.observed_at > newer_than)
            if mine >= want and time.monotonic() - quiet_since > 1.0:
                break
            batches = await consumer.getmany(timeout_ms=300)
            for records in batches.values():
                quiet_since = time.monotonic()
                for record in records:
                    assert record.value is not None
                    if record.topic == DOMAIN_TOPIC:
                        domains.append(decode(DomainReport, record.value))
                    else:
                        agents.append(decode(AgentReport, record.value))
    finally:
        await consumer.stop()
    return ([d for d in domains if d.node == node and d.observed_at > newer_than],
            [a for a in agents if a.node == node and a.observed_at > newer_than])


async def test_state_waits_bounded_while_kafka_is_away_then_everything_is_republished(
    engine_name: str, unique: str, tmp_path: Path
) -> None:
    port = free_port()
    node = f"node-{unique}"
    vmis = 5
    broker = restartable(engine_name, port, tmp_path / "kafka")
    await broker.start()
    await ensure_topics(broker.bootstrap_servers)
    publisher = StatePublisher(broker.bootstrap_servers, resync_interval=3600)
    task = asyncio.create_task(publisher.run())
    try:
        publisher.offer(reports(node, 1.0, "first", vmis))
        domains, agents = await read_all(broker.bootstrap_servers, node, want=vmis)
        assert {a.hostname for a in agents} == {"first"} and len(agents) == vmis

        # Kafka goes away for longer than a request may take (10 s): many rounds of changes, and the
        # buffer holds one state per VMI, never a queue.
        await broker.stop()
        # A publication is given up after PUBLISH_DEADLINE (15 s): Tansu refuses sooner, Kafka's producer waits.
        last = 1
        for last in range(2, 70):
            publisher.offer(reports(node, float(last), f"round-{last}", vmis))
            await asyncio.sleep(0.5)
            assert len(publisher.outbox) <= vmis
            if last >= 29 and publisher.failing:
                break
        assert publisher.failing, "the publisher noticed the outage"

        # Back: empty on Tansu (it keeps nothing), with its log on Kafka; the full state is republished.
        broker = restartable(engine_name, port, tmp_path / "kafka")
        await broker.start()
        await ensure_topics(broker.bootstrap_servers)
        # Newer than the first round: Kafka still has that round's reports, Tansu came back empty.
        domains, agents = await read_all(broker.bootstrap_servers, node, want=vmis, timeout=90.0, newer_than=1.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await broker.stop()
    assert {d.vmi.name for d in domains} == {f"vm{i}" for i in range(vmis)}, "every VMI's domain again"
    latest = {a.vmi.name: a for a in sorted(agents, key=lambda a: a.observed_at)}
    assert {a.hostname for a in latest.values()} == {f"round-{last}"}, "the latest state, not a queue of old ones"
    assert len(agents) <= 3 * vmis, f"{len(agents)} agent reports: a bounded buffer, not every round"
