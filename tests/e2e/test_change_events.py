"""A guest changes, and `guestinfo tail` shows exactly the matching change events, and `run`'s guest
metrics show the guest under upstream's names (the whole pipeline, `guestinfo run`, on a real libvirtd
hosting the test driver; the guest is a scripted agent whose answers the test changes: a user logs in, a
kernel update reboots the guest, a disk fills up)."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import libvirt
import pytest

from tests.collectors.fake_agent import Answer, fake_agent, returning, sync_reply
from tests.conftest import Libvirtd
from tests.e2e.hostile_agent import HEALTHY
from tests.e2e.test_vm_lifecycle import domain_xml, log_tail, pipeline

pytestmark = pytest.mark.integration

#: Every command the scripted guest answers is polled at least this often.
POLLS = ["guest-get-users", "guest-get-fsinfo", "guest-get-osinfo", "guest-get-host-name",
         "guest-network-get-interfaces"]
WAIT = 30.0


class Guest:
    """What the scripted agent answers now; the test changes it."""

    def __init__(self) -> None:
        self.replies: dict[str, Any] = copy.deepcopy(HEALTHY)
        self.replies["guest-get-users"] = [{"user": "root", "login-time": 1718000000}]
        self.replies["guest-network-get-interfaces"] = []

    def script(self, request: dict[str, Any]) -> Answer:
        if request["execute"] == "guest-sync":
            return sync_reply(request)
        return returning(request, self.replies[request["execute"]])


async def announced(log: Path, what: str) -> str:
    """An address `guestinfo run` prints once it is up (`what`: the line's heading)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        # The banner's line, not a log line that names it (Apache Kafka logs "Apache Kafka ready on ...").
        found = re.search(rf"^\s*{what}\s+(\S+)", await asyncio.to_thread(log.read_text, errors="replace"), re.M)
        if found:
            return found[1]
        await asyncio.sleep(0.2)
    raise AssertionError(f"guestinfo run printed no {what} address:\n{log_tail(log)}")


async def guest_series(url: str, prefix: str) -> list[str]:
    """The series of the guest metrics sink whose line starts with `prefix`."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return [line for line in (await response.text()).splitlines() if line.startswith(prefix)]


class Tail:
    """`guestinfo tail` of the events topic for ns1/vm1, from the beginning, read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []

    async def until(self, count: int, what: str) -> list[dict[str, Any]]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + WAIT
        while len(self.events) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"{what}: {len(self.events)} of {count} events came: {self.events}"
            try:
                line = await asyncio.wait_for(self.process.stdout.readline(), left)
            except TimeoutError:
                continue
            if not line:
                stderr = (await self.process.stderr.read()).decode() if self.process.stderr else ""
                pytest.fail(f"guestinfo tail ended: {stderr}")
            self.events.append(json.loads(line))
        return self.events

    async def nothing_more(self, seconds: float) -> None:
        assert self.process.stdout is not None
        with pytest.raises(TimeoutError):
            extra = await asyncio.wait_for(self.process.stdout.readline(), seconds)
            pytest.fail(f"an event nobody asked for: {extra!r}")


def told(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(event["type"], event["subject"]) for event in events]


async def test_a_guest_that_changes_tells_exactly_the_matching_events(libvirtd: Libvirtd, engine_name: str,
                                                                      tmp_path: Path) -> None:
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    guest = Guest()
    conn = await asyncio.to_thread(libvirt.open, libvirtd.uri)
    tail: Tail | None = None
    try:
        polls = tuple(f"{command}=1" for command in POLLS)
        async with fake_agent(sockets / "ns1_vm1.sock", guest.script) as agent, \
                pipeline(tmp_path, libvirtd.uri, sockets, engine_name, polls) as (_, log):
            bootstrap = await announced(log, "Kafka")
            dom = await asyncio.to_thread(conn.defineXML, domain_xml("uid-events"))
            await asyncio.to_thread(dom.create)
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "guestinfo", "tail", "--bootstrap-servers", bootstrap, "--topic",
                "guestinfo.events.v1", "--from-beginning", "--namespace", "ns1", "--name", "vm1",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            tail = Tail(process)
            # The VMI appears with its agent connected: a baseline, nothing else.
            assert told(await tail.until(1, "first sight")) == [("AgentConnected", "")]
            await tail.nothing_more(3.0)

            guest.replies["guest-get-users"] = [{"user": "root", "login-time": 1718000000},
                                                {"user": "alice", "login-time": 1718000500}]
            events = await tail.until(2, "a login")
            assert told(events[1:]) == [("UserLoggedIn", "alice")]
            assert events[1]["vmi"] == {"namespace": "ns1", "name": "vm1", "uid": "uid-events"}

            # A kernel update: the guest reboots into the new kernel, and nobody is logged in any more.
            guest.replies["guest-get-osinfo"] = {**guest.replies["guest-get-osinfo"],
                                                 "kernel-release": "6.9.7-200.fc40.x86_64"}
            guest.replies["guest-get-users"] = []
            agent.drop_connections()
            events = await tail.until(6, "a kernel update")
            reboot = [event for event in events[2:] if event["type"] not in ("AgentDisconnected", "AgentConnected")]
            assert told(reboot) == [("GuestRebooted", ""), ("GuestOSChanged", ""), ("UserLoggedOut", "alice"),
                                    ("UserLoggedOut", "root")]
            assert reboot[1]["changes"] == {"kernelRelease": {"before": "6.8.5-301.fc40.x86_64",
                                                              "after": "6.9.7-200.fc40.x86_64"}}
            # The agent may be seen away for a moment while the guest reboots: then once down, once up.
            blips = told([event for event in events[2:] if event not in reboot])
            assert blips in ([], [("AgentDisconnected", ""), ("AgentConnected", "")]), blips
            seen = len(events)

            # The root filesystem fills past 85 % and 95 % at once: one event per threshold crossed.
            disk = guest.replies["guest-get-fsinfo"][0]
            guest.replies["guest-get-fsinfo"] = [{**disk, "used-bytes": disk["total-bytes"] * 97 // 100}]
            events = await tail.until(seen + 2, "a disk filling up")
            assert told(events[seen:]) == [("FilesystemUsageHigh", "/@85"), ("FilesystemUsageHigh", "/@95")]
            assert [event["revision"] for event in events] == sorted(event["revision"] for event in events)
            await tail.nothing_more(3.0)

            # The same guest in `run`'s guest metrics, under upstream's names.
            metrics = await announced(log, "guest data")
            used = await guest_series(metrics, "kubevirt_vmi_filesystem_used_bytes{")
            assert len(used) == 1 and 'mount_point="/"' in used[0] and 'namespace="ns1"' in used[0]
            assert float(used[0].rsplit(" ", 1)[1]) == disk["total-bytes"] * 97 // 100
            (os_info,) = await guest_series(metrics, "kubevirt_vmi_guest_os_info{")
            assert 'kernel_release="6.9.7-200.fc40.x86_64"' in os_info and 'name="vm1"' in os_info
            assert await guest_series(metrics, "kubevirt_vmi_guest_user_count{") == [
                'kubevirt_vmi_guest_user_count{name="vm1",namespace="ns1"} 0.0']
    finally:
        if tail is not None and tail.process.returncode is None:
            tail.process.kill()
            await tail.process.wait()
        conn.close()
