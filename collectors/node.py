"""The collector of one node: every tick, list the libvirt domains, poll their agents, publish.

`NodeCollector.collect_once()` is one tick (used by the loop and by tests); `run_collector(config)`
is the long-running loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import libvirt
from aiokafka.errors import KafkaError

from collectors.agent_libvirt import LibvirtAgentTransport
from collectors.agent_poll import poll_agent, short_reason
from collectors.agent_protocol import AgentSocketClient, AgentTransport
from collectors.config import CollectorConfig
from collectors.domain_xml import DomainState, parse_domain
from collectors.errors import DomainXMLError
from collectors.publisher import make_producer, publish
from collectors.ratelimit import RateLimitedLog
from schemas.events import AgentReport, DomainReport, VMIRef, split_domain_name, vmi_key

log = logging.getLogger(__name__)

_STATES: dict[int, DomainState] = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
}
#: Commands after the sync; a VMI's whole poll gets this many agent timeouts at most.
_BUDGET_CALLS = 3
_MAX_PRODUCER_BACKOFF = 30.0


def domain_state(code: int) -> DomainState:
    return _STATES.get(code, "other")


@dataclass
class TickReports:
    """The reports of one tick: one `DomainReport` per VMI (plus removals) and one `AgentReport` per VMI."""

    domains: list[DomainReport] = field(default_factory=list)
    agents: list[AgentReport] = field(default_factory=list)


@dataclass
class _Listed:
    """A domain as listed from libvirt in a worker thread."""

    name: str
    domain: libvirt.virDomain
    xml: str
    state: DomainState


@dataclass
class _Listing:
    domains: list[_Listed]
    #: Domains that could not be read this tick (they are not taken as gone).
    unreadable: list[str]


def _silence_libvirt(_context: Any, _error: Any) -> None:
    """libvirt prints every error to stderr by default; they are raised and logged here instead."""


class NodeCollector:
    """State kept between ticks: libvirt connections, agent sockets, the VMIs seen in the last tick."""

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        libvirt.registerErrorHandler(_silence_libvirt, None)
        self._executor = ThreadPoolExecutor(
            max_workers=config.max_concurrent_agent_calls + len(config.libvirt_uris) + 1,
            thread_name_prefix="collector-libvirt",
        )
        self._semaphore = asyncio.Semaphore(config.max_concurrent_agent_calls)
        self._connections: dict[str, libvirt.virConnect] = {}
        self._seen: dict[str, dict[str, VMIRef]] = {uri: {} for uri in config.libvirt_uris}
        self._sockets: dict[str, AgentSocketClient] = {}
        self._gone_sockets: list[AgentSocketClient] = []
        self._logs = RateLimitedLog(log)

    async def connection(self, uri: str) -> libvirt.virConnect:
        """The open libvirt connection of `uri`, opened on first use (and after a failure)."""
        conn = self._connections.get(uri)
        if conn is None:
            conn = await self._in_thread(libvirt.open, uri)
            self._connections[uri] = conn
            log.info("connected to libvirt %s", uri)
        return conn

    async def collect_once(self) -> TickReports:
        """One tick: the domain and agent reports of every KubeVirt domain on every URI, and removals."""
        observed_at = time.time()
        listings = await asyncio.gather(*(self._list(uri) for uri in self.config.libvirt_uris))
        tick = TickReports()
        polls: list[tuple[DomainReport, _Listed]] = []
        for uri, listing in zip(self.config.libvirt_uris, listings, strict=True):
            if listing is None:
                continue  # libvirt unreachable: nothing is known, so nothing is reported removed
            polls.extend(self._domain_reports(uri, listing, observed_at, tick))
        results = await asyncio.gather(*(self._agent(report, listed, observed_at) for report, listed in polls))
        for domain_report, agent_report in results:
            tick.domains.append(domain_report)
            tick.agents.append(agent_report)
        gone, self._gone_sockets = self._gone_sockets, []
        for client in gone:
            await client.close()
        return tick

    async def close(self) -> None:
        """Close agent sockets and libvirt connections; the collector can be used again afterwards."""
        sockets, self._sockets = self._sockets, {}
        for client in sockets.values():
            await client.close()
        connections, self._connections = self._connections, {}
        for uri, conn in connections.items():
            try:
                await self._in_thread(conn.close)
            except libvirt.libvirtError as exc:
                log.debug("closing libvirt %s: %s", uri, exc)

    def shutdown(self) -> None:
        """Stop the worker threads (after `close`)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _in_thread(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def _list(self, uri: str) -> _Listing | None:
        try:
            conn = await self.connection(uri)
            listing: _Listing = await self._in_thread(_list_domains, conn)
        except libvirt.libvirtError as exc:
            self._logs.warning(("libvirt", uri), "cannot list domains of %s: %s", uri, exc)
            dropped = self._connections.pop(uri, None)
            if dropped is not None:
                try:
                    await self._in_thread(dropped.close)
                except libvirt.libvirtError:
                    pass
            return None
        self._logs.recovered(("libvirt", uri), "listing domains of %s works again", uri)
        return listing

    def _domain_reports(
        self, uri: str, listing: _Listing, observed_at: float, tick: TickReports
    ) -> list[tuple[DomainReport, _Listed]]:
        node = self.config.node_name
        previous = self._seen.get(uri, {})
        current: dict[str, VMIRef] = {}
        found: list[tuple[DomainReport, _Listed]] = []
        for listed in listing.domains:
            try:
                report = parse_domain(listed.xml, node=node, observed_at=observed_at, state=listed.state)
            except DomainXMLError as exc:
                self._logs.warning(("xml", listed.name), "domain %.300s skipped: %s", listed.name, exc)
                listing.unreadable.append(listed.name)
                continue
            if report is None:
                continue
            if report.vmi.key in current:
                log.warning("domain %s listed twice on %s; keeping the first", report.vmi.key, uri)
                continue
            current[report.vmi.key] = report.vmi
            found.append((report, listed))
        for name in listing.unreadable:
            identity = split_domain_name(name)
            key = vmi_key(*identity) if identity else ""
            if key in previous and key not in current:
                current[key] = previous[key]
        for key, vmi in previous.items():
            if key not in current:
                log.info("domain %s is gone from %s", key, uri)
                tick.domains.append(
                    DomainReport(vmi=vmi, node=node, observed_at=observed_at, removed=True, state="shutoff")
                )
                client = self._sockets.pop(key, None)
                if client is not None:
                    self._gone_sockets.append(client)
        self._seen[uri] = current
        return found

    def _transport(self, report: DomainReport, listed: _Listed) -> AgentTransport | None:
        key = report.vmi.key
        path = self.config.agent_sockets.get(key)
        if path is not None:
            client = self._sockets.get(key)
            if client is None or client.path != path:
                client = AgentSocketClient(path, timeout=self.config.agent_timeout)
                self._sockets[key] = client
            return client
        if report.agent_connected:
            return LibvirtAgentTransport(listed.domain, timeout=self.config.agent_timeout, executor=self._executor)
        return None

    async def _agent(
        self, report: DomainReport, listed: _Listed, observed_at: float
    ) -> tuple[DomainReport, AgentReport]:
        vmi, node = report.vmi, self.config.node_name
        override = vmi.key in self.config.agent_sockets
        transport = self._transport(report, listed) if report.state == "running" else None
        if transport is None:
            if override:
                report = report.model_copy(update={"agent_connected": False})
            return report, AgentReport(vmi=vmi, node=node, observed_at=observed_at, connected=False)
        try:
            async with self._semaphore:
                agent_report, synced = await poll_agent(
                    transport, vmi, node=node, observed_at=observed_at,
                    budget=self.config.agent_timeout * _BUDGET_CALLS,
                )
        except Exception as exc:  # one VMI's failure must never end the tick
            log.exception("agent poll of %s failed", vmi.key)
            agent_report = AgentReport(
                vmi=vmi, node=node, observed_at=observed_at, connected=False,
                errors={"poll": short_reason(exc)},
            )
            synced = False
        if override:
            report = report.model_copy(update={"agent_connected": synced})
        self._log_agent(vmi.key, agent_report)
        return report, agent_report

    def _log_agent(self, key: str, report: AgentReport) -> None:
        if not report.connected:
            self._logs.warning(("agent", key), "agent of %s unreachable: %s", key, report.errors.get("guest-sync"))
            return
        self._logs.recovered(("agent", key), "agent of %s answers again", key)
        for command, reason in report.errors.items():
            self._logs.warning(("command", key, command), "agent of %s: %s failed: %s", key, command, reason)


def _list_domains(conn: libvirt.virConnect) -> _Listing:
    """All domains of a connection with their XML and state (blocking: run in a thread)."""
    listing = _Listing(domains=[], unreadable=[])
    for domain in conn.listAllDomains(0):
        name = ""
        try:
            name = domain.name()
            xml = domain.XMLDesc(0)
            state = domain_state(domain.state()[0])
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                listing.unreadable.append(name)
            continue
        listing.domains.append(_Listed(name=name, domain=domain, xml=xml, state=state))
    return listing


async def run_collector(config: CollectorConfig) -> None:
    """Collect and publish every `config.interval` seconds until cancelled; then stop cleanly."""
    collector = NodeCollector(config)
    producer = None
    try:
        producer = await _started_producer(config.bootstrap_servers)
        log.info(
            "collector of node %s running: %d libvirt URI(s), %d agent socket(s), every %g s",
            config.node_name, len(config.libvirt_uris), len(config.agent_sockets), config.interval,
        )
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                tick = await collector.collect_once()
                await publish(producer, tick.domains, tick.agents)
            except Exception:  # a failed tick is logged; the next one starts on time
                log.exception("collector tick failed")
            await asyncio.sleep(max(0.0, config.interval - (loop.time() - started)))
    finally:
        log.info("collector of node %s stopping", config.node_name)
        await collector.close()
        collector.shutdown()
        if producer is not None:
            await producer.stop()


async def _started_producer(bootstrap_servers: str) -> Any:
    backoff = 0.5
    attempt = 1
    while True:
        producer = make_producer(bootstrap_servers)
        try:
            await producer.start()
            return producer
        except KafkaError as exc:
            await producer.stop()
            log.warning("cannot reach Kafka at %s (attempt #%d): %s", bootstrap_servers, attempt, exc)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, _MAX_PRODUCER_BACKOFF)
        attempt += 1
