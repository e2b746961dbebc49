"""A collector tick against libvirt's test driver and the real qemu-ga, published to the real broker."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import REGISTRY

from collectors import CollectorConfig, NodeCollector, TickReports, run_collector
from guestinfo.engines import Broker
from schemas.codec import decode
from schemas.events import AgentReport, DomainReport
from schemas.topics import AGENT_TOPIC, DOMAIN_TOPIC
from tests.collectors.fake_agent import Answer, fake_agent, returning, sync_reply
from tests.collectors.ticks import collect_once
from tests.conftest import QemuGA

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
    broker: Broker, qemu_ga: Path, tmp_path: Path, unique: str
) -> None:
    mac = real_mac()
    node = f"node-{unique}"
    config = CollectorConfig(
        bootstrap_servers=broker.bootstrap_servers,
        libvirt_uris=[write_node(tmp_path / "node.xml", mac)],
        agent_sockets={"default/demo": str(qemu_ga)},
        node_name=node,
        interval=0.5,
        # Only guest-get-users is asked again within the test: the real qemu-ga reports this host's
        # filesystems, whose used bytes do change between two polls (that change would be published).
        poll_warmup=5.0,
        poll_intervals={"guest-get-users": 0.5},
    )
    published = metric("guestinfo_collector_reports_published_total", {"topic": AGENT_TOPIC})
    task = asyncio.create_task(run_collector(config))
    try:
        domains, agents = await read_reports(broker.bootstrap_servers, node, want_domains=1, want_agents=1)
        await asyncio.sleep(1.5)  # more polls: nothing changed, so nothing more is published
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert len(domains) == 1 and len(agents) == 1, "unchanged state is published once"
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
    assert SESSION.fullmatch(agent.session) and {a.session for a in agents} == {agent.session}
    assert metric("guestinfo_collector_reports_published_total", {"topic": AGENT_TOPIC}) == published + 1


@pytest.mark.integration
async def test_domain_that_disappears_is_reported_removed(qemu_ga: Path, tmp_path: Path, unique: str) -> None:
    uri = write_node(tmp_path / "node.xml", "02:00:00:00:00:01")
    config = CollectorConfig(
        bootstrap_servers="127.0.0.1:1", libvirt_uris=[uri], agent_sockets={"default/demo": str(qemu_ga)},
        node_name=f"node-{unique}",
    )
    collector = NodeCollector(config)
    try:
        first = await collect_once(collector)
        assert [(d.vmi.key, d.removed) for d in first.domains] == [("default/demo", False)]
        assert [a.connected for a in first.agents] == [True]

        conn = await collector.connection(uri)
        domain = conn.lookupByName("default_demo")
        domain.destroy()
        paused = await collect_once(collector)
        assert [(d.state, d.removed, d.agent_connected) for d in paused.domains] == [("shutoff", False, False)]
        assert [a.connected for a in paused.agents] == [False]

        domain.undefine()
        gone = await collect_once(collector)
        assert [(d.vmi.key, d.vmi.uid, d.removed) for d in gone.domains] == [("default/demo", UID, True)]
        assert gone.agents == []

        again = await collect_once(collector)
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
        tick = await collect_once(collector)
        assert tick.domains == [] and tick.agents == []
    finally:
        await collector.close()
        collector.shutdown()


async def test_libvirt_channel_without_socket_override_uses_libvirt(tmp_path: Path) -> None:
    """The test driver drops the channel state, so without an override the agent is not connected."""
    uri = write_node(tmp_path / "node.xml", "02:00:00:00:00:02")
    collector = NodeCollector(CollectorConfig(bootstrap_servers="127.0.0.1:1", libvirt_uris=[uri], node_name="n"))
    try:
        tick = await collect_once(collector)
        assert [d.agent_connected for d in tick.domains] == [False]
        assert [(a.connected, a.info) for a in tick.agents] == [(False, None)]
    finally:
        await collector.close()
        collector.shutdown()


SESSION = re.compile(r"[0-9a-f]{12}")


def write_domains(path: Path, names: list[str]) -> str:
    """A test-driver node with one running KubeVirt domain `default_<name>` per name."""
    domains = "".join(f"""
  <domain type='test'>
    <name>default_{name}</name>
    <memory>1048576</memory>
    <os><type>hvm</type></os>
    <devices><interface type='ethernet'><alias name='ua-default'/></interface></devices>
  </domain>""" for name in names)
    path.write_text(f"<node>{domains}\n</node>\n")
    return f"test://{path}"


def collector_of(uri: str, sockets: dict[str, Path], *, agent_timeout: float = 2.0) -> NodeCollector:
    return NodeCollector(CollectorConfig(
        bootstrap_servers="127.0.0.1:1", libvirt_uris=[uri], node_name="n", agent_timeout=agent_timeout,
        agent_sockets={key: str(path) for key, path in sockets.items()},
    ))


def one_agent(tick: TickReports) -> AgentReport:
    (agent,) = tick.agents
    return agent


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


@pytest.mark.integration
async def test_session_is_kept_while_the_agent_answers_and_renewed_when_it_restarts(
    restartable_qemu_ga: QemuGA, tmp_path: Path
) -> None:
    uri = write_node(tmp_path / "node.xml", "02:00:00:00:00:03")
    collector = collector_of(uri, {"default/demo": restartable_qemu_ga.socket})
    try:
        first = one_agent(await collect_once(collector))
        second = one_agent(await collect_once(collector))
        assert first.connected and second.connected
        assert SESSION.fullmatch(first.session) and second.session == first.session

        restartable_qemu_ga.restart()
        restarted = one_agent(await collect_once(collector))
        assert restarted.connected, "the dead connection is replaced within the same poll"
        assert restarted.session != first.session
        assert one_agent(await collect_once(collector)).session == restarted.session
    finally:
        await collector.close()
        collector.shutdown()


@pytest.mark.integration
async def test_session_is_renewed_when_the_domain_restarts(qemu_ga: Path, tmp_path: Path) -> None:
    uri = write_node(tmp_path / "node.xml", "02:00:00:00:00:04")
    collector = collector_of(uri, {"default/demo": qemu_ga})
    try:
        before = one_agent(await collect_once(collector))
        domain = (await collector.connection(uri)).lookupByName("default_demo")
        domain.destroy()
        domain.create()
        after = one_agent(await collect_once(collector))
        assert before.connected and after.connected
        assert after.session != before.session
    finally:
        await collector.close()
        collector.shutdown()


async def test_a_timeout_then_an_answer_keeps_the_session(tmp_path: Path) -> None:
    """No answer (a timeout under load) is no evidence of a restart: the session goes on. The hung
    agent is asked without a sync (its connection answered just before): its first command stands for
    the sync, so no answer to it reports the agent unreachable; the next poll opens and syncs anew."""
    silent = False

    def script(request: dict[str, Any]) -> Answer:
        if silent:
            return None
        return sync_reply(request) if request["execute"] == "guest-sync" else returning(request, {})

    uri = write_domains(tmp_path / "node.xml", ["vm"])
    sock = tmp_path / "agent.sock"
    async with fake_agent(sock, script) as agent:
        collector = collector_of(uri, {"default/vm": sock}, agent_timeout=0.2)
        try:
            answered = one_agent(await collect_once(collector))
            silent = True
            asked = len(agent.requests)
            lost = one_agent(await collect_once(collector))
            assert [r["execute"] for r in agent.requests[asked:]] == ["guest-info"], "no sync on a live connection"
            silent = False
            assert not (await collect_once(collector)).agents, "a timed-out agent is backed off one tick"
            asked = len(agent.requests)
            found = one_agent(await collect_once(collector))
            assert agent.requests[asked]["execute"] == "guest-sync", "after a timeout the new connection syncs"
            assert agent.connections == 2
        finally:
            await collector.close()
            collector.shutdown()
    assert answered.connected and not lost.connected and found.connected
    assert set(lost.errors) == {"guest-sync"}
    assert SESSION.fullmatch(lost.session)
    assert answered.session == lost.session == found.session


async def resume_and_poll(collector: NodeCollector, domain: Any, emit: Any) -> None:
    """Resume the domain: the next scheduled tick starts a poll at once (a resume asks everything)."""
    domain.resume()
    polls = await collector.tick(emit, scheduled=True)
    assert polls, "the resume starts a poll at once"
    await asyncio.wait(polls)


async def test_a_paused_domain_is_not_polled_and_keeps_its_agent(tmp_path: Path) -> None:
    """Upstream stops polling on a suspend and keeps the agent connected (issue 8): no agent call and no
    agent report while paused, the domain report still says connected; the resume asks everything anew
    in the same session."""
    uri = write_domains(tmp_path / "node.xml", ["vm"])
    sock = tmp_path / "agent.sock"
    async with fake_agent(sock, healthy_script) as agent:
        collector = collector_of(uri, {"default/vm": sock})
        try:
            before = one_agent(await collect_once(collector))
            domain = (await collector.connection(uri)).lookupByName("default_vm")
            domain.suspend()
            asked = len(agent.requests)
            paused = await collect_once(collector)
            asked_while_paused = len(agent.requests) - asked
            after = TickReports()

            async def keep(reports: TickReports) -> None:
                after.domains.extend(reports.domains)
                after.agents.extend(reports.agents)

            # Scheduled, right after a full poll: nothing is due, but a resume asks every command anew.
            await resume_and_poll(collector, domain, keep)
        finally:
            await collector.close()
            collector.shutdown()
    assert not paused.agents and asked_while_paused == 0
    (paused_domain,) = paused.domains
    assert paused_domain.state == "paused" and paused_domain.agent_connected
    resumed = one_agent(after)
    assert before.connected and resumed.connected
    assert before.session == resumed.session
    assert resumed.os is not None and resumed.info is not None and resumed.fs_freeze_status == "thawed"
    assert [d.agent_connected for d in after.domains] == [True]


async def test_a_poll_in_flight_when_the_domain_pauses_is_void(tmp_path: Path) -> None:
    """Without a suspend event (a listing shows the pause), the poll in flight is cancelled: it would time
    out on the paused guest and count as a disconnect."""
    uri = write_domains(tmp_path / "node.xml", ["vm"])
    sock = tmp_path / "agent.sock"
    emitted: list[TickReports] = []

    async def keep(reports: TickReports) -> None:
        emitted.append(reports)

    async with fake_agent(sock, healthy_script) as agent:
        collector = collector_of(uri, {"default/vm": sock}, agent_timeout=1.0)
        try:
            assert one_agent(await collect_once(collector)).connected
            agent.script = slow_script
            (poll,) = await collector.tick(keep)
            await asyncio.sleep(0.2)  # synced, waiting for an answer that will not come
            (await collector.connection(uri)).lookupByName("default_vm").suspend()
            assert await collector.tick(keep) == []
            assert poll.cancelled()
        finally:
            await collector.close()
            collector.shutdown()
    assert not any(reports.agents for reports in emitted), "no report of a disconnect"
    paused = [d for reports in emitted for d in reports.domains if d.state == "paused"]
    assert [d.agent_connected for d in paused] == [True]


async def test_a_resume_polls_at_once_whatever_the_back_off(tmp_path: Path) -> None:
    """Timeouts from before a pause do not hold the resumed VMI back: it is polled in the first round."""
    uri = write_domains(tmp_path / "node.xml", ["vm"])
    sock = tmp_path / "agent.sock"

    async def drop(reports: TickReports) -> None:
        pass

    async with fake_agent(sock, slow_script) as agent:
        collector = collector_of(uri, {"default/vm": sock}, agent_timeout=0.3)
        try:
            timed_out = one_agent(await collect_once(collector))  # a timeout: the VMI is backed off
            assert any("no answer" in reason for reason in timed_out.errors.values()), timed_out.errors
            agent.script = healthy_script
            domain = (await collector.connection(uri)).lookupByName("default_vm")
            domain.suspend()
            await collector.tick(drop, scheduled=True)
            await resume_and_poll(collector, domain, drop)
        finally:
            await collector.close()
            collector.shutdown()


async def test_agent_socket_dir_reaches_the_agent_of_a_vmi_by_name(tmp_path: Path) -> None:
    uri = write_domains(tmp_path / "node.xml", ["vm", "other"])
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    explicit = tmp_path / "explicit.sock"
    async with fake_agent(sockets / "default_vm.sock", quick_script) as by_dir, \
            fake_agent(sockets / "default_other.sock", quick_script) as shadowed, \
            fake_agent(explicit, quick_script) as by_config:
        collector = NodeCollector(CollectorConfig(
            bootstrap_servers="127.0.0.1:1", libvirt_uris=[uri], node_name="n",
            agent_socket_dir=str(sockets), agent_sockets={"default/other": str(explicit)},
        ))
        try:
            tick = await collect_once(collector)
            session = {a.vmi.key: a.session for a in tick.agents}
            (sockets / "default_vm.sock").unlink()  # the agent went away while we held its connection
            gone = await collect_once(collector)
        finally:
            await collector.close()
            collector.shutdown()
    assert {a.vmi.key: a.connected for a in tick.agents} == {"default/vm": True, "default/other": True}
    assert {d.vmi.key: d.agent_connected for d in tick.domains} == {"default/vm": True, "default/other": True}
    assert by_dir.connections == 1 and by_config.connections == 1 and shadowed.connections == 0
    vm = next(a for a in gone.agents if a.vmi.key == "default/vm")
    assert not vm.connected and vm.session != session["default/vm"]


async def test_silent_agents_do_not_starve_a_healthy_one(tmp_path: Path) -> None:
    names = [f"silent{i:02}" for i in range(20)]
    uri = write_domains(tmp_path / "node.xml", [*names, "healthy"])
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    backed_off = metric("guestinfo_collector_polls_backed_off_total")
    async with contextlib.AsyncExitStack() as stack:
        for name in names:
            await stack.enter_async_context(fake_agent(sockets / f"default_{name}.sock", lambda _request: None))
        healthy = await stack.enter_async_context(fake_agent(sockets / "default_healthy.sock", healthy_script))
        collector = NodeCollector(CollectorConfig(
            bootstrap_servers="127.0.0.1:1", libvirt_uris=[uri], node_name="n", agent_socket_dir=str(sockets),
            agent_timeout=0.2, max_concurrent_agent_calls=2, interval=1.0,
        ))
        emitted: list[AgentReport] = []

        async def emit(reports: TickReports) -> None:
            emitted.extend(reports.agents)

        starts: list[float] = []
        try:
            for _ in range(8):
                started = time.monotonic()
                starts.append(time.time())
                await collector.tick(emit)
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
            await asyncio.sleep(0.5)
            await collector.close()
        finally:
            collector.shutdown()

    def ticks_of(key: str) -> list[int]:
        return [bisect.bisect_right(starts, a.observed_at) - 1 for a in emitted if a.vmi.key == key]

    answers = [agent for agent in emitted if agent.vmi.key == "default/healthy"]
    assert all(agent.connected and not agent.errors for agent in answers)
    assert len({agent.session for agent in answers}) == 1 and healthy.connections == 1
    # The first tick knows nothing yet: all 21 agents queue for 2 slots, and its poll may run into the
    # second tick (which then skips it). From then on the silent agents are backed off, and held to
    # half of the slots when polled: the healthy one is polled and answers every tick.
    assert ticks_of("default/healthy")[0] == 0
    assert set(range(3, 8)) <= set(ticks_of("default/healthy"))
    assert metric("guestinfo_collector_polls_backed_off_total") > backed_off
    assert 1 < len(ticks_of("default/silent00")) < 6, "a silent agent is backed off"


async def test_session_is_renewed_when_the_agent_closed_its_socket_between_polls(tmp_path: Path) -> None:
    infos = 0

    def script(request: dict[str, Any]) -> Answer:
        nonlocal infos
        if request["execute"] == "guest-sync":
            return sync_reply(request)
        if request["execute"] == "guest-info":
            infos += 1
            if infos == 1:
                return "close"  # a connection lost in the middle of a poll
        return returning(request, {})

    uri = write_domains(tmp_path / "node.xml", ["vm"])
    sock = tmp_path / "agent.sock"
    collector = collector_of(uri, {"default/vm": sock})
    try:
        async with fake_agent(sock, script) as agent:
            cut = one_agent(await collect_once(collector))
            again = one_agent(await collect_once(collector))
            assert agent.connections == 2
        async with fake_agent(sock, script) as restarted:
            renewed = one_agent(await collect_once(collector))
            kept = one_agent(await collect_once(collector))
            assert restarted.connections == 1
    finally:
        await collector.close()
        collector.shutdown()
    assert cut.connected and "guest-info" in cut.errors
    assert again.connected and "guest-info" not in again.errors
    assert again.session == cut.session, "a connection lost within a poll is not a new session"
    assert renewed.connected and renewed.session != again.session and kept.session == renewed.session


def healthy_script(request: dict[str, Any]) -> Answer:
    replies: dict[str, Any] = {
        "guest-info": {"version": "9.0", "supported_commands": [{"name": "guest-ping", "enabled": True}]},
        "guest-get-osinfo": {"id": "fedora"}, "guest-get-host-name": {"host-name": "h"},
        "guest-get-timezone": {"zone": "UTC", "offset": 0}, "guest-get-users": [], "guest-get-fsinfo": [],
        "guest-network-get-interfaces": [], "guest-fsfreeze-status": "thawed",
    }
    if request["execute"] == "guest-sync":
        return sync_reply(request)
    return returning(request, replies[request["execute"]])


def slow_script(request: dict[str, Any]) -> Answer:
    """Answers guest-sync, then never anything else: each poll lasts one agent timeout."""
    return sync_reply(request) if request["execute"] == "guest-sync" else None


def quick_script(request: dict[str, Any]) -> Answer:
    if request["execute"] == "guest-sync":
        return sync_reply(request)
    return returning(request, "thawed" if request["execute"] == "guest-fsfreeze-status" else {})


async def test_a_slow_agent_delays_nobody_and_is_not_polled_twice_at_once(tmp_path: Path) -> None:
    uri = write_domains(tmp_path / "node.xml", ["slow", "quick", "plain"])
    slow_sock, quick_sock = tmp_path / "slow.sock", tmp_path / "quick.sock"
    emitted: list[tuple[float, TickReports]] = []

    async def emit(reports: TickReports) -> None:
        emitted.append((time.monotonic(), reports))

    def keys(reports: TickReports) -> tuple[set[str], set[str]]:
        return {d.vmi.key for d in reports.domains}, {a.vmi.key for a in reports.agents}

    skipped = metric("guestinfo_collector_polls_skipped_total")
    async with fake_agent(slow_sock, slow_script), fake_agent(quick_sock, quick_script):
        collector = collector_of(uri, {"default/slow": slow_sock, "default/quick": quick_sock}, agent_timeout=1.0)
        try:
            started = time.monotonic()
            polls = await collector.tick(emit)
            assert len(polls) == 2
            assert metric("guestinfo_collector_vmis_tracked") == 3
            # At tick time: the VMI without a socket override, domain and (no agent to ask) agent report.
            assert keys(emitted[0][1]) == ({"default/plain"}, {"default/plain"})

            done, _ = await asyncio.wait(polls, return_when=asyncio.FIRST_COMPLETED)
            assert len(done) == 1 and time.monotonic() - started < 0.5
            assert keys(emitted[1][1]) == ({"default/quick"}, {"default/quick"})
            assert emitted[1][1].domains[0].agent_connected

            second = await collector.tick(emit)
            assert len(second) == 1, "the slow VMI's poll still runs: it is skipped"
            assert metric("guestinfo_collector_polls_skipped_total") == skipped + 1
            assert keys(emitted[2][1]) == ({"default/plain"}, {"default/plain"})
            await asyncio.wait([*polls, *second])
            assert time.monotonic() - started < 1.8
        finally:
            await collector.close()
            collector.shutdown()
    slow = [reports for _, reports in emitted if keys(reports)[1] == {"default/slow"}]
    assert len(slow) == 1
    (domain,), (agent,) = slow[0].domains, slow[0].agents
    assert domain.agent_connected and agent.connected and set(agent.errors) == {"guest-info"}
    assert len(emitted) == 5


async def test_a_removed_domain_cancels_its_poll_and_nothing_follows_the_removal(tmp_path: Path) -> None:
    uri = write_domains(tmp_path / "node.xml", ["slow"])
    sock = tmp_path / "slow.sock"
    emitted: list[TickReports] = []

    async def emit(reports: TickReports) -> None:
        emitted.append(reports)

    async with fake_agent(sock, slow_script):
        collector = collector_of(uri, {"default/slow": sock}, agent_timeout=1.0)
        try:
            (poll,) = await collector.tick(emit)
            await asyncio.sleep(0.1)
            domain = (await collector.connection(uri)).lookupByName("default_slow")
            domain.destroy()
            domain.undefine()
            assert await collector.tick(emit) == []
            assert poll.cancelled()
            await asyncio.sleep(0.1)
        finally:
            await collector.close()
            collector.shutdown()
    assert [[(d.vmi.key, d.removed) for d in reports.domains] for reports in emitted] == [[("default/slow", True)]]
    assert all(not reports.agents for reports in emitted)


async def test_scheduled_polls_start_when_due_and_never_for_a_vmi_mid_poll(tmp_path: Path) -> None:
    """`next_due` names the time the next poll is due (VMIs mid-poll left out: at that time `poll_due`
    always has a poll to start), and `poll_due` asks each VMI no earlier than its schedule says."""
    names = [f"vm{i}" for i in range(6)]
    uri = write_domains(tmp_path / "node.xml", names)
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    loop = asyncio.get_running_loop()
    asked: dict[str, list[tuple[float, list[str]]]] = {}

    def recording(name: str) -> Any:
        def script(request: dict[str, Any]) -> Answer:
            if request["execute"] != "guest-sync":
                asked.setdefault(name, []).append((loop.time(), [request["execute"]]))
            return healthy_script(request)
        return script

    intervals = {command: 2.0 for command in ("guest-info", "guest-get-users", "guest-fsfreeze-status")}
    async with contextlib.AsyncExitStack() as stack:
        for name in names:
            await stack.enter_async_context(fake_agent(sockets / f"default_{name}.sock", recording(name)))
        collector = NodeCollector(CollectorConfig(
            bootstrap_servers="127.0.0.1:1", libvirt_uris=[uri], node_name="n", agent_socket_dir=str(sockets),
            poll_warmup=1.0, jitter=0.0, poll_intervals=intervals,
        ))

        async def emit(reports: TickReports) -> None:
            pass

        try:
            listed_at = loop.time()
            await collector.tick(emit, scheduled=True)  # VMIs of a first listing: first due within the warm-up
            end = listed_at + 4.3  # (first offset ≤ 1 s) + 1 s + 2 s, and a margin
            while (due := collector.next_due()) < end:
                assert due >= listed_at
                await asyncio.sleep(max(0.0, due - loop.time()))
                started = await collector.poll_due(emit)
                assert started, "the VMI named due is not mid-poll: its poll starts"
            await asyncio.sleep(0.2)
        finally:
            await collector.close()
            collector.shutdown()

    def times(name: str, command: str) -> list[float]:
        seen = [at for at, commands in asked.get(name, []) if command in commands]
        return sorted(seen)

    for name in names:
        freeze, info = times(name, "guest-fsfreeze-status"), times(name, "guest-info")
        assert freeze[0] <= listed_at + 1.2, "first polled within the warm-up offset of a first listing"
        gaps = [b - a for a, b in itertools.pairwise(freeze)]
        assert len(freeze) >= 3 and all(0.95 <= gap <= 1.3 for gap in gaps[:1]) and all(
            1.95 <= gap <= 2.3 for gap in gaps[1:]), (name, gaps)  # warm-up 1 s, then the 2 s interval
        assert len(info) >= 2 and info[1] - info[0] >= 0.95
