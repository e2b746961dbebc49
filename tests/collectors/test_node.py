"""A collector tick against libvirt's test driver and the real qemu-ga, published to the real broker."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from collectors import CollectorConfig, NodeCollector, run_collector
from guestinfo.broker import EmbeddedBroker
from schemas.codec import decode
from schemas.events import AgentReport, DomainReport
from schemas.topics import AGENT_TOPIC, DOMAIN_TOPIC

UID = "5e1d3f8a-0c6b-4a77-9d1e-7f00c0ffee01"


def real_mac() -> str:
    for path in sorted(Path("/sys/class/net").glob("*/address")):
        if path.parent.name != "lo":
            mac = path.read_text().strip()
            if mac and mac != "00:00:00:00:00:00":
                return mac
    raise AssertionError("no network interface with a MAC address")


def write_node(path: Path, mac: str) -> str:
    path.write_text(f"""<node>
  <domain type='test'>
    <name>default_demo</name>
    <memory>1048576</memory>
    <os><type>hvm</type></os>
    <metadata>
      <kubevirt:kubevirt xmlns:kubevirt="http://kubevirt.io"><kubevirt:uid>{UID}</kubevirt:uid></kubevirt:kubevirt>
    </metadata>
    <devices>
      <interface type='ethernet'><mac address='{mac}'/><link state='down'/><alias name='ua-default'/></interface>
      <channel type='unix'>
        <source mode='bind' path='/var/run/qga.sock'/>
        <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
      </channel>
    </devices>
  </domain>
  <domain type='test'>
    <name>not-kubevirt</name>
    <memory>1048576</memory>
    <os><type>hvm</type></os>
  </domain>
</node>
""")
    return f"test://{path}"


async def read_reports(
    bootstrap: str, node: str, want_domains: int, want_agents: int, deadline: float = 20.0
) -> tuple[list[DomainReport], list[AgentReport]]:
    consumer = AIOKafkaConsumer(
        DOMAIN_TOPIC, AGENT_TOPIC, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    domains: list[DomainReport] = []
    agents: list[AgentReport] = []
    try:
        end = time.monotonic() + deadline
        while time.monotonic() < end and (len(domains) < want_domains or len(agents) < want_agents):
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    assert record.value is not None
                    if tp.topic == DOMAIN_TOPIC:
                        domain = decode(DomainReport, record.value)
                        if domain.node == node:
                            assert record.key == domain.vmi.key.encode()
                            domains.append(domain)
                    else:
                        agent = decode(AgentReport, record.value)
                        if agent.node == node:
                            assert record.key == agent.vmi.key.encode()
                            agents.append(agent)
    finally:
        await consumer.stop()
    return domains, agents


@pytest.mark.integration
async def test_collector_publishes_domain_and_agent_reports(
    broker: EmbeddedBroker, qemu_ga: Path, tmp_path: Path, unique: str
) -> None:
    mac = real_mac()
    node = f"node-{unique}"
    config = CollectorConfig(
        bootstrap_servers=broker.bootstrap_servers,
        libvirt_uris=[write_node(tmp_path / "node.xml", mac)],
        agent_sockets={"default/demo": str(qemu_ga)},
        node_name=node,
        interval=0.5,
    )
    task = asyncio.create_task(run_collector(config))
    try:
        domains, agents = await read_reports(broker.bootstrap_servers, node, want_domains=2, want_agents=2)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert len(domains) >= 2 and len(agents) >= 2, "the loop ran at least two ticks"
    assert {d.vmi.key for d in domains} == {"default/demo"}, "the non-KubeVirt domain is ignored"
    domain = domains[0]
    assert domain.vmi.uid == UID and not domain.removed and domain.state == "running"
    assert [(i.name, i.mac, i.link_state) for i in domain.interfaces] == [("default", mac, "down")]
    assert domain.agent_connected, "the override socket answered guest-sync"

    agent = agents[0]
    assert agent.vmi.key == "default/demo" and agent.connected and agent.errors == {}
    assert agent.hostname == socket.gethostname()
    assert agent.os is not None and agent.os.name
    assert agent.interfaces is not None
    guest_macs = {i.mac for i in agent.interfaces}
    assert mac in guest_macs, "the guest's NIC matches the domain interface by MAC"
    assert agent.fs_freeze_status == "thawed"


@pytest.mark.integration
async def test_domain_that_disappears_is_reported_removed(qemu_ga: Path, tmp_path: Path, unique: str) -> None:
    uri = write_node(tmp_path / "node.xml", "02:00:00:00:00:01")
    config = CollectorConfig(
        bootstrap_servers="127.0.0.1:1", libvirt_uris=[uri], agent_sockets={"default/demo": str(qemu_ga)},
        node_name=f"node-{unique}",
    )
    collector = NodeCollector(config)
    try:
        first = await collector.collect_once()
        assert [(d.vmi.key, d.removed) for d in first.domains] == [("default/demo", False)]
        assert [a.connected for a in first.agents] == [True]

        conn = await collector.connection(uri)
        domain = conn.lookupByName("default_demo")
        domain.destroy()
        paused = await collector.collect_once()
        assert [(d.state, d.removed, d.agent_connected) for d in paused.domains] == [("shutoff", False, False)]
        assert [a.connected for a in paused.agents] == [False]

        domain.undefine()
        gone = await collector.collect_once()
        assert [(d.vmi.key, d.vmi.uid, d.removed) for d in gone.domains] == [("default/demo", UID, True)]
        assert gone.agents == []

        again = await collector.collect_once()
        assert again.domains == [] and again.agents == []
    finally:
        await collector.close()
        collector.shutdown()


async def test_unreachable_libvirt_reports_nothing_and_does_not_raise(tmp_path: Path) -> None:
    config = CollectorConfig(
        bootstrap_servers="127.0.0.1:1", libvirt_uris=[f"test://{tmp_path}/missing.xml"], node_name="n"
    )
    collector = NodeCollector(config)
    try:
        tick = await collector.collect_once()
        assert tick.domains == [] and tick.agents == []
    finally:
        await collector.close()
        collector.shutdown()


async def test_libvirt_channel_without_socket_override_uses_libvirt(tmp_path: Path) -> None:
    """The test driver drops the channel state, so without an override the agent is not connected."""
    uri = write_node(tmp_path / "node.xml", "02:00:00:00:00:02")
    collector = NodeCollector(CollectorConfig(bootstrap_servers="127.0.0.1:1", libvirt_uris=[uri], node_name="n"))
    try:
        tick = await collector.collect_once()
        assert [d.agent_connected for d in tick.domains] == [False]
        assert [(a.connected, a.info) for a in tick.agents] == [(False, None)]
    finally:
        await collector.close()
        collector.shutdown()
