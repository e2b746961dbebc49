"""Publishing only what changed, a bounded buffer while Kafka is away, and full resyncs.

`ChangeTracker` turns the collector's raw reports into the reports worth publishing:

- an `AgentReport` carries only the agent fields whose normalised value changed since the state
  already handed over for the same session (the others are null, which the join reads as "keep");
  the first report of a session carries everything it has; a report where nothing changed (fields,
  `connected`, `errors`) is not published at all;
- a `DomainReport` is published only when its content (all but `observed_at`) changed; removals always;
- every VMI's full state is published again every `resync_interval` seconds (jittered per VMI), so a
  lost record heals by itself.

"Handed over" is the state once the `Outbox` is delivered: the outbox never drops a change, it merges
a newer state of a VMI into the older one (one entry per VMI, removals kept until sent), so the buffer
is bounded by the VMIs of the node however long Kafka is away. `StatePublisher` drains it on a task of
its own; after a failed delivery it retries with a capped, doubling back-off, and once Kafka answers
again it republishes the full state of every VMI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from pydantic import BaseModel

from collectors.agent_replies import CONVERTERS
from collectors.metrics import BUFFERED_VMIS, FULL_RESYNCS, REPORTS_UNCHANGED
from collectors.publisher import Report, publish, start_producer
from collectors.reports import TickReports
from plumbing.backoff import Backoff
from plumbing.kafka import stop_producer
from schemas.events import AgentReport, DomainReport

log = logging.getLogger(__name__)

#: The data fields of an `AgentReport`, one per polled command.
AGENT_FIELDS: tuple[str, ...] = tuple(field_name for field_name, _ in CONVERTERS.values())
#: Pauses after failed publications in a row: doubling from the first to the most.
RETRY_FIRST, RETRY_MOST = 0.5, 30.0
#: A publication that has not completed by then is given up (and the producer restarted).
PUBLISH_DEADLINE = 15.0


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):  # the order an agent lists things in is no change
        items = [_plain(item) for item in value]
        return sorted(items, key=lambda item: orjson.dumps(item, option=orjson.OPT_SORT_KEYS))
    return value


def normalised(value: Any) -> bytes:
    """A value as compared for changes: JSON with sorted keys, lists in a canonical order."""
    return orjson.dumps(_plain(value), option=orjson.OPT_SORT_KEYS)


def same_domain_content(older: DomainReport, newer: DomainReport) -> bool:
    """The two reports say the same (all but when they were observed), compared field by field as models."""
    when = {"observed_at": 0.0, "order": None}
    return {**older.__dict__, **when} == {**newer.__dict__, **when}


def merge_agent(older: AgentReport, newer: AgentReport) -> AgentReport:
    """One report saying what both say (the newer wins); of another session, the newer alone."""
    if older.session != newer.session:
        return newer
    kept = {name: getattr(older, name) for name in AGENT_FIELDS
            if getattr(newer, name) is None and getattr(older, name) is not None}
    return newer.model_copy(update=kept) if kept else newer


class ChangeTracker:
    """The state handed over per VMI, and what of a new report differs from it."""

    def __init__(
        self, resync_interval: float, *, jitter: float = 0.1, rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resync_interval = resync_interval
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._clock = clock
        self._domains: dict[str, DomainReport] = {}
        #: The whole state of the current session: every field the agent answered in it, latest first.
        self._agents: dict[str, AgentReport] = {}
        #: `normalised` of the fields of `_agents` compared so far (each is encoded once per change).
        self._normal: dict[str, dict[str, bytes]] = {}
        self._resync_at: dict[str, float] = {}

    def changes(self, reports: TickReports) -> TickReports:
        out = TickReports()
        for domain in reports.domains:
            key = domain.vmi.key
            if domain.removed:
                self._domains.pop(key, None)
                self._agents.pop(key, None)
                self._normal.pop(key, None)
                self._resync_at.pop(key, None)
                out.domains.append(domain)
                continue
            previous = self._domains.get(key)
            self._domains[key] = domain
            if key not in self._resync_at:  # the first resync at a random point: VMIs drift apart
                self._resync_at[key] = self._clock() + self.resync_interval * self._rng.uniform(0.5, 1 + self.jitter)
            if previous is None or not same_domain_content(previous, domain):
                out.domains.append(domain)
            else:
                REPORTS_UNCHANGED.labels("domain").inc()
        removed = {domain.vmi.key for domain in reports.domains if domain.removed}
        for agent in reports.agents:
            if agent.vmi.key in removed:
                continue  # the VMI is gone in this very batch: its agent has nothing left to say
            delta = self._agent_delta(agent)
            if delta is None:
                REPORTS_UNCHANGED.labels("agent").inc()
            else:
                out.agents.append(delta)
        return out

    def _agent_delta(self, report: AgentReport) -> AgentReport | None:
        key = report.vmi.key
        known = self._agents.get(key)
        if known is None or known.session != report.session:
            self._agents[key] = report  # a new session: what came before is void, this is all it has
            self._normal[key] = {}
            return report
        unchanged: dict[str, Any] = {}
        changed = report.connected != known.connected or report.errors != known.errors
        known_normal = self._normal.setdefault(key, {})
        for name in AGENT_FIELDS:
            value = getattr(report, name)
            if value is None:
                continue
            before = known_normal.get(name)
            if before is None:
                before = normalised(getattr(known, name))
            now = known_normal[name] = normalised(value)  # the merged state holds this value from here on
            if now == before:
                unchanged[name] = None
            else:
                changed = True
        self._agents[key] = merge_agent(known, report)
        if not changed:
            return None
        return report.model_copy(update=unchanged) if unchanged else report

    def full(self, keys: list[str] | None = None) -> TickReports:
        """The whole state handed over of `keys` (default: every VMI)."""
        chosen = list(self._domains) if keys is None else keys
        return TickReports(
            domains=[self._domains[key] for key in chosen if key in self._domains],
            agents=[self._agents[key] for key in chosen if key in self._agents],
        )

    def due_resyncs(self) -> TickReports:
        """The full state of the VMIs whose resync is due (each next due a jittered interval later)."""
        now = self._clock()
        due = [key for key, at in self._resync_at.items() if at <= now]
        for key in due:
            self._resync_at[key] = now + self.resync_interval * self._rng.uniform(1 - self.jitter, 1 + self.jitter)
        if due:
            FULL_RESYNCS.labels("periodic").inc(len(due))
            log.debug("full resync of %d VMI(s)", len(due))
        return self.full(due)

    def next_resync(self) -> float:
        return min(self._resync_at.values(), default=float("inf"))


class Outbox:
    """The latest unpublished state of each VMI: at most one domain and one agent report per VMI."""

    def __init__(self) -> None:
        self.domains: dict[str, DomainReport] = {}
        self.agents: dict[str, AgentReport] = {}

    def __len__(self) -> int:
        return len(self.domains.keys() | self.agents.keys())

    def put(self, reports: TickReports) -> None:
        """Newer reports: they replace (domains) or merge over (agents) what waits of the same VMI."""
        for domain in reports.domains:
            key = domain.vmi.key
            self.domains[key] = domain  # a live report voids a pending removal, and a removal all before it
            if domain.removed:
                self.agents.pop(key, None)
        for agent in reports.agents:
            key = agent.vmi.key
            waiting = self.agents.get(key)
            self.agents[key] = agent if waiting is None else merge_agent(waiting, agent)
        BUFFERED_VMIS.set(len(self))

    def put_back(self, failed: list[Report]) -> None:
        """Reports that were not delivered: older than anything put since, so they go under it."""
        for report in failed:
            key = report.vmi.key
            if isinstance(report, DomainReport):
                self.domains.setdefault(key, report)
                continue
            waiting = self.agents.get(key)
            pending_domain = self.domains.get(key)
            if waiting is not None:
                self.agents[key] = merge_agent(report, waiting)
            elif pending_domain is None or not pending_domain.removed:
                self.agents[key] = report
        BUFFERED_VMIS.set(len(self))

    def take(self) -> TickReports:
        taken = TickReports(domains=list(self.domains.values()), agents=list(self.agents.values()))
        self.domains, self.agents = {}, {}
        return taken


class StatePublisher:
    """Hands the collector's reports to Kafka: changes only, buffered per VMI while Kafka is away.

    `send` (the collector's `Emit`) never waits for Kafka; `run` (a task) does the publishing.
    """

    def __init__(
        self, bootstrap_servers: str, *, resync_interval: float, jitter: float = 0.1,
        producer_factory: Callable[[str], Awaitable[Any]] = start_producer,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.tracker = ChangeTracker(resync_interval, jitter=jitter)
        self.outbox = Outbox()
        self._factory = producer_factory
        self._ready = asyncio.Event()
        self._failing = False

    @property
    def failing(self) -> bool:
        """Publishing fails at the moment (the state waits in the outbox)."""
        return self._failing

    async def send(self, reports: TickReports) -> None:
        self.offer(reports)

    def offer(self, reports: TickReports) -> None:
        changes = self.tracker.changes(reports)
        if changes.domains or changes.agents:
            self.outbox.put(changes)
            self._ready.set()

    def resync_due(self) -> None:
        """Queue the full state of the VMIs whose periodic resync is due."""
        due = self.tracker.due_resyncs()
        if due.domains or due.agents:
            self.outbox.put(due)
            self._ready.set()

    async def run(self) -> None:
        """Publish whatever waits, until cancelled."""
        producer: Any = None
        backoff = Backoff(RETRY_FIRST, RETRY_MOST)
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                if producer is None:
                    producer = await self._start_producer()
                    if producer is None:
                        await self._failed(backoff.next())
                        continue
                batch = self.outbox.take()
                BUFFERED_VMIS.set(len(self.outbox))
                try:
                    async with asyncio.timeout(PUBLISH_DEADLINE):
                        failed = await publish(producer, batch.domains, batch.agents)
                except TimeoutError:
                    log.warning("publishing to Kafka at %s timed out after %.0fs", self.bootstrap_servers,
                                PUBLISH_DEADLINE)
                    failed = [*batch.domains, *batch.agents]
                except Exception as exc:  # whatever fails here, the state waits and publishing goes on
                    log.warning("publishing to Kafka at %s failed: %s: %s", self.bootstrap_servers,
                                type(exc).__name__, exc)
                    failed = [*batch.domains, *batch.agents]
                if failed:
                    # A producer that lost its broker may not find it again by itself: give it up and
                    # start a fresh one once Kafka answers; the reports wait in the outbox.
                    stale, producer = producer, None
                    with contextlib.suppress(Exception):
                        await stop_producer(stale)  # what it holds waits in the outbox
                    self.outbox.put_back(failed)
                    await self._failed(backoff.next())
                    continue
                backoff.reset()
                if self._failing:
                    self._failing = False
                    everything = self.tracker.full()
                    FULL_RESYNCS.labels("reconnect").inc(len(everything.domains))
                    log.info("Kafka at %s reachable again: republishing the state of %d VMI(s)",
                             self.bootstrap_servers, len(everything.domains))
                    self.outbox.put(everything)
                    self._ready.set()
        finally:
            if producer is not None:
                await stop_producer(producer)

    async def _start_producer(self) -> Any:
        try:
            producer = await self._factory(self.bootstrap_servers)
        except KafkaError as exc:
            log.warning("cannot reach Kafka at %s: %s", self.bootstrap_servers, exc)
            return None
        log.info("connected to Kafka at %s", self.bootstrap_servers)
        return producer

    async def _failed(self, delay: float) -> None:
        if not self._failing:
            log.warning("publishing to Kafka at %s fails: keeping the latest state of each VMI (%d now) until it "
                        "works again", self.bootstrap_servers, len(self.outbox))
        self._failing = True
        await asyncio.sleep(delay)
        self._ready.set()
