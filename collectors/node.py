"""The collector of one node: every tick, list the libvirt domains, poll their agents, publish.

This module is the wiring: each VMI's state and decisions are its `collectors.vmi.VMI` (tested as
timelines), each libvirt URI's connection and listings a `collectors.listing.DomainListing`, the due
times of all VMIs one `collectors.due.DueQueue`, the launchers of a node `Launchers`; here are agent
transports, poll tasks, concurrency and the scheduler loop (`run_collector`).

`NodeCollector.tick(emit)` starts one tick: the reports known at once (removals, domain reports of
VMIs whose agent is reached through libvirt, agent reports of VMIs with no agent to ask) go to `emit`
right away, and each VMI's agent poll runs as a task of its own that hands its reports to `emit` when
it ends, so one slow or hostile agent delays nobody else. A VMI whose previous poll still runs is not
polled again. A VMI with a socket override has its domain report sent with its agent report, since
its `agent_connected` is what the poll found.

`NodeCollector.tick(emit)` starts one tick; `run_collector(config)` is the long-running loop, which
never waits for a poll.

Every VMI has an agent session token (`AgentReport.session`). The join voids what the agent said in
an earlier session, so it is renewed only on evidence that the agent (or the guest) restarted:

- the libvirt domain id changed (the domain was restarted; the id is read as it is at the listing, not
  the one a handle kept from before the domain started: `collectors.listing.read_domain`);
- the agent closed the socket connection we held: found closed at the start of a poll, or its socket
  file (of `agent_socket_dir`) gone while we held a connection;
- for agents reached through libvirt, the agent channel went from disconnected to connected in the
  live XML between two ticks (the guest's qemu-ga closed and reopened its port: a guest reboot or an
  agent restart).

No answer (a timeout under load), a paused domain, a bad reply, a skipped poll, or a connection the
collector dropped itself or that was lost in the middle of a poll is not evidence: the session is
kept, and what the agent said before stays valid. (A guest reboot while the collector held no
connection and libvirt showed no channel change is not seen; libvirt's reboot events are not used.)

A paused domain is not polled, and its agent stays connected (upstream virt-launcher stops its poller
on a suspend and keeps `agentConnected`; the channel stays open): its domain reports keep
`agent_connected`, no agent report is sent, a poll in flight is cancelled, and the join keeps the
data. On resume every command is polled at once, whatever the back-off.

Concurrency: `max_concurrent_agent_calls` caps agent calls, held per call (not per poll); calls of
polls that have synced go first, then syncs of agents that answered last time, then the rest
(`collectors.slots`). VMIs whose last poll timed out may use only half of the slots, so healthy
agents always find one; and such a VMI
is left unpolled for an exponential number of ticks (1, 2, 4 ... `max_backoff_ticks`), ended by a poll
without a timeout. libvirt listing runs on a worker pool of its own, apart from libvirt agent calls
(which can outlive their asyncio timeout in their thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import libvirt

from collectors.agent_libvirt import LibvirtAgentTransport
from collectors.agent_poll import AgentPoll, run_poll, short_reason
from collectors.agent_protocol import AgentSocketClient, AgentTransport
from collectors.agent_replies import CONVERTERS
from collectors.budget import REPORT_ERROR
from collectors.changes import StatePublisher
from collectors.clock import observation
from collectors.config import CollectorConfig
from collectors.due import DueQueue
from collectors.events import DomainEvent, DomainEventWatcher
from collectors.launchers import Launcher, find_launchers, forget_link
from collectors.listing import DomainListing, ListedDomain, removal
from collectors.metrics import (
    LAST_ROUND,
    LAUNCHERS,
    LAUNCHERS_REACHABLE,
    POLLS_BACKED_OFF,
    POLLS_SKIPPED,
    VMIS_BACKED_OFF,
    VMIS_TRACKED,
)
from collectors.reports import Emit, TickReports
from collectors.schedule import CommandSchedule
from collectors.slots import ANSWERING, CONTINUING, OTHER, PrioritySlots
from collectors.vmi import VMI, PollPlan
from plumbing.logs import RateLimitedLog
from schemas.events import AgentReport, DomainReport, VMIRef, split_domain_name, vmi_key

log = logging.getLogger(__name__)

#: Commands after the sync; a VMI's whole poll gets this many agent timeouts at most.
_BUDGET_CALLS = 3
#: The scheduler sleeps at least this long between two rounds (polls in flight are not waited for):
#: the polls due within it start together. libvirt events still wake it at once.
_MIN_WAIT = 0.5
#: The queue of due times is rebuilt when it holds this many times more entries than VMIs queued.
_QUEUE_SLACK = 4
#: Threads listing libvirt connections at the same time (one per URI, up to this many).
_LIST_THREADS = 8
#: A listing that failed (libvirt unreachable, connection lost) is tried again this soon.
_RELIST_RETRY = 2.0
#: While the collector runs, a full garbage collection follows at most every this many younger ones
#: (CPython's default is 10). The state of every VMI is long-lived and renewed by each poll, so with
#: the default a full collection of it ran every few seconds: about 3 % of a core at 1,000 VMIs.
#: Cycles are still found, only later; most of the collector's garbage has none.
_GC_FULL_AFTER = 1000


def _silence_libvirt(_context: Any, _error: Any) -> None:
    """libvirt prints every error to stderr by default; they are raised and logged here instead."""


class NodeCollector:
    """State kept between ticks: libvirt connections, agent sockets, the VMIs seen in the last tick."""

    def __init__(self, config: CollectorConfig, *, wake: Callable[[], None] | None = None) -> None:
        self.config = config
        #: Called when a poll ends and its VMI falls due before the time `next_due` last named: the
        #: scheduler, asleep until then, must look at the queue again.
        self._wake = wake
        self._announced = float("inf")
        libvirt.registerErrorHandler(_silence_libvirt, None)
        # Listing has threads of its own: stuck agent calls (their thread outlives the asyncio timeout)
        # cannot stall it.
        listers = _LIST_THREADS if config.launcher_pods_dir else min(_LIST_THREADS, len(config.libvirt_uris) + 1)
        self._executor = ThreadPoolExecutor(max_workers=listers, thread_name_prefix="collector-libvirt")
        self._agent_executor = ThreadPoolExecutor(
            max_workers=config.max_concurrent_agent_calls + 4, thread_name_prefix="collector-agent"
        )
        self._slots = PrioritySlots(config.max_concurrent_agent_calls)
        #: Slots that VMIs whose agent timed out lately may use (the others are kept for healthy ones).
        self._suspect_slots = asyncio.Semaphore(max(1, config.max_concurrent_agent_calls // 2))
        self._logs = RateLimitedLog(log)
        #: The libvirt URIs listed, each with its connection and last listing.
        self._listings: dict[str, DomainListing] = {}
        for uri in config.libvirt_uris:
            self.add_uri(uri)
        self._sockets: dict[str, AgentSocketClient] = {}
        self._vmis: dict[str, VMI] = {}
        #: The last listing of each VMI: its URI, domain report and libvirt domain (for scheduled polls).
        self._known: dict[str, tuple[str, DomainReport, ListedDomain]] = {}
        #: When each VMI that may be polled (listed running, not mid-poll) is next due (loop time).
        self._due = DueQueue(_QUEUE_SLACK)
        self._rng = random.Random()

    @property
    def uris(self) -> list[str]:
        """The libvirt URIs collected: those of the configuration and the launchers followed."""
        return list(self._listings)

    def add_uri(self, uri: str) -> None:
        """Collect `uri` too (a launcher found): listed from the next tick on."""
        if uri not in self._listings:
            self._listings[uri] = DomainListing(uri, self.config.node_name, self._executor, self._logs)

    async def drop_uri(self, uri: str, emit: Emit) -> int:
        """Stop collecting `uri` (its launcher is gone): its VMIs are reported removed, as when their domain
        goes (unless another URI lists them too), its connection is closed. Returns how many were removed."""
        listing = self._listings.pop(uri, None)
        if listing is None:
            return 0
        observed_at, order = observation()
        gone = TickReports()
        for key, vmi in listing.seen.items():
            if self._listed_elsewhere(key, listing):
                continue
            await self._forget(key)
            gone.domains.append(removal(vmi, self.config.node_name, observed_at, order))
        await listing.close()
        if gone.domains:
            await self._emit(emit, gone)
        return len(gone.domains)

    def _listed_elsewhere(self, key: str, listing: DomainListing) -> bool:
        return any(key in other.seen for other in self._listings.values() if other is not listing)

    def has_connection(self, uri: str) -> bool:
        """A libvirt connection of `uri` is open (its last listing worked)."""
        listing = self._listings.get(uri)
        return listing is not None and listing.conn is not None

    async def connection(self, uri: str) -> libvirt.virConnect:
        """The open libvirt connection of `uri`, opened on first use (and after a failure)."""
        return await self._listings[uri].connection()

    async def tick(
        self, emit: Emit, *, uris: Iterable[str] | None = None, scheduled: bool = False
    ) -> list[asyncio.Task[None]]:
        """Start one tick: list `uris` (default: all), hand the reports known now to `emit` (awaited),
        start the agent polls, each of which hands its reports to `emit` when it ends. Returns the polls
        started. Unscheduled, every command of every VMI is polled; `scheduled`, only the VMIs with
        commands due (`CollectorConfig.poll_intervals`), and only those commands."""
        observed_at, order = observation()
        chosen = [self._listings[uri] for uri in (self.uris if uris is None else uris) if uri in self._listings]
        first = [not listing.listed_once for listing in chosen]
        results = await asyncio.gather(*(listing.list(observed_at, order) for listing in chosen))
        now = TickReports()
        found: list[tuple[str, DomainReport, ListedDomain]] = []
        for listing, first_listing, result in zip(chosen, first, results, strict=True):
            if result is None:
                continue  # libvirt unreachable: nothing is known, so nothing is reported removed
            spread = self.config.poll_warmup if scheduled and first_listing else 0.0
            # A VMI another URI still lists is not gone (an old launcher pod beside the new one).
            now.domains.extend(gone for gone in result.gone if not self._listed_elsewhere(gone.vmi.key, listing))
            for report, listed in result.present:
                found.append((listing.uri, report, listed))
                if report.vmi.key not in self._vmis:
                    self._vmis[report.vmi.key] = self._new_state(report.vmi.key, listed.id, spread)
        for gone in now.domains:
            await self._forget(gone.vmi.key)
        polls: list[asyncio.Task[None]] = []
        for uri, report, listed in found:
            self._known[report.vmi.key] = (uri, report, listed)
            poll = await self._start(report, listed, observed_at, now, emit, scheduled=scheduled)
            if poll is not None:
                polls.append(poll)
            self._requeue(report.vmi.key)
        VMIS_TRACKED.set(sum(len(listing.seen) for listing in self._listings.values()))
        VMIS_BACKED_OFF.set(sum(1 for state in self._vmis.values() if state.timeouts))
        if now.domains or now.agents:
            await self._emit(emit, now)
        return polls

    async def poll_due(self, emit: Emit, *, skip: Iterable[str] = ()) -> list[asyncio.Task[None]]:
        """Start the polls due now of the VMIs listed before (but those of the URIs in `skip`, just
        listed), from their last listing; returns the polls started."""
        skipped = set(skip)
        loop_now = asyncio.get_running_loop().time()
        observed_at, order = observation()
        now = TickReports()
        polls: list[asyncio.Task[None]] = []
        for key in self._due.pop_due(loop_now):
            known, state = self._known.get(key), self._vmis.get(key)
            if known is None or state is None:
                continue
            uri, report, listed = known
            if uri in skipped or report.state != "running" or state.busy or not state.wants_poll(loop_now):
                self._requeue(key)
                continue
            fresh = report.model_copy(update={"observed_at": observed_at, "order": order})
            poll = await self._start(fresh, listed, observed_at, now, emit, scheduled=True)
            if poll is not None:
                polls.append(poll)
            self._requeue(key)
        if now.domains or now.agents:
            await self._emit(emit, now)
        return polls

    def next_due(self) -> float:
        """The loop time the next scheduled poll is due (VMIs not running or mid-poll are left out: a
        poll's end queues its VMI again, and calls `wake` when that is earlier than this answer)."""
        self._announced = self._due.next_due()
        return self._announced

    def _poll_ended(self, key: str) -> None:
        """A VMI's poll ended: queue it at its next due time, and wake the scheduler if it sleeps past it."""
        self._requeue(key)
        when = self._due.get(key)
        if self._wake is not None and when is not None and when < self._announced:
            self._announced = when
            self._wake()

    def _requeue(self, key: str) -> None:
        """Queue `key` at its next due time, or take it out while it cannot be polled (gone, not listed
        running, mid-poll: the poll's end queues it again). Call after anything that changes those."""
        state, known = self._vmis.get(key), self._known.get(key)
        when = None if state is None or known is None else state.due_at(known[1].state == "running")
        if when is None:
            self._due.discard(key)
        else:
            self._due.push(key, when)

    def on_event(self, event: DomainEvent) -> None:
        """A libvirt event of a domain known already, shown to its VMI (`VMI.event`): the poll in flight is
        voided when the event says so. (The caller lists the event's URI again, which does the rest.)"""
        identity = split_domain_name(event.domain)
        key = vmi_key(*identity) if identity else ""
        state = self._vmis.get(key)
        if state is None:
            return
        if state.event(event.kind) and state.poll is not None:
            state.poll.cancel()
        self._requeue(key)

    def _loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def _new_state(self, key: str, domain_id: int, spread: float) -> VMI:
        schedule = CommandSchedule(
            self.config.poll_intervals, warmup=self.config.poll_warmup, jitter=self.config.jitter, rng=self._rng
        )
        schedule.restart(self._loop_time(), spread=spread)
        return VMI(schedule, max_backoff=self.config.max_backoff_ticks, domain_id=domain_id, key=key)

    async def close(self) -> None:
        """Stop the polls in flight, close agent sockets and libvirt connections; the collector can be
        used again afterwards."""
        polls = [state.poll for state in self._vmis.values() if state.poll is not None and not state.poll.done()]
        for poll in polls:
            poll.cancel()
        if polls:
            await asyncio.wait(polls)
        sockets, self._sockets = self._sockets, {}
        for client in sockets.values():
            await client.close()
        for listing in self._listings.values():
            await listing.close()

    def shutdown(self) -> None:
        """Stop the worker threads (after `close`)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._agent_executor.shutdown(wait=False, cancel_futures=True)

    def _socket_path(self, vmi: VMIRef) -> str | None:
        """The agent socket of `vmi`, if it is reached through one (`agent_sockets`, `agent_socket_dir`)."""
        path = self.config.agent_sockets.get(vmi.key)
        if path is not None:
            return path
        if self.config.agent_socket_dir is not None:
            candidate = os.path.join(self.config.agent_socket_dir, f"{vmi.namespace}_{vmi.name}.sock")
            if os.path.exists(candidate):
                return candidate
        return None

    def _transport(self, report: DomainReport, listed: ListedDomain, path: str | None) -> AgentTransport:
        """How to ask the agent of a VMI a poll was planned for: its socket, or libvirt."""
        if path is None:
            return LibvirtAgentTransport(
                listed.domain, timeout=self.config.agent_timeout, executor=self._agent_executor
            )
        key = report.vmi.key
        client = self._sockets.get(key)
        if client is None or client.path != path:
            client = AgentSocketClient(path, timeout=self.config.agent_timeout)
            self._sockets[key] = client
        return client

    async def _socket_gone(self, key: str, state: VMI) -> None:
        """A VMI's socket (of `agent_socket_dir`) is gone: drop its client, and tell the VMI whether a
        connection was held to it (then the agent closed it: its session ends)."""
        client = self._sockets.pop(key, None)
        if client is None:
            return
        state.socket_gone(client.connected)
        await client.close()

    async def _forget(self, key: str) -> None:
        """A VMI is gone: its poll in flight is void (its reports must not follow the removal)."""
        state = self._vmis.pop(key, None)
        self._known.pop(key, None)
        self._due.discard(key)
        if state is not None and state.poll is not None and not state.poll.done():
            state.poll.cancel()
            await asyncio.wait([state.poll])
        client = self._sockets.pop(key, None)
        if client is not None:
            await client.close()

    async def _start(
        self, report: DomainReport, listed: ListedDomain, observed_at: float, now: TickReports, emit: Emit,
        *, scheduled: bool = False,
    ) -> asyncio.Task[None] | None:
        """The listing-time part of one VMI: what `VMI.shown` decides is done here (its reports known now
        go to `now`, a voided poll is cancelled, a planned poll is started)."""
        key = report.vmi.key
        state = self._vmis.get(key)
        if state is None:
            state = self._vmis[key] = self._new_state(key, listed.id, 0.0)
        path = self._socket_path(report.vmi)
        if path is None and not state.busy:  # a poll in flight finds the closed socket itself
            await self._socket_gone(key, state)
        step = state.shown(report, listed.id, path is not None, self._loop_time(), scheduled)
        if step.void_poll and state.poll is not None:
            state.poll.cancel()  # what it asks is void (a restarted domain) or will not be answered (paused)
            await asyncio.wait([state.poll])
        if step.skipped:
            POLLS_SKIPPED.inc()
            log.debug("agent of %s: previous poll still running, not polled this round", key)
        if step.backed_off:
            POLLS_BACKED_OFF.inc()
            log.debug("agent of %s: backing off, %d round(s) left", key, state.backoff)
        now.domains.extend(step.domains)
        now.agents.extend(step.agents)
        if step.poll is None:
            return None
        transport = self._transport(report, listed, path)
        state.poll = asyncio.create_task(
            self._poll(report, transport, state, step.poll, emit, override=path is not None),
            name=f"agent poll of {key}",
        )
        state.poll.add_done_callback(lambda _poll: self._poll_ended(key))
        return state.poll

    async def _poll(
        self, report: DomainReport, transport: AgentTransport, state: VMI, plan: PollPlan, emit: Emit,
        *, override: bool,
    ) -> None:
        """One VMI's agent poll of `plan`; its reports go to `emit` when it ends."""
        vmi, node, observed_at = report.vmi, self.config.node_name, report.observed_at
        suspect, answering = state.timeouts > 0, bool(state.answered)
        timed_out = False
        asked: list[str] = []
        poll: AgentPoll | None = None
        failure = ""
        try:
            poll = await run_poll(
                transport, vmi, budget=self.config.agent_timeout * _BUDGET_CALLS,
                slots=lambda first: self._slot(suspect, (ANSWERING if answering else OTHER) if first else CONTINUING),
                commands=plan.commands,
            )
            synced, timed_out = poll.synced, poll.timed_out
            asked = [c for c in plan.commands if CONVERTERS[c][0] in poll.fields or c in poll.errors]
        except Exception as exc:  # one VMI's failure must never end the tick
            log.exception("agent poll of %s failed", vmi.key)
            failure = short_reason(exc)
            synced = False
        client = transport if isinstance(transport, AgentSocketClient) else None
        state.polled(plan, asked, synced, timed_out, self._loop_time(), client,
                     client.reconnects if client is not None else 0)
        if timed_out:
            self._logs.warning(
                ("backoff", vmi.key), "agent of %s timed out: not polled for %d round(s)%s", vmi.key, state.backoff,
                " (at most)" if state.backoff == self.config.max_backoff_ticks else "",
            )
        agent_report: AgentReport | None = None
        if poll is not None:
            try:
                agent_report = poll.report(vmi, node=node, observed_at=observed_at, order=report.order,
                                           session=state.session)
            except Exception as exc:  # as above: never a poll without its report
                log.exception("agent report of %s failed", vmi.key)
                failure = short_reason(exc)
        if agent_report is None:
            agent_report = state.disconnected(report, {"poll": failure})
        self._log_agent(vmi.key, agent_report)
        reports = TickReports(agents=[agent_report])
        if override:
            reports.domains.append(report.model_copy(update={"agent_connected": synced}))
        await self._emit(emit, reports)

    def _slot(self, suspect: bool, priority: int) -> _Slot:
        """One slot of the concurrency cap, for one agent call; a suspect VMI's also needs a suspect slot.
        Calls of polls that have synced go first, then syncs of agents that answered last time."""
        return _Slot(self._slots, priority, self._suspect_slots if suspect else None)

    async def _emit(self, emit: Emit, reports: TickReports) -> None:
        try:
            await emit(reports)
        except Exception:  # a publishing failure is the publisher's to retry; the tick goes on
            log.exception("handing over %d report(s) failed", len(reports.domains) + len(reports.agents))

    def _log_agent(self, key: str, report: AgentReport) -> None:
        if not report.connected:
            self._logs.warning(("agent", key), "agent of %s unreachable: %s", key, report.errors.get("guest-sync"))
            return
        self._logs.recovered(("agent", key), "agent of %s answers again", key)
        for command, reason in report.errors.items():
            if command == REPORT_ERROR:
                self._logs.warning(("report", key), "agent report of %s: %s", key, reason)
            else:
                self._logs.warning(("command", key, command), "agent of %s: %s failed: %s", key, command, reason)


class _Slot:
    """Holds one slot of `slots` at `priority` (and one of `suspect`, when given) while in use."""

    __slots__ = ("_priority", "_slots", "_suspect")

    def __init__(self, slots: PrioritySlots, priority: int, suspect: asyncio.Semaphore | None) -> None:
        self._slots, self._priority, self._suspect = slots, priority, suspect

    async def __aenter__(self) -> None:
        if self._suspect is not None:
            await self._suspect.acquire()
        try:
            await self._slots.acquire(self._priority)
        except BaseException:
            if self._suspect is not None:
                self._suspect.release()
            raise

    async def __aexit__(self, *_exc: object) -> None:
        self._slots.release()
        if self._suspect is not None:
            self._suspect.release()


def evented(uri: str) -> bool:
    """Whether a watcher sees the events of `uri`: not for the in-process test driver (`test:///…`),
    whose state is private to each connection."""
    return not uri.startswith("test:///")


async def run_collector(config: CollectorConfig) -> None:
    """Collect and publish until cancelled; then stop cleanly.

    The loop is a scheduler. Each libvirt URI is listed again at once on a domain event of it, and
    otherwise every `relist_interval` seconds while its event watcher is connected (a safety net for a
    missed event), every `interval` seconds when it has none (`test:///` files, `watch_events` off, a
    watcher reconnecting). Between listings, each VMI's agent is polled when one of its commands is due
    (`poll_intervals`), from its last listing. With `launcher_pods_dir`, the launchers there are looked
    for every `launcher_scan_interval` seconds: one found is collected like a configured URI, one gone
    has its VMIs removed (`Launchers`). Reports go through a `StatePublisher` (changes only, buffered per
    VMI while Kafka is away, full resyncs), which publishes on a task of its own.
    """
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    collector = NodeCollector(config, wake=wake.set)
    publisher = StatePublisher(config.bootstrap_servers, resync_interval=config.resync_interval, jitter=config.jitter)
    relist_now: set[str] = set()

    def on_event(event: DomainEvent) -> None:
        log.debug("libvirt event %s of %r on %s", event.kind, event.domain, event.uri)
        collector.on_event(event)
        relist_now.add(event.uri)
        wake.set()

    followed = FollowedURIs(collector, on_event, config.watch_events)
    for uri in config.libvirt_uris:
        followed.add(uri)
    launchers = Launchers(config, followed) if config.launcher_pods_dir else None
    publishing = asyncio.create_task(publisher.run(), name="collector publisher")
    log.info(
        "collector of node %s running: %d libvirt URI(s) (%d with events), %d agent socket(s)%s%s",
        config.node_name, len(config.libvirt_uris), len(followed.watchers), len(config.agent_sockets),
        f" and the sockets in {config.agent_socket_dir}" if config.agent_socket_dir else "",
        f"; launchers in {config.launcher_pods_dir}" if config.launcher_pods_dir else "",
    )
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], max(thresholds[2], _GC_FULL_AFTER))
    try:
        while True:
            wake.clear()
            now = loop.time()
            for task in (publishing, *followed.tasks.values()):
                if task.done():  # a background task of the collector ended: that is a failure, not a state
                    error = task.exception() if not task.cancelled() else None
                    raise RuntimeError(f"{task.get_name()} stopped: {error!r}")
            try:
                if launchers is not None and launchers.due(now):
                    await launchers.scan(publisher.send, now)
                relist_now.intersection_update(followed.next_list)  # events of a launcher gone meanwhile
                listed = [uri for uri, at in followed.next_list.items() if uri in relist_now or at <= now]
                relist_now.difference_update(listed)
                for uri in listed:
                    watcher = followed.watchers.get(uri)
                    period = config.relist_interval if watcher is not None and watcher.connected else config.interval
                    followed.next_list[uri] = now + period
                if listed:
                    await collector.tick(publisher.send, uris=listed, scheduled=True)
                    for uri in listed:
                        if not collector.has_connection(uri):  # the listing failed: try again soon
                            followed.next_list[uri] = now + min(_RELIST_RETRY, followed.next_list[uri] - now)
                if launchers is not None:
                    launchers.count_reachable()
                await collector.poll_due(publisher.send, skip=listed)
                publisher.resync_due()
                LAST_ROUND.set_to_current_time()
            except Exception:  # a failed round is logged; the next one starts on time
                log.exception("collector round failed")
            wake_at = min([
                *followed.next_list.values(), collector.next_due(), publisher.tracker.next_resync(),
                launchers.next_scan if launchers is not None else float("inf"),
            ])
            if relist_now:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(_MIN_WAIT, wake_at - loop.time()))
    finally:
        log.info("collector of node %s stopping", config.node_name)
        publishing.cancel()
        await followed.close()
        if launchers is not None:
            launchers.close()
        await asyncio.gather(publishing, return_exceptions=True)
        await collector.close()
        collector.shutdown()
        gc.set_threshold(*thresholds)


class FollowedURIs:
    """The libvirt URIs the collector lists, each with its event watcher (when its events can be seen)
    and the loop time of its next listing."""

    def __init__(self, collector: NodeCollector, on_event: Callable[[DomainEvent], None], watch_events: bool) -> None:
        self.collector = collector
        self.on_event = on_event
        self.watch_events = watch_events
        self.next_list: dict[str, float] = {}
        self.watchers: dict[str, DomainEventWatcher] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def add(self, uri: str) -> None:
        """Follow `uri`: listed at once, then as its events and periods say."""
        self.collector.add_uri(uri)
        self.next_list[uri] = 0.0
        if self.watch_events and evented(uri):
            watcher = DomainEventWatcher(uri, self.on_event)
            self.watchers[uri] = watcher
            self.tasks[uri] = asyncio.create_task(watcher.run(), name=f"libvirt events of {uri}")

    async def drop(self, uri: str, emit: Emit) -> int:
        """Stop following `uri`: its watcher stops, its VMIs are reported removed; returns how many."""
        self.next_list.pop(uri, None)
        self.watchers.pop(uri, None)
        task = self.tasks.pop(uri, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return await self.collector.drop_uri(uri, emit)

    def reachable(self, uri: str) -> bool:
        watcher = self.watchers.get(uri)
        return watcher.connected if watcher is not None else self.collector.has_connection(uri)

    async def close(self) -> None:
        tasks, self.tasks = list(self.tasks.values()), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Launchers:
    """The virt-launcher pods of `launcher_pods_dir`, followed as they come and go."""

    def __init__(self, config: CollectorConfig, followed: FollowedURIs) -> None:
        assert config.launcher_pods_dir is not None
        self.pods_dir = config.launcher_pods_dir
        self.template = config.launcher_uri
        self.interval = config.launcher_scan_interval
        self.followed = followed
        self.known: dict[str, Launcher] = {}
        self.next_scan = 0.0
        self._logs = RateLimitedLog(log)
        #: Short links to sockets whose path is too long for a socket address (collectors/launchers.py).
        self.links = tempfile.mkdtemp(prefix="guestinfo-launchers-")

    def due(self, now: float) -> bool:
        return now >= self.next_scan

    async def scan(self, emit: Emit, now: float) -> None:
        """Look at the pods folder once: follow the launchers found, drop those gone (their VMIs are
        removed). A pods folder that cannot be read changes nothing."""
        self.next_scan = now + self.interval
        try:
            found, failed = await asyncio.to_thread(find_launchers, self.pods_dir, self.template, self.links)
        except OSError as exc:
            self._logs.warning(("pods", self.pods_dir), "cannot read the pods folder %s: %s", self.pods_dir, exc)
            return
        self._logs.recovered(("pods", self.pods_dir), "the pods folder %s can be read again", self.pods_dir)
        for pod_uid, reason in failed.items():
            self._logs.warning(("launcher", pod_uid), "launcher of pod %s cannot be reached: %s", pod_uid, reason)
        # A launcher known before whose link could not be made this time is still there: kept.
        found |= {uri: launcher for uri, launcher in self.known.items() if launcher.pod_uid in failed}
        for uri, launcher in found.items():
            if uri not in self.known:
                log.info("launcher of pod %s found: %s", launcher.pod_uid, uri)
                self.followed.add(uri)
        for uri, launcher in list(self.known.items()):
            if uri not in found:
                removed = await self.followed.drop(uri, emit)
                forget_link(self.links, launcher.pod_uid)
                log.info("launcher of pod %s gone: %d VMI(s) removed", launcher.pod_uid, removed)
        self.known = found
        LAUNCHERS.set(len(found))

    def close(self) -> None:
        shutil.rmtree(self.links, ignore_errors=True)

    def count_reachable(self) -> None:
        """Launchers whose event connection is up (or, without events, whose last listing worked)."""
        LAUNCHERS_REACHABLE.set(sum(1 for uri in self.known if self.followed.reachable(uri)))
