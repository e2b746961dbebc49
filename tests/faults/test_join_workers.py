"""Two join workers share the work (one consumer group) and survive each other, on three brokers.

Each worker gets about half of the raw partitions. One is killed with SIGKILL while guest data changes;
the other takes its partitions over with their table states (from the changelog: memory and RocksDB
table stores both) and every VMI's last change reaches the API. A worker started later takes partitions
back, again with nothing lost: every change made a revision of its own, told as a change event, and the
merged topic misses no revision (the survivor may send the killed worker's last outputs again). At the
API no state is shown twice or older than one shown before.
Figures are printed (`-s`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from guestinfo.broker import free_port
from schemas.topics import PARTITIONS
from tests.faults.harness import (
    ApiWatch,
    Guests,
    assert_acked_records_kept,
    assert_nothing_lost,
    assigned_partitions,
    join_worker,
    serve,
    stop_all,
    three_brokers,
)

pytestmark = pytest.mark.integration

NAMESPACE = "workers"
VMIS = [f"vm-{i:02d}" for i in range(40)]


@pytest.mark.parametrize("table_store", ["memory", "rocksdb"])
async def test_a_worker_killed_mid_stream_leaves_its_partitions_and_states_to_the_other(
    tmp_path: Path, table_store: str
) -> None:
    async with three_brokers() as cluster:
        bootstrap = cluster.bootstrap_servers
        port = free_port()
        api = serve(tmp_path, bootstrap, port, f"sqlite://{tmp_path / 'store.db'}")
        first = join_worker(tmp_path, bootstrap, "join-a", table_store=table_store)
        second = third = None
        try:
            await assigned_partitions(first)
            await api.until_logged(r"API listening on")
            async with ApiWatch(port, NAMESPACE) as watch, Guests(bootstrap, NAMESPACE, VMIS) as guests:
                await watch.until_seen(dict(guests.changes), timeout=60)  # every state is in worker a's table
                mark = len(first.text())
                second = join_worker(tmp_path, bootstrap, "join-b", table_store=table_store)
                shares = sorted([await assigned_partitions(first, after=mark), await assigned_partitions(second)])
                assert sorted(p for share in shares for p in share) == list(range(PARTITIONS))
                assert [len(share) for share in shares] == [PARTITIONS // 2] * 2, f"not about half each: {shares}"

                done = asyncio.Event()
                load = [asyncio.create_task(guests.keep_changing(name, 0.5, done)) for name in VMIS]
                await asyncio.sleep(4)
                mark = len(second.text())
                first.kill()
                killed_at = time.monotonic()
                taken = await assigned_partitions(second, after=mark, timeout=60)
                took_over = time.monotonic() - killed_at
                assert taken == list(range(PARTITIONS))
                await asyncio.sleep(4)

                mark = len(second.text())
                third = join_worker(tmp_path, bootstrap, "join-c", table_store=table_store)
                given = await assigned_partitions(third)
                kept = await assigned_partitions(second, after=mark)
                assert sorted(given + kept) == list(range(PARTITIONS)) and given, (given, kept)
                await asyncio.sleep(4)
                done.set()
                await asyncio.gather(*load)
                settled = await watch.until_seen(dict(guests.changes), timeout=90)

                await assert_acked_records_kept(guests)
                watch.assert_in_order_once()
                events, merged = await assert_nothing_lost(guests, replays_allowed=True)
            assert second.alive() and third.alive() and api.alive()
            print(f"\n[{table_store}] shares {shares}; worker a killed: worker b had all {PARTITIONS} partitions "
                  f"{took_over:.1f}s later; worker c then took {given}, b kept {kept}; every VMI at its last "
                  f"change {settled:.1f}s after the load stopped; {sum(guests.changes.values())} changes, every one "
                  f"told: {events} change events (replays included), {merged} merged records; "
                  f"{len(watch.events)} states at the API, none twice or out of order")
        finally:
            logs = stop_all(api, second, third)
            first.stop()  # killed: its log may end anywhere
        assert "Traceback" not in logs, logs[-3000:]
