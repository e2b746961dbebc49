"""The whole pipeline restarted in rolling order under load, on three brokers: the join, then the
collector, then the two serve replicas one after the other (the README's upgrade order).

A real collector (`guestinfo collect`) reads a libvirt test-driver node whose ten guests' agents (scripted)
change their hostname every second. Readers ask the API all along, on whichever replica answers. No read
answers 5xx, the API ends at every guest's last hostname, and the change events tell the changes in the
order they were made, none twice but for the replays a restart may send. (While the collector is down
changes are not observed: it reports each guest's latest on its return.) Figures are printed (`-s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from guestinfo.broker import free_port
from tests.collectors.fake_agent import fake_agent
from tests.e2e.test_change_events import Guest
from tests.e2e.test_hostile_corpus import node_xml
from tests.faults.harness import (
    Stage,
    assigned_partitions,
    first_times,
    hostname_changes,
    join_worker,
    serve,
    stop_all,
    three_brokers,
)

pytestmark = pytest.mark.integration

NAMESPACE = "rolling"
VMIS = [f"vm-{i:02d}" for i in range(10)]
SUBRESOURCE = "/apis/subresources.kubevirt.io/v1/namespaces/rolling/virtualmachineinstances/{}/guestosinfo"


def collector(folder: Path, bootstrap: str, node: Path, sockets: dict[str, Path], name: str = "collect") -> Stage:
    argv = ["collect", "--bootstrap-servers", bootstrap, "--libvirt-uri", f"test://{node}", "--node-name", "n1",
            "--interval", "1", "--poll-interval", "guest-get-host-name=0.5", "--agent-timeout", "2"]
    for vmi, socket in sockets.items():
        argv += ["--agent-socket", f"{NAMESPACE}/{vmi}={socket}"]
    return Stage(name, folder, *argv)


class Readers:
    """GETs of every VMI's guestosinfo, all along, on the first replica that answers: status counts."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.statuses: Counter[int] = Counter()
        self.hostnames: dict[str, str] = {}
        self.unanswered = 0
        #: Reads that showed no hostname for a VMI the API had shown one of already: the status, or "no
        #: hostname" for a 200 without one.
        self.lost_sight: list[tuple[str, int | str]] = []

    async def run(self, until: asyncio.Event) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while not until.is_set():
                for vmi in VMIS:
                    await self._read(session, vmi)
                await asyncio.sleep(0.05)

    async def _read(self, session: aiohttp.ClientSession, vmi: str) -> None:
        for port in self.ports:
            try:
                async with session.get(f"http://127.0.0.1:{port}{SUBRESOURCE.format(vmi)}") as response:
                    self.statuses[response.status] += 1
                    if response.status == 200:
                        # No hostname yet: the domain's report came before the agent's (omitted, as upstream).
                        hostname = (await response.json()).get("hostname")
                        if hostname is not None:
                            self.hostnames[vmi] = hostname
                        elif vmi in self.hostnames:
                            self.lost_sight.append((vmi, "no hostname"))
                    elif vmi in self.hostnames:
                        self.lost_sight.append((vmi, response.status))
                    return
            except (aiohttp.ClientError, TimeoutError):
                continue  # that replica is restarting: the other one answers
        self.unanswered += 1


async def test_a_rolling_restart_under_load_loses_nothing_and_never_answers_5xx(
    tmp_path: Path, shared_store: str
) -> None:
    guests = {vmi: Guest() for vmi in VMIS}
    sockets = {vmi: tmp_path / f"{vmi}.sock" for vmi in VMIS}
    node = tmp_path / "node.xml"
    node.write_text(node_xml([(NAMESPACE, vmi, f"02:00:00:00:03:{i:02x}") for i, vmi in enumerate(VMIS)]))
    made = dict.fromkeys(VMIS, 0)
    for guest in guests.values():
        guest.replies["guest-get-host-name"] = {"host-name": "h0"}

    async with three_brokers() as cluster, contextlib.AsyncExitStack() as agents:
        for vmi, guest in guests.items():
            await agents.enter_async_context(fake_agent(sockets[vmi], guest.script))
        bootstrap = cluster.bootstrap_servers
        ports = [free_port(), free_port()]
        stages = {
            "join": join_worker(tmp_path, bootstrap),
            "collect": collector(tmp_path, bootstrap, node, sockets),
            "serve-a": serve(tmp_path, bootstrap, ports[0], shared_store, name="serve-a"),
            "serve-b": serve(tmp_path, bootstrap, ports[1], shared_store, name="serve-b"),
        }
        readers = Readers(ports)
        done = asyncio.Event()
        timings: dict[str, float] = {}
        try:
            await assigned_partitions(stages["join"])
            for name in ("serve-a", "serve-b"):
                await stages[name].until_logged(r"API listening on")
            reading = asyncio.create_task(readers.run(done))

            async def change_all(seconds: float) -> None:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    for vmi, guest in guests.items():
                        made[vmi] += 1
                        guest.replies["guest-get-host-name"] = {"host-name": f"h{made[vmi]}"}
                    await asyncio.sleep(1.0)

            await change_all(4)
            for name, ready in (("join", r"ready: raw partitions \[\d"), ("collect", r"connected to Kafka"),
                                ("serve-a", r"API listening on"), ("serve-b", r"API listening on")):
                started = time.monotonic()
                assert stages[name].stop() == 0, f"{name} did not stop cleanly:\n{stages[name].text()[-3000:]}"
                stages[name] = restarted = _again(stages[name], f"{name}-2")
                await asyncio.gather(restarted.until_logged(ready, timeout=90), change_all(2))
                timings[name] = time.monotonic() - started
                await change_all(2)
            await change_all(2)

            finals = {vmi: f"h{made[vmi]}" for vmi in VMIS}
            deadline = time.monotonic() + 60
            while readers.hostnames != finals:
                if reading.done():
                    reading.result()  # the readers' error, at once
                assert time.monotonic() < deadline, f"the API never showed the last hostnames: {readers.hostnames}"
                await asyncio.sleep(0.2)
            done.set()
            await reading

            told = await hostname_changes(bootstrap, NAMESPACE)
            for vmi in VMIS:
                changes = [change for _, change in first_times(told[vmi])]
                assert changes == sorted(changes) and changes[-1] == made[vmi], f"{vmi}: told {changes}"
            server_errors = sum(count for status, count in readers.statuses.items() if status >= 500)
            assert server_errors == 0, f"answers by status: {dict(readers.statuses)}"
            assert readers.unanswered == 0, f"{readers.unanswered} reads found no replica answering"
            assert not readers.lost_sight, f"a VMI shown before was not answered: {readers.lost_sight[:5]}"
            print("\nrolling restart, each stage stopped and ready again in: "
                  + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items())
                  + f"; {sum(readers.statuses.values())} API reads by status {dict(readers.statuses)} (404 only "
                  "before a VMI's first report), none unanswered; "
                  f"{sum(made.values())} changes made, {sum(len(set(t)) for t in told.values())} told, in order; every "
                  "guest at its last hostname")
        finally:
            done.set()
            logs = stop_all(*stages.values())
        assert "Traceback" not in logs, logs[-3000:]


def _again(stage: Stage, name: str) -> Stage:
    """The same stage started again (the same command line and state folder, a log of its own)."""
    return Stage(name, stage.log.parent, *stage.argv)
