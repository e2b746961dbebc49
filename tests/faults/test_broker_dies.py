"""A broker dies under load (three brokers, replication 3, min.insync.replicas 2).

The broker that leads the raw partition of a busy VMI is killed with SIGKILL while that VMI's guest
data changes ten times a second and twenty others' once a second. Every acknowledged record stays in
its topic, every VMI's last change reaches the API, the merged topic and the store lose no revision,
and the API's watch never shows a state twice or out of order. Then the broker is started again: it
catches up, and the changes after it are shown once each. Figures are printed (`-s`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from guestinfo.broker import free_port
from schemas.topics import AGENT_TOPIC
from tests.faults.harness import (
    ApiWatch,
    Guests,
    assert_acked_records_kept,
    assert_nothing_lost,
    join_worker,
    leader_of,
    serve,
    stop_all,
    three_brokers,
    until_in_sync,
)

pytestmark = pytest.mark.integration

NAMESPACE = "faults"
BUSY = "busy"
OTHERS = [f"vm-{i:02d}" for i in range(20)]


async def test_a_broker_killed_under_load_loses_nothing_and_catches_up(tmp_path: Path) -> None:
    async with three_brokers() as cluster:
        bootstrap = cluster.bootstrap_servers
        port = free_port()
        join = join_worker(tmp_path, bootstrap)
        api = serve(tmp_path, bootstrap, port, f"sqlite://{tmp_path / 'store.db'}")
        try:
            await join.until_logged(r"ready: raw partitions \[\d")
            await api.until_logged(r"API listening on")
            async with ApiWatch(port, NAMESPACE) as watch, Guests(bootstrap, NAMESPACE, [BUSY, *OTHERS]) as guests:
                await watch.until_seen(dict(guests.changes), timeout=60)
                [busy_partition] = {partition for (topic, partition, _), (key, _) in guests.acked.items()
                                    if topic == AGENT_TOPIC and key == f"{NAMESPACE}/{BUSY}"}
                victim = await leader_of(bootstrap, AGENT_TOPIC, busy_partition)

                done = asyncio.Event()
                load = [asyncio.create_task(guests.keep_changing(BUSY, 0.1, done)),
                        *(asyncio.create_task(guests.keep_changing(name, 1.0, done)) for name in OTHERS)]
                await asyncio.sleep(3)
                before = guests.changes[BUSY]
                cluster.kill(victim)
                killed_at = time.monotonic()
                while not [c for c in watch.seen(BUSY) if c > before]:  # the first change after the kill
                    assert time.monotonic() - killed_at < 60, (
                        f"no change reached the API within 60 s of the kill: {BUSY} changed to "
                        f"{guests.changes[BUSY]}, the API at {watch.seen(BUSY)[-1:]}\njoin:\n{join.text()[-2500:]}"
                        f"\nserve:\n{api.text()[-1500:]}")
                    await asyncio.sleep(0.05)
                recovered = time.monotonic() - killed_at
                await asyncio.sleep(8)
                done.set()
                await asyncio.gather(*load)
                settled = await watch.until_seen(dict(guests.changes), timeout=60)

                await assert_acked_records_kept(guests)
                events, merged = await assert_nothing_lost(guests)
                watch.assert_in_order_once()
                assert api.alive() and join.alive()

                restarted_at = time.monotonic()
                await cluster.restart(victim)
                await until_in_sync(bootstrap, 3)
                caught_up = time.monotonic() - restarted_at
                after = guests.changes[BUSY]
                for _ in range(10):
                    await guests.change([BUSY])
                    await asyncio.sleep(0.1)
                await watch.until_seen(dict(guests.changes), timeout=30)
                watch.assert_in_order_once()
                assert [c for c in watch.seen(BUSY) if c > after][-1] == guests.changes[BUSY]
                await assert_nothing_lost(guests)
            print(f"\nbroker {victim} (leader of {AGENT_TOPIC}[{busy_partition}]) killed after change {before} "
                  f"of {BUSY}: the next change at the API {recovered:.1f}s after the kill; slowest "
                  f"acknowledgement {guests.slowest:.1f}s; all {len(guests.changes)} VMIs at their last change "
                  f"{settled:.1f}s after the load stopped; {len(guests.acked)} acknowledged records kept, "
                  f"{events} changes told once each, {merged} merged records in order; the broker back in "
                  f"sync {caught_up:.1f}s after its restart; {len(watch.seen(BUSY))} states of {BUSY} at the API, "
                  f"none twice")
        finally:
            logs = stop_all(api, join)
        assert "Traceback" not in logs, logs[-3000:]
