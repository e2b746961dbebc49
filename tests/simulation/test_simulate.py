"""`guestinfo simulate`: real collectors against simulated domains and agents, publishing to Kafka."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from collectors.launchers import SOCKET_NAME
from guestinfo.broker import ensure_topics
from guestinfo.engines import Broker, engine
from guestinfo.lab import simulation
from guestinfo.lab.simulation import AgentServer, fleet_spec, place_in_pods, pods_dir, start_fleet
from schemas.codec import decode
from schemas.events import AgentReport, DomainReport
from schemas.topics import AGENT_TOPIC, DOMAIN_TOPIC


async def raw_reports(bootstrap: str, want: int, deadline: float = 15.0) -> tuple[set[tuple[str, str]], set[str]]:
    """(node, VMI) pairs of the domain reports and the keys of connected agent reports with data."""
    consumer = AIOKafkaConsumer(DOMAIN_TOPIC, AGENT_TOPIC, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    domains: set[tuple[str, str]] = set()
    agents: set[str] = set()
    try:
        end = time.monotonic() + deadline
        while time.monotonic() < end and (len(domains) < want or len(agents) < want):
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for record in records:
                    assert record.value is not None
                    if tp.topic == DOMAIN_TOPIC:
                        domain = decode(DomainReport, record.value)
                        domains.add((domain.node, domain.vmi.key))
                    else:
                        agent = decode(AgentReport, record.value)
                        if agent.connected and agent.os is not None and agent.interfaces:
                            agents.add(agent.vmi.key)
    finally:
        await consumer.stop()
    return domains, agents


@pytest.mark.integration
async def test_simulate_publishes_reports_of_every_vmi_of_both_nodes(engine_name: str, tmp_path: Path) -> None:
    # A broker of its own: node names and keys are fixed, so another simulation on a shared broker
    # could otherwise satisfy this test.
    async with engine(engine_name) as broker:
        await ensure_topics(broker.bootstrap_servers)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "guestinfo", "--state-dir", str(tmp_path), "simulate",
            "--bootstrap-servers", broker.bootstrap_servers, "--nodes", "2", "--vmis-per-node", "5",
            "--interval", "1", "--duration", "8", "--seed", "11",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=40)
        assert process.returncode == 0, stderr.decode()[-3000:]
        assert b"reports published" in stderr
        expected = {(f"sim-node-{spec.node}", spec.key) for spec in fleet_spec(2, 5, 1)}
        domains, agents = await raw_reports(broker.bootstrap_servers, len(expected))
    assert expected <= domains
    assert {key for _, key in expected} <= agents


@pytest.mark.integration
async def test_fleet_hostname_change_is_served_to_the_collector(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes, one agents process each (as 10,000 VMIs need: file descriptors); the change goes to the
    process that serves the VMI."""
    await ensure_topics(broker.bootstrap_servers)
    monkeypatch.setattr(simulation, "VMIS_PER_AGENTS_PROCESS", 2)
    fleet = await start_fleet(broker.bootstrap_servers, 2, 2, 0.5, tmp_path, seed=3, events=False)
    try:
        assert len(fleet.collector_pids()) == 2 and len(fleet.agents_pids()) == 2
        key = fleet.vmi_keys[-1]  # on the second node: the second agents process
        assert fleet.control_of[key] != fleet.control_of[fleet.vmi_keys[0]]
        changed = await fleet.set_hostname(key, "renamed")
        served = await fleet.served(key, "renamed", timeout=15)
        assert served is not None and served >= changed
        published = 0
        for _ in range(75):
            published = await fleet.reports_published()
            if published:
                break
            await asyncio.sleep(0.2)
        assert published > 0
    finally:
        await fleet.stop()
    assert fleet.collector_pids() == [] and all(process.returncode is not None for process, _ in fleet.agents)


async def test_reboots_disconnects_and_migrations_move_the_agents_sockets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = fleet_spec(2, 2, 7)
    for node in range(2):
        (tmp_path / f"node-{node}").mkdir()
        place_in_pods(tmp_path, node, specs)
    monkeypatch.setattr(simulation, "POD_HANDOVER", 0.05)
    server = AgentServer(tmp_path, [0, 1], specs, 7, events=True, control="control-0.sock")
    task = asyncio.create_task(server.run())
    await asyncio.sleep(0.2)
    spec = specs[0]
    assert server.socket_path(spec).exists()
    monkeypatch.setattr(simulation, "MIGRATION_RATE", 1e9)  # every VMI migrates in the next step
    for other in specs:
        server.models[other.key].rng.random = lambda: 0.5  # type: ignore[method-assign]
    monkeypatch.setattr(simulation, "REBOOT_RATE", 0.0)
    monkeypatch.setattr(simulation, "DISCONNECT_RATE", 0.0)
    first_pod, source_socket = spec.pod, server.socket_path(spec)
    await server.step(1.0)
    assert server.events["migrations"] == 4
    assert spec.node == 1 and server.socket_path(spec).exists()
    assert (pods_dir(tmp_path, 0) / first_pod).exists(), "the source pod stays a moment: its successor is found first"
    assert source_socket.is_symlink() and source_socket.resolve() == server.socket_path(spec).resolve(), \
        "meanwhile the source collector still reaches the agent"
    await asyncio.sleep(0.2)
    assert not source_socket.exists() and not source_socket.is_symlink()
    assert not (pods_dir(tmp_path, 0) / first_pod).exists(), "then it is gone, and the VMI with it"
    listed = {node: "".join(path.read_text() for path in pods_dir(tmp_path, node).rglob(SOCKET_NAME))
              for node in (0, 1)}
    assert "vm-0-0" in listed[1] and "vm-0-0" not in listed[0]
    assert all(spec.pod and (pods_dir(tmp_path, spec.node) / spec.pod).exists() for spec in specs)
    monkeypatch.setattr(simulation, "MIGRATION_RATE", 0.0)
    monkeypatch.setattr(simulation, "REBOOT_RATE", 1e9)
    server.models[spec.key].users["alice"] = 1.0
    await server.step(1.0)
    assert server.events["reboots"] == 4 and not server.socket_path(spec).exists()
    assert server.models[spec.key].users == {}
    server.models[spec.key].away_until = 1.0
    monkeypatch.setattr(simulation, "REBOOT_RATE", 0.0)
    await server.step(1.0)
    assert server.socket_path(spec).exists(), "back after the reboot"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
