"""Two serve replicas sharing one PostgreSQL, on three brokers.

The replicas share the merged topic's partitions (one consumer group) and one store. One is killed with
SIGKILL while guest data changes: the other takes its partitions, and `kubectl get gi -w` on the
survivor sees every VMI's last change, no state twice or out of order. A list's resourceVersion then
continues a watch on either replica (the one started again, and the survivor) with the same changes.
Figures are printed (`-s`).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiohttp
import pytest

from guestinfo.broker import free_port
from tests import tools
from tests.faults.harness import GI, ApiWatch, Guests, Stage, join_worker, serve, stop_all, three_brokers

pytestmark = pytest.mark.integration

NAMESPACE = "replicas"
VMIS = [f"vm-{i:02d}" for i in range(20)]


class KubectlWatch:
    """`kubectl get gi -w` on one replica: (name, change number, resourceVersion) per line. A state
    without a hostname yet (the domain report came first) is change -1, as in `ApiWatch`."""

    def __init__(self, port: int, home: Path) -> None:
        self.port = port
        self.home = home
        self.lines: list[tuple[str, int, str]] = []
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> KubectlWatch:
        self._process = await asyncio.create_subprocess_exec(
            tools.kubectl(), "--server", f"http://127.0.0.1:{self.port}", "--cache-dir", str(self.home / "cache"),
            "get", "guestinfos.guestinfo.kubevirt.io", "-n", NAMESPACE, "-w", "-o",
            "jsonpath={.metadata.name}|{.status.hostname}|{.metadata.resourceVersion}{\"\\n\"}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for raw in self._process.stdout:
            name, hostname, version = raw.decode().strip().split("|")
            self.lines.append((name, int(hostname[1:]) if hostname else -1, version))

    async def __aexit__(self, *_: object) -> None:
        assert self._process is not None and self._task is not None
        if self._process.returncode is None:
            self._process.kill()
        await self._process.wait()
        await asyncio.gather(self._task, return_exceptions=True)

    def seen(self, name: str) -> list[int]:
        return [change for line_name, change, _ in self.lines if line_name == name]

    async def until_seen(self, finals: dict[str, int], timeout: float) -> float:
        started = time.monotonic()
        while any(self.seen(name)[-1:] != [last] for name, last in finals.items()):
            assert self._process is not None and self._task is not None
            if self._task.done():  # a line it could not read ends the reader: say which
                self._task.result()
            if self._process.returncode is not None:
                assert self._process.stderr is not None
                pytest.fail(f"kubectl get -w ended: {(await self._process.stderr.read()).decode()[-2000:]}")
            missing = {name: (self.seen(name)[-1:], last) for name, last in finals.items()
                       if self.seen(name)[-1:] != [last]}
            assert time.monotonic() - started < timeout, f"not seen by kubectl after {timeout:.0f}s: {missing}"
            await asyncio.sleep(0.1)
        return time.monotonic() - started


def store_partitions(replica: Stage) -> list[int]:
    """The merged-topic partitions of the replica's latest assignment."""
    found = re.findall(r"guestinfo-store: partitions \[([\d, ]*)\] of guestinfo\.vmi\.v1", replica.text())
    return [int(p) for p in found[-1].split(",") if p.strip()] if found else []


async def until_assigned(replica: Stage, count: int, timeout: float = 60.0) -> list[int]:
    started = time.monotonic()
    while len(store_partitions(replica)) != count:
        assert replica.alive(), replica.text()[-3000:]
        assert time.monotonic() - started < timeout, f"{replica.name}: {store_partitions(replica)}, not {count}"
        await asyncio.sleep(0.2)
    return store_partitions(replica)


async def test_a_replica_killed_leaves_its_partitions_and_watchers_lose_nothing(
    tmp_path: Path, shared_store: str
) -> None:
    async with three_brokers() as cluster:
        bootstrap = cluster.bootstrap_servers
        ports = [free_port(), free_port()]
        join = join_worker(tmp_path, bootstrap)
        first = serve(tmp_path, bootstrap, ports[0], shared_store, name="serve-a")
        second = serve(tmp_path, bootstrap, ports[1], shared_store, name="serve-b")
        again: Stage | None = None
        try:
            for stage in (first, second):
                await stage.until_logged(r"API listening on")
            shares = [await until_assigned(first, 2), await until_assigned(second, 2)]
            async with KubectlWatch(ports[1], tmp_path) as kubectl, \
                    Guests(bootstrap, NAMESPACE, VMIS) as guests:
                await kubectl.until_seen(dict(guests.changes), timeout=60)
                done = asyncio.Event()
                load = [asyncio.create_task(guests.keep_changing(name, 0.5, done)) for name in VMIS]
                await asyncio.sleep(3)
                first.kill()
                killed_at = time.monotonic()
                await until_assigned(second, 4)
                took_over = time.monotonic() - killed_at
                await asyncio.sleep(5)
                done.set()
                await asyncio.gather(*load)
                settled = await kubectl.until_seen(dict(guests.changes), timeout=60)
                for name in VMIS:
                    seen = kubectl.seen(name)
                    assert seen == sorted(set(seen)), f"{name}: kubectl saw {seen}"

                # A list on the survivor, then changes, watched from the list's version on both replicas.
                async with aiohttp.ClientSession() as session, \
                        session.get(f"http://127.0.0.1:{ports[1]}{GI}/namespaces/{NAMESPACE}/guestinfos") as response:
                    version = (await response.json())["metadata"]["resourceVersion"]
                again = serve(tmp_path, bootstrap, ports[0], shared_store, name="serve-a2")
                await again.until_logged(r"API listening on")
                async with ApiWatch(ports[0], NAMESPACE, version) as on_restarted, \
                        ApiWatch(ports[1], NAMESPACE, version) as on_survivor:
                    await guests.change(VMIS[:5])
                    finals = {name: guests.changes[name] for name in VMIS[:5]}
                    for watch in (on_restarted, on_survivor):
                        await watch.until_seen(finals, timeout=30)
                        watch.assert_in_order_once()
                    assert on_restarted.events == on_survivor.events, "both replicas continue the list alike"
            print(f"\nshares {shares}; replica a killed: replica b had all 4 partitions {took_over:.1f}s later; "
                  f"kubectl on b saw every VMI at its last change {settled:.1f}s after the load stopped "
                  f"({len(kubectl.lines)} lines, none twice or out of order); a watch from list version {version} "
                  f"saw the same {len(on_survivor.events)} events on both replicas")
        finally:
            logs = stop_all(second, again, join)
            first.stop()  # killed: its log may end anywhere
        assert "Traceback" not in logs, logs[-3000:]
