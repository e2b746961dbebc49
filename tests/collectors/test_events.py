"""libvirt events through a real libvirtd hosting the test driver: lifecycle, and reconnect."""

from __future__ import annotations

import asyncio
import time

import libvirt
import pytest

from collectors.events import DomainEvent, DomainEventWatcher
from tests.conftest import Libvirtd

pytestmark = pytest.mark.integration

DOMAIN = """<domain type='test'><name>default_evented</name>
<metadata><kubevirt:kubevirt xmlns:kubevirt="http://kubevirt.io"><kubevirt:uid>u-1</kubevirt:uid></kubevirt:kubevirt></metadata>
<memory>65536</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>"""


async def wait_for(events: list[DomainEvent], predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate(events):
        assert time.monotonic() < deadline, f"events so far: {events}"
        await asyncio.sleep(0.05)


async def test_lifecycle_events_and_reconnect(libvirtd: Libvirtd) -> None:
    events: list[DomainEvent] = []
    watcher = DomainEventWatcher(libvirtd.uri, events.append)
    task = asyncio.create_task(watcher.run())
    try:
        await wait_for(events, lambda _: watcher.connects == 1)
        # Connected: a listing is asked for (what happened before the callbacks were registered was missed).
        await wait_for(events, lambda found: [e.kind for e in found].count("resync") == 1)
        other = await asyncio.to_thread(libvirt.open, libvirtd.uri)
        dom = other.defineXML(DOMAIN)
        dom.create()
        dom.suspend()
        dom.resume()
        dom.destroy()
        dom.undefine()
        other.close()
        wanted = ["defined", "started", "suspended", "resumed", "stopped", "undefined"]

        def mine(found: list[DomainEvent]) -> list[str]:
            return [e.kind for e in found if e.domain == "default_evented"]

        await wait_for(events, lambda found: mine(found) == wanted)

        libvirtd.stop()  # the daemon goes away and comes back: the watcher reconnects and asks for a resync
        await asyncio.sleep(0.5)
        libvirtd.start()
        await wait_for(events, lambda found: [e.kind for e in found].count("resync") == 2, timeout=30)
        other = await asyncio.to_thread(libvirt.open, libvirtd.uri)
        other.lookupByName("test").suspend()
        other.close()
        await wait_for(events, lambda found: any(e.kind == "suspended" and e.domain == "test" for e in found))
        assert watcher.connects == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
