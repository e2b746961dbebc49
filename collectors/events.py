"""libvirt events of one node: libvirt's default event loop on a thread of its own, handed to asyncio.

`DomainEventWatcher` keeps a connection to one libvirt URI open, registers for domain lifecycle
(defined, undefined, started, suspended, resumed, stopped, migrated …), reboot and guest-agent
lifecycle events, and hands each one as a `DomainEvent` to a callback on the event loop. When the
connection drops (the daemon restarted, the socket went away) it reconnects with a capped, doubling
backoff and says so in the log; the callback then gets a `resync` event, because events may have been
missed while it was away.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import libvirt

from plumbing.backoff import Backoff

log = logging.getLogger(__name__)

EventKind = Literal[
    "defined", "undefined", "started", "suspended", "resumed", "stopped", "shutdown", "pmsuspended",
    "crashed", "rebooted", "agent-connected", "agent-disconnected", "resync",
]

#: VIR_DOMAIN_EVENT_* lifecycle codes (libvirt's virDomainEventType) by name.
_LIFECYCLE: dict[int, EventKind] = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
#: After a lost connection, the first retry waits this long; each failure doubles it up to the cap.
RECONNECT_FIRST, RECONNECT_MOST = 0.5, 30.0


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """One thing that happened to a domain of `uri` (`domain` is "" for `resync`).

    `detail` is libvirt's detail code (e.g. a STARTED detail of MIGRATED marks a migration's target).
    """

    uri: str
    domain: str
    kind: EventKind
    detail: int = 0


@functools.cache
def start_libvirt_events() -> threading.Thread:
    """Run libvirt's own event loop (thread-safe, unlike an asyncio one driven from several threads) in a
    daemon thread, started once per process: libvirt holds one event implementation per process. Its
    callbacks run on that thread; watchers hop them over to their own loop."""
    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
    thread.start()
    return thread


def _release(conn: libvirt.virConnect, callbacks: list[int]) -> None:
    """Deregister and close (blocking RPCs: run in a thread, never on the event loop)."""
    for callback_id in callbacks:
        try:
            conn.domainEventDeregisterAny(callback_id)
        except libvirt.libvirtError:
            pass
    try:
        conn.unregisterCloseCallback()
        conn.close()
    except libvirt.libvirtError:
        pass


class DomainEventWatcher:
    """Watches one libvirt URI and calls `on_event` for every domain event, until cancelled."""

    def __init__(self, uri: str, on_event: Callable[[DomainEvent], None]) -> None:
        self.uri = uri
        self.on_event = on_event
        self.connects = 0
        self._closed = asyncio.Event()
        self._connection: libvirt.virConnect | None = None

    @property
    def connected(self) -> bool:
        """Whether events are watched right now (connected, and the connection not found closed)."""
        return self._connection is not None and not self._closed.is_set()

    async def run(self) -> None:
        start_libvirt_events()
        backoff = Backoff(RECONNECT_FIRST, RECONNECT_MOST)
        while True:
            try:
                conn = await asyncio.to_thread(libvirt.open, self.uri)
            except libvirt.libvirtError as exc:
                pause = backoff.next()
                log.warning(
                    "libvirt events: cannot connect to %s (attempt #%d, again in %.1fs): %s",
                    self.uri, backoff.failures, pause, exc,
                )
                await asyncio.sleep(pause)
                continue
            backoff.reset()
            await self._watch(conn)

    async def _watch(self, conn: libvirt.virConnect) -> None:
        self._closed.clear()
        loop = asyncio.get_running_loop()
        callbacks = self._register(conn, loop)
        self._connection = conn
        self.connects += 1
        if self.connects > 1:
            log.info("libvirt events: reconnected to %s", self.uri)
        else:
            log.info("libvirt events: watching %s", self.uri)
        # What happened before the callbacks were registered (while disconnected, or, the first time,
        # between the collector's first listing and now) was not seen: the URI is listed again.
        self.on_event(DomainEvent(self.uri, "", "resync"))
        try:
            await self._closed.wait()
            log.warning("libvirt events: connection to %s lost; reconnecting", self.uri)
        finally:
            self._connection = None
            await asyncio.to_thread(_release, conn, callbacks)

    def _register(self, conn: libvirt.virConnect, loop: asyncio.AbstractEventLoop) -> list[int]:
        def emit(event: DomainEvent) -> None:  # called on libvirt's event thread
            loop.call_soon_threadsafe(self.on_event, event)

        def lifecycle(_conn: Any, dom: libvirt.virDomain, event: int, detail: int, _opaque: Any) -> None:
            kind = _LIFECYCLE.get(event)
            if kind is not None:
                emit(DomainEvent(self.uri, dom.name(), kind, detail))

        def reboot(_conn: Any, dom: libvirt.virDomain, _opaque: Any) -> None:
            emit(DomainEvent(self.uri, dom.name(), "rebooted"))

        def agent(_conn: Any, dom: libvirt.virDomain, state: int, reason: int, _opaque: Any) -> None:
            connected = state == libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED
            emit(DomainEvent(self.uri, dom.name(), "agent-connected" if connected else "agent-disconnected", reason))

        def closed(_conn: Any, reason: int, _opaque: Any) -> None:
            loop.call_soon_threadsafe(self._closed.set)

        conn.registerCloseCallback(closed, None)
        ids = [
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle, None),
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, reboot, None),
        ]
        try:
            ids.append(conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, agent, None))
        except libvirt.libvirtError as exc:  # drivers without agents (the test driver) may not offer it
            log.debug("libvirt events: no agent lifecycle events on %s: %s", self.uri, exc)
        return ids
