"""The domains of one libvirt connection, listing after listing: what is present, and what went away.

`DomainListing.list(observed_at)` reads every domain's name, XML, state and id in a worker thread
(libvirt calls block), turns each KubeVirt domain into a `DomainReport` (its XML is parsed once per
change: an unchanged XML and state give the last report again, re-timed) and compares with the
previous listing: a VMI listed before and not now is gone, unless its domain could not be read this
time. A connection that fails is dropped and opened again at the next listing; meanwhile nothing is
known, so nothing is reported gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import libvirt

from collectors.domain_xml import DomainState, parse_domain
from collectors.errors import DomainXMLError
from plumbing.logs import RateLimitedLog
from schemas.events import DomainReport, ReportOrder, VMIRef, split_domain_name, vmi_key

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A listing that takes longer is given up (a daemon that accepts connections and never answers would
#: otherwise hold every other URI's listing, and the node's polls, behind it).
LIST_TIMEOUT = 15.0

_STATES: dict[int, DomainState] = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
}


def domain_state(code: int) -> DomainState:
    return _STATES.get(code, "other")


@dataclass
class ListedDomain:
    """A domain as listed from libvirt in a worker thread."""

    name: str
    domain: libvirt.virDomain
    xml: str
    state: DomainState
    id: int = -1


@dataclass
class _Read:
    domains: list[ListedDomain]
    #: Domains that could not be read this time (they are not taken as gone).
    unreadable: list[str]


@dataclass
class Listed:
    """One listing: the VMIs present (with their libvirt domain) and the removals of those gone."""

    present: list[tuple[DomainReport, ListedDomain]] = field(default_factory=list)
    gone: list[DomainReport] = field(default_factory=list)


def removal(vmi: VMIRef, node: str, observed_at: float, order: ReportOrder | None = None) -> DomainReport:
    """The report of a VMI whose domain is gone."""
    return DomainReport(vmi=vmi, node=node, observed_at=observed_at, order=order, removed=True, state="shutoff")


class DomainListing:
    """One libvirt URI's connection and what its last listing showed."""

    def __init__(self, uri: str, node: str, executor: Executor, logs: RateLimitedLog) -> None:
        self.uri = uri
        self.node = node
        self._executor = executor
        self._logs = logs
        self.conn: libvirt.virConnect | None = None
        #: The VMIs of the last listing, by key.
        self.seen: dict[str, VMIRef] = {}
        #: Each domain's XML and state of the last listing and the report parsed from them.
        self._parsed: dict[str, tuple[str, DomainState, DomainReport | None]] = {}
        #: Listed at least once (the VMIs of a first listing are first polled at a random offset).
        self.listed_once = False
        #: A listing given up on (its libvirt call still runs in its thread).
        self._stuck: asyncio.Future[_Read] | None = None

    async def _in_thread(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def connection(self) -> libvirt.virConnect:
        """The open connection, opened on first use (and after a failure)."""
        if self.conn is None:
            self.conn = await self._in_thread(libvirt.open, self.uri)
            log.info("connected to libvirt %s", self.uri)
        return self.conn

    async def list(self, observed_at: float, order: ReportOrder | None = None,
                   timeout: float = LIST_TIMEOUT) -> Listed | None:
        """List the domains now; None when libvirt cannot be reached (the connection is dropped) or does not
        answer within `timeout` seconds. libvirt's calls cannot be interrupted: a listing given up goes on in
        its thread, and this URI is not listed again until it has returned (one thread at most per URI)."""
        if self._stuck is not None:
            if not self._stuck.done():
                return None
            self._stuck = None
        call = asyncio.ensure_future(self._read())
        try:
            read = await asyncio.wait_for(asyncio.shield(call), timeout)
        except TimeoutError:
            self._stuck = call
            call.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved, not raised
            self._logs.warning(("libvirt", self.uri), "libvirt %s did not answer a listing within %.0fs: not "
                               "listed again until it does", self.uri, timeout)
            return None
        except libvirt.libvirtError as exc:
            self._logs.warning(("libvirt", self.uri), "cannot list domains of %s: %s", self.uri, exc)
            await self.close()
            return None
        self._logs.recovered(("libvirt", self.uri), "listing domains of %s works again", self.uri)
        return self._compare(read, observed_at, order)

    async def _read(self) -> _Read:
        return await self._in_thread(_read_domains, await self.connection())

    def _compare(self, read: _Read, observed_at: float, order: ReportOrder | None) -> Listed:
        listed = Listed()
        current: dict[str, VMIRef] = {}
        parsed: dict[str, tuple[str, DomainState, DomainReport | None]] = {}
        for domain in read.domains:
            known = self._parsed.get(domain.name)
            if known is not None and known[0] == domain.xml and known[1] == domain.state:
                # The same XML and state as last time: the same report (the XML is parsed once per change).
                report = known[2] and known[2].model_copy(update={"observed_at": observed_at, "order": order})
            else:
                try:
                    report = parse_domain(domain.xml, node=self.node, observed_at=observed_at, order=order,
                                          state=domain.state)
                except DomainXMLError as exc:
                    self._logs.warning(("xml", domain.name), "domain %.300s skipped: %s", domain.name, exc)
                    read.unreadable.append(domain.name)
                    continue
            parsed[domain.name] = (domain.xml, domain.state, report)
            if report is None:
                continue
            if report.vmi.key in current:
                log.warning("domain %s listed twice on %s; keeping the first", report.vmi.key, self.uri)
                continue
            current[report.vmi.key] = report.vmi
            listed.present.append((report, domain))
        for name in read.unreadable:
            identity = split_domain_name(name)
            key = vmi_key(*identity) if identity else ""
            if key in self.seen and key not in current:
                current[key] = self.seen[key]
        for key, vmi in self.seen.items():
            if key not in current:
                log.info("domain %s is gone from %s", key, self.uri)
                listed.gone.append(removal(vmi, self.node, observed_at, order))
        self.seen = current
        self._parsed = parsed
        self.listed_once = True
        return listed

    async def close(self) -> None:
        """Close the connection (the next listing opens it again)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await self._in_thread(conn.close)
            except libvirt.libvirtError as exc:
                log.debug("closing libvirt %s: %s", self.uri, exc)


def _read_domains(conn: libvirt.virConnect) -> _Read:
    """All domains of a connection with their XML and state (blocking: run in a thread)."""
    read = _Read(domains=[], unreadable=[])
    for domain in conn.listAllDomains(0):
        name = ""
        try:
            name = domain.name()
            read.domains.append(read_domain(domain, name))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                read.unreadable.append(name)
    read.domains.sort(key=lambda listed: listed.name)  # libvirt's order is not fixed; "the first" must be
    return read


def read_domain(domain: libvirt.virDomain, name: str) -> ListedDomain:
    """One domain's XML, state and id as they are now (blocking).

    `XMLDesc` and `state` ask the daemon, but `ID` answers the id the domain had when its handle was
    looked up (libvirt keeps it in the handle): a domain started between `listAllDomains` and `state`
    reads as running with the id -1 of an inactive domain. Taken as it is, the next listing's real id
    would look like a restart of the domain: a new agent session, the answers of the first one voided
    and a GuestRebooted that no boot caused. So a domain that runs under a handle without an id is
    looked up again, by UUID, for its id now; one shut off has none (-1), whatever its handle kept."""
    xml = domain.XMLDesc(0)
    state = domain_state(domain.state()[0])
    if state == "shutoff":
        return ListedDomain(name=name, domain=domain, xml=xml, state=state, id=-1)
    if domain.ID() == -1:
        domain = domain.connect().lookupByUUID(domain.UUID())
    return ListedDomain(name=name, domain=domain, xml=xml, state=state, id=domain.ID())
