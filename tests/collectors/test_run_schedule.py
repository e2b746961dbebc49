"""The collector loop polls every agent command at its own interval, whatever the listing period.

Found on real parts (issue 8): on a libvirt with events, agents were polled once per relist (60 s)
instead of users every 10 s and the freeze status every 5 s, because a poll's end did not wake the
scheduler, asleep until the next listing. Both kinds of connection are run here with a listing
period far longer than the intervals, and the calls per command are counted over a window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest

from collectors import CollectorConfig, run_collector
from guestinfo.broker import ensure_topics
from guestinfo.engines import Broker
from tests.collectors.fake_agent import Answer, fake_agent
from tests.collectors.test_node import healthy_script, write_domains
from tests.collectors.test_run_events import kubevirt_domain
from tests.conftest import Libvirtd

pytestmark = pytest.mark.integration

#: Scaled-down intervals (upstream: freeze status 5 s, users 10 s; the others minutes), no jitter, and a
#: 1 s warm-up: the freeze status is due every 1 s from the start, users after 1 s, then every 2 s.
INTERVALS = {"guest-fsfreeze-status": 1.0, "guest-get-users": 2.0}
WARMUP = 1.0
#: Listings far apart: only the scheduler's own wake-ups can keep the intervals.
LISTING = 60.0
#: Counted after the warm-up, over this many seconds.
SETTLE, WINDOW = 3.0, 8.0


def recording(calls: list[tuple[float, str]]) -> Callable[[dict[str, Any]], Answer]:
    loop = asyncio.get_running_loop()

    def script(request: dict[str, Any]) -> Answer:
        calls.append((loop.time(), request["execute"]))
        return healthy_script(request)

    return script


@contextlib.asynccontextmanager
async def collecting(bootstrap: str, uri: str, sockets: Path) -> AsyncIterator[None]:
    config = CollectorConfig(
        bootstrap_servers=bootstrap, libvirt_uris=[uri], node_name="schedule", agent_socket_dir=str(sockets),
        interval=LISTING, relist_interval=LISTING, poll_intervals=INTERVALS, poll_warmup=WARMUP, jitter=0.0,
    )
    task = asyncio.create_task(run_collector(config))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def count_calls(calls: list[tuple[float, str]]) -> dict[str, int]:
    """Calls per command in the window that starts `SETTLE` seconds after the first call."""
    loop = asyncio.get_running_loop()
    for _ in range(200):
        if calls:
            break
        await asyncio.sleep(0.05)
    assert calls, "the agent was never polled"
    start = calls[0][0] + SETTLE
    await asyncio.sleep(max(0.0, start + WINDOW - loop.time()))
    counts: dict[str, int] = {}
    for at, command in calls:
        if start <= at < start + WINDOW:
            counts[command] = counts.get(command, 0) + 1
    return counts


def assert_at_their_intervals(counts: dict[str, int]) -> None:
    """About WINDOW / interval calls of each (a poll's own duration stretches a period a little)."""
    for command, interval in INTERVALS.items():
        want = WINDOW / interval
        assert 0.75 * want <= counts.get(command, 0) <= want + 1, (command, counts)
    # 120 s by default, still warming up: asked at 0, 1, 3, 7, 15 s ... after the first poll.
    assert 1 <= counts.get("guest-get-osinfo", 0) <= 2, counts


async def test_polls_keep_their_intervals_on_a_libvirt_with_events(
    broker: Broker, libvirtd: Libvirtd, tmp_path: Path
) -> None:
    await ensure_topics(broker.bootstrap_servers)
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    calls: list[tuple[float, str]] = []
    conn = await asyncio.to_thread(libvirt.open, libvirtd.uri)
    try:
        async with fake_agent(sockets / "default_vm.sock", recording(calls)):
            async with collecting(broker.bootstrap_servers, libvirtd.uri, sockets):
                await asyncio.sleep(1.0)  # the watcher is up: the domain is found through its events
                await asyncio.to_thread(lambda: conn.defineXML(kubevirt_domain("vm")).create())
                counts = await count_calls(calls)
    finally:
        conn.close()
    assert_at_their_intervals(counts)


async def test_polls_keep_their_intervals_on_a_libvirt_without_events(broker: Broker, tmp_path: Path) -> None:
    await ensure_topics(broker.bootstrap_servers)
    uri = write_domains(tmp_path / "node.xml", ["vm"])
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    calls: list[tuple[float, str]] = []
    async with fake_agent(sockets / "default_vm.sock", recording(calls)):
        async with collecting(broker.bootstrap_servers, uri, sockets):
            counts = await count_calls(calls)
    assert_at_their_intervals(counts)
