"""The Faust join worker on the real broker: raw events in, merged records and tombstones out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import faust
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from guestinfo.broker import ensure_topics
from guestinfo.engines import Broker
from schemas.codec import decode, encode
from schemas.events import AgentReport, DomainInterface, DomainReport, VMIRef
from schemas.kubevirt import GuestOSInfo
from schemas.topics import AGENT_TOPIC, DEAD_LETTER_TOPIC, DOMAIN_TOPIC, UID_HEADER, VMI_TOPIC
from schemas.vmi import VMIRecord
from streams.app import JoinConfig, build_app
from tests.conftest import started_producer

pytestmark = pytest.mark.integration


@pytest.fixture
async def join_app(
    broker: Broker, unique: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[faust.App]:
    async for app in _join_app(broker, unique, tmp_path, getattr(request, "param", "none")):
        yield app


@pytest.fixture
async def lenient_join_app(lenient_broker: Broker, unique: str, tmp_path: Path) -> AsyncIterator[faust.App]:
    """A join worker on a broker that does not validate records (`lenient_broker`)."""
    async for app in _join_app(lenient_broker, unique, tmp_path, "none"):
        yield app


async def _join_app(broker: Broker, unique: str, tmp_path: Path, compression: str) -> AsyncIterator[faust.App]:
    await ensure_topics(broker.bootstrap_servers)
    app = await started(JoinConfig(bootstrap_servers=broker.bootstrap_servers, app_id=f"join-{unique}",
                                   datadir=tmp_path, compression=compression))  # type: ignore[arg-type]
    try:
        yield app
    finally:
        await app.stop()


async def started(config: JoinConfig, timeout: float = 30.0) -> faust.App:
    """A join worker in this process, once it has its partitions (and recovered its table)."""
    app = build_app(config)
    app.finalize()
    await app.start()
    deadline = time.monotonic() + timeout
    while not app.consumer.assignment() or app.rebalancing:
        assert time.monotonic() < deadline, f"join worker got no partitions (or did not recover) within {timeout:.0f}s"
        await asyncio.sleep(0.1)
    return app


async def produce(bootstrap: str, messages: list[tuple[str, str, bytes]]) -> None:
    async with started_producer(bootstrap, acks="all") as producer:
        for topic, key, value in messages:
            await producer.send_and_wait(topic, value, key=key.encode())


async def read_merged_records(
    bootstrap: str, key: str, count: int, topic: str = VMI_TOPIC
) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + 30
        while len(found) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                found += [r for r in records if r.key == key.encode()]
    finally:
        await consumer.stop()
    return found


async def read_merged(bootstrap: str, key: str, count: int, topic: str = VMI_TOPIC) -> list[bytes | None]:
    return [record.value for record in await read_merged_records(bootstrap, key, count, topic)]


@pytest.mark.parametrize("join_app", ["none", "zstd"], indirect=True)
async def test_join_emits_records_then_tombstone(broker: Broker, join_app: faust.App, unique: str) -> None:
    vmi = VMIRef(namespace=f"ns-{unique}", name="vm1", uid="u1")
    domain = DomainReport(
        vmi=vmi, node="node-a", observed_at=100.0, agent_connected=True,
        interfaces=[DomainInterface(name="default", mac="02:00:00:00:00:01")],
    )
    agent = AgentReport(vmi=vmi, node="node-a", observed_at=101.0, connected=True,
                        hostname="vm1", os=GuestOSInfo(name="Debian GNU/Linux"))
    gone = domain.model_copy(update={"observed_at": 102.0, "removed": True})
    # The two raw topics are read in no guaranteed order between them: send each step after the last one showed.
    bootstrap = broker.bootstrap_servers
    await produce(bootstrap, [(DOMAIN_TOPIC, vmi.key, encode(domain))])
    assert len(await read_merged(bootstrap, vmi.key, 1)) == 1
    await produce(bootstrap, [(AGENT_TOPIC, vmi.key, encode(agent))])
    assert len(await read_merged(bootstrap, vmi.key, 2)) == 2
    unchanged = domain.model_copy(update={"observed_at": 101.5})
    await produce(bootstrap, [(DOMAIN_TOPIC, vmi.key, encode(unchanged)), (DOMAIN_TOPIC, vmi.key, encode(gone))])
    records = await read_merged_records(bootstrap, vmi.key, 3)
    merged = [record.value for record in records]
    assert len(merged) == 3, "the unchanged domain report emitted nothing"
    first, second = (decode(VMIRecord, value) for value in merged[:2] if value is not None)
    assert (first.revision, second.revision) == (1, 2)
    assert first.guest_agent_info.hostname == ""
    assert second.guest_agent_info.hostname == "vm1"
    assert second.status.guest_os_info.name == "Debian GNU/Linux"
    assert [c.type for c in second.status.conditions] == ["AgentConnected"]
    assert merged[2] is None  # tombstone
    assert list(records[2].headers) == [(UID_HEADER, b"u1")], "the tombstone names the VMI it removes"


async def test_undecodable_raw_event_goes_to_dead_letters(
    lenient_broker: Broker, lenient_join_app: faust.App, unique: str
) -> None:
    broker = lenient_broker
    key = f"ns-{unique}/broken"
    vmi = VMIRef(namespace=f"ns-{unique}", name="healthy")
    healthy = DomainReport(vmi=vmi, node="node-a", observed_at=1.0)
    await produce(broker.bootstrap_servers, [
        (AGENT_TOPIC, key, b'{"vmi": "not an object"}'),
        (DOMAIN_TOPIC, vmi.key, encode(healthy)),
    ])
    dead = await read_merged(broker.bootstrap_servers, key, 1, topic=DEAD_LETTER_TOPIC)
    assert len(dead) == 1 and dead[0] is not None
    assert b"invalid AgentReport" in dead[0]
    merged = await read_merged(broker.bootstrap_servers, vmi.key, 1)
    assert len(merged) == 1, "the stream goes on after a bad event"
