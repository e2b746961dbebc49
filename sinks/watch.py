"""Watches of GuestInfos: one reader of the store's change log per process, fanned out to every watch.

`ChangeFeed.run` reads the log after its `position` every `interval` seconds, or at once when the
store sink says it wrote (`poke`), and offers each entry to every `Subscription`. A watch that starts
at an older resource version first replays the log from the store up to where the feed stood when
it subscribed, then takes the entries the feed offers after that, so it sees every entry once and in
order. A watch that falls `backlog` entries behind is ended: its client resumes from the last
resource version it saw, as Kubernetes clients do when the apiserver ends a slow watch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field

import orjson

from sinks.guestinfos import selectable_fields
from sinks.selectors import Term, matches
from sinks.store import Store
from sinks.store_changes import ADDED, DELETED, MODIFIED, LogEntry
from sinks.store_listing import ResourceExpired

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """What one watch is sent: `type`, the object bytes (without resourceVersion) and its version."""

    type: str
    body: bytes
    resource_version: int


@dataclass(frozen=True, slots=True)
class WatchFilter:
    """Which objects a watch is about: a namespace (None: all) and field selector terms."""

    namespace: str | None = None
    terms: tuple[Term, ...] = ()

    def event(self, entry: LogEntry) -> WatchEvent | None:
        """The event this watch is sent for `entry`, as Kubernetes' watch cache decides it: an object
        that starts to match is ADDED, one that stops matching is DELETED (with its last state)."""
        if self.namespace is not None and entry.namespace != self.namespace:
            return None
        if not self.terms:
            return WatchEvent(entry.type, entry.body, entry.seq)
        now = entry.type != DELETED and matches(self.terms, selectable_fields(orjson.loads(entry.body)))
        before = entry.prev_body is not None and matches(self.terms, selectable_fields(orjson.loads(entry.prev_body)))
        if now:
            return WatchEvent(MODIFIED if before else ADDED, entry.body, entry.seq)
        if before:
            return WatchEvent(DELETED, entry.prev_body or entry.body, entry.seq)
        return None


@dataclass(eq=False, slots=True)
class Subscription:
    """The entries offered to one watch after `start`, the feed's position when it subscribed."""

    start: int
    backlog: int
    pending: deque[LogEntry] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False
    closed: bool = False

    def offer(self, entry: LogEntry) -> None:
        if self.overflowed or self.closed:
            return
        if len(self.pending) >= self.backlog:
            self.overflowed = True
            self.pending.clear()
        else:
            self.pending.append(entry)
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class WatchEnded(Exception):
    """The watch cannot go on: it fell behind, or (`expired`) the feed lost the log it follows."""

    def __init__(self, message: str, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


class ChangeFeed:
    """The process's one reader of the change log."""

    def __init__(self, store: Store, interval: float = 0.25, batch: int = 1000, backlog: int = 10_000) -> None:
        self.store = store
        self.interval = interval
        self.batch = batch
        self.backlog = backlog
        self.position = -1
        self.started = asyncio.Event()
        self._subscriptions: set[Subscription] = set()
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Read the log now (the store sink wrote a batch)."""
        self._wake.set()

    async def run(self) -> None:
        """Follow the log until cancelled; store failures are logged and retried."""
        while True:
            try:
                await self._read()
            except asyncio.CancelledError:
                raise
            except ResourceExpired as exc:
                log.warning("watch feed: the change log was compacted past the feed (%s); ending all watches", exc)
                for subscription in self._subscriptions:
                    subscription.close()
                self._subscriptions.clear()
                self.started.clear()
                self.position = -1
                continue
            except Exception as exc:
                log.error("watch feed: reading the change log failed: %s", exc)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass

    async def _read(self) -> None:
        if self.position < 0:
            self.position = await self.store.resource_version()
            self.started.set()
        while True:
            newest, entries = await self.store.changes_since(self.position, self.batch)
            for entry in entries:
                for subscription in self._subscriptions:
                    subscription.offer(entry)
                self.position = entry.seq
            if len(entries) < self.batch:
                self.position = max(self.position, newest)
                return

    def subscribe(self) -> Subscription:
        subscription = Subscription(self.position, self.backlog)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)


class Follower:
    """One watch's reader of the log after `after`: replayed from the store up to where the feed stood
    when it subscribed, then what the feed offers. Use `async with`; `next` waits for the next entry."""

    def __init__(self, feed: ChangeFeed, after: int) -> None:
        self.feed = feed
        self.position = after
        self._subscription: Subscription | None = None
        self._replay: deque[LogEntry] = deque()
        self._replaying = True

    async def __aenter__(self) -> Follower:
        await self.feed.started.wait()
        self._subscription = self.feed.subscribe()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._subscription is not None:
            self.feed.unsubscribe(self._subscription)

    async def next(self, timeout: float) -> LogEntry | None:
        """The next entry, or None after `timeout` seconds without one. Raises `ResourceExpired` when
        the log no longer holds what follows `after`, `WatchEnded` when this reader fell too far behind
        or the feed lost the log."""
        subscription = self._subscription
        assert subscription is not None, "use Follower with async with"
        while self._replaying:
            if self._replay:
                return self._took(self._replay.popleft())
            if self.position >= subscription.start:
                self._replaying = False
                break
            _, entries = await self.feed.store.changes_since(self.position, self.feed.batch)
            self._replay.extend(entry for entry in entries if entry.seq <= subscription.start)
            if not self._replay:
                self._replaying = False
        while True:
            while subscription.pending:
                entry = subscription.pending.popleft()
                if entry.seq > self.position:
                    return self._took(entry)
            if subscription.overflowed:
                raise WatchEnded(f"the watch fell {self.feed.backlog} events behind")
            if subscription.closed:
                raise WatchEnded("too old resource version: the change log was compacted past this server", True)
            subscription.wake.clear()
            try:
                await asyncio.wait_for(subscription.wake.wait(), timeout)
            except TimeoutError:
                return None

    def _took(self, entry: LogEntry) -> LogEntry:
        self.position = entry.seq
        return entry

    @property
    def caught_up(self) -> int | None:
        """The resource version a bookmark may carry now (every entry up to it was taken), or None
        while entries are still waiting."""
        subscription = self._subscription
        if self._replaying or subscription is None or subscription.pending:
            return None
        if subscription.overflowed or subscription.closed:
            return None  # entries were dropped: the next `next` ends the watch
        return max(self.feed.position, self.position)
