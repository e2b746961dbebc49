"""The collector loop follows libvirt events of a real libvirtd at once, not the (long) interval."""

from __future__ import annotations

import asyncio
import time

import libvirt
import pytest
from aiokafka import AIOKafkaConsumer

from collectors import CollectorConfig, run_collector
from guestinfo.broker import ensure_topics
from guestinfo.engines import Broker
from schemas.codec import decode
from schemas.events import DomainReport
from schemas.topics import DOMAIN_TOPIC
from tests.conftest import Libvirtd

pytestmark = pytest.mark.integration


def kubevirt_domain(name: str) -> str:
    return f"""<domain type='test'><name>default_{name}</name>
<metadata><kubevirt:kubevirt xmlns:kubevirt="http://kubevirt.io"><kubevirt:uid>uid-{name}</kubevirt:uid>
</kubevirt:kubevirt></metadata>
<memory>65536</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>"""


async def test_domain_events_drive_the_reports(broker: Broker, libvirtd: Libvirtd, unique: str) -> None:
    node = f"node-{unique}"
    config = CollectorConfig(
        bootstrap_servers=broker.bootstrap_servers, libvirt_uris=[libvirtd.uri], node_name=node,
        interval=60.0, relist_interval=60.0,
    )
    await ensure_topics(broker.bootstrap_servers)  # a consumer does not see a topic created after it started
    consumer = AIOKafkaConsumer(
        DOMAIN_TOPIC, bootstrap_servers=broker.bootstrap_servers, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    seen: list[DomainReport] = []

    async def expect(name: str, state: str, removed: bool = False, within: float = 15.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < within:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                for record in records:
                    assert record.value is not None
                    report = decode(DomainReport, record.value)
                    if report.node == node:
                        seen.append(report)
            if any(r.vmi.name == name and r.state == state and r.removed == removed for r in seen):
                seen.clear()
                return time.monotonic() - started
        raise AssertionError(f"no {name} {state} removed={removed} within {within}s: {seen}")

    task = asyncio.create_task(run_collector(config))
    conn = await asyncio.to_thread(libvirt.open, libvirtd.uri)
    try:
        # The watcher is connected once a domain defined now shows up without a listing (60 s away).
        conn.defineXML(kubevirt_domain("sentinel"))
        await expect("sentinel", "shutoff", within=30.0)
        dom = conn.defineXML(kubevirt_domain("vm"))
        await expect("vm", "shutoff")
        dom.create()
        await expect("vm", "running")
        dom.suspend()
        await expect("vm", "paused")
        dom.resume()
        await expect("vm", "running")
        dom.destroy()
        await expect("vm", "shutoff")
        dom.undefine()
        await expect("vm", "shutoff", removed=True)

        conn.close()
        libvirtd.stop()  # the daemon restarts: the watcher reconnects, a resync re-lists it
        await asyncio.sleep(0.5)
        libvirtd.start()
        conn = await asyncio.to_thread(libvirt.open, libvirtd.uri)
        conn.defineXML(kubevirt_domain("after")).create()
        # Seen through the resync after the watcher reconnected (its back-off), or through an event.
        await expect("after", "running", within=45.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await consumer.stop()
        try:
            conn.close()
        except libvirt.libvirtError:
            pass
