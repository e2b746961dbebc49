"""A VM's life on a real libvirtd, through the whole pipeline (`guestinfo run`), as on a KubeVirt node.

The collector watches a libvirtd hosting the test driver (with events); each VMI's agent is reached
through `--agent-socket-dir`. The first guest is a real qemu-ga; the guests after it are scripted
agents, since a second real one on this machine could not tell itself apart from the first.

- A restart is a new VMI: the domain is destroyed and undefined, and the same name is defined and
  started with a new uid and a new guest. The new guest's data must be in the API within one poll
  interval (users: 10 s), every time, and only the new guest's (issue 8: the join used to drop the new
  guest's answers when they were read before its domain report, for up to five minutes).
- A pause keeps the agent, as upstream: the API goes on serving the data (no 409) and the agent is not
  asked anything while paused; on resume it is asked again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import libvirt
import pytest

from guestinfo.broker import free_port
from tests.collectors.fake_agent import Answer, FakeAgent, fake_agent, returning, sync_reply
from tests.conftest import Libvirtd, QemuGA
from tests.e2e.api_client import get_json
from tests.e2e.hostile_agent import HEALTHY

pytestmark = pytest.mark.integration

MAC = "02:00:00:00:08:01"
VMI = "/apis/subresources.kubevirt.io/v1/namespaces/ns1/virtualmachineinstances/vm1"
#: One poll interval of the slowest data asked for here (users, upstream's 10 s).
POLL_INTERVAL = 10.0
RESTARTS = 3


def domain_xml(uid: str) -> str:
    return f"""<domain type='test'><name>ns1_vm1</name>
<metadata><kubevirt:kubevirt xmlns:kubevirt="http://kubevirt.io"><kubevirt:uid>{uid}</kubevirt:uid>
</kubevirt:kubevirt></metadata>
<memory>65536</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>
<devices><interface type='ethernet'><mac address='{MAC}'/><alias name='ua-default'/></interface></devices>
</domain>"""


def guest(number: int) -> dict[str, Any]:
    """What scripted guest `number` says of itself: a hostname, an OS and a user list of its own."""
    return {
        "hostname": f"guest-{number}",
        "os": {"name": f"Incarnation {number}", "id": f"incarnation{number}"},
        "users": [f"user{number}-{i}" for i in range(number)],
    }


def script_of(identity: dict[str, Any]) -> Any:
    replies = {
        **HEALTHY,
        "guest-get-host-name": {"host-name": identity["hostname"]},
        "guest-get-osinfo": identity["os"],
        "guest-get-users": [{"user": user, "login-time": 1718000000 + i} for i, user in enumerate(identity["users"])],
        "guest-network-get-interfaces": [],
    }

    def script(request: dict[str, Any]) -> Answer:
        if request["execute"] == "guest-sync":
            return sync_reply(request)
        return returning(request, replies[request["execute"]])

    return script


async def get(session: aiohttp.ClientSession, port: int, sub: str) -> tuple[int, Any]:
    return await get_json(session, port, f"{VMI}/{sub}")


async def shown(session: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, Any] | None, list[str] | None]:
    """The API's view of the VMI: status, guestosinfo body, user names of userlist."""
    status, info = await get(session, port, "guestosinfo")
    if status != 200:
        return status, None, None
    users_status, users = await get(session, port, "userlist")
    if users_status != 200:
        return users_status, None, None
    return status, info, [item["userName"] for item in users["items"]]


@contextlib.asynccontextmanager
async def pipeline(tmp_path: Path, uri: str, sockets: Path, engine: str,
                   polls: tuple[str, ...] = ("guest-fsfreeze-status=1",)) -> AsyncIterator[tuple[int, Path]]:
    """`guestinfo run --engine ENGINE` on the libvirtd (`polls`: its --poll-interval values); on leaving,
    it must stop cleanly, with no stage crashed."""
    port = free_port()
    log = tmp_path / "guestinfo.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "guestinfo", "--state-dir", str(tmp_path / "state"), "run",
            "--libvirt-uri", uri, "--agent-socket-dir", str(sockets), "--node-name", "lifecycle-node",
            "--api-listen", f"127.0.0.1:{port}", "--engine", engine,
            *(arg for poll in polls for arg in ("--poll-interval", poll)),
            stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
    try:
        yield port, log
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 60)
    assert code == 0, log_tail(log)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "exited with code" not in text, log_tail(log)


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def test_a_restarted_vm_shows_its_new_guest_at_once_and_a_paused_one_keeps_its_agent(
    libvirtd: Libvirtd, engine_name: str, tmp_path: Path
) -> None:
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    agent_socket = sockets / "ns1_vm1.sock"
    qga_state = tmp_path / "qga"
    qga_state.mkdir()
    qemu_ga = QemuGA(qga_state)
    qemu_ga.start()
    agent_socket.symlink_to(qemu_ga.socket)
    conn = await asyncio.to_thread(libvirt.open, libvirtd.uri)
    try:
        async with pipeline(tmp_path, libvirtd.uri, sockets, engine_name) as (port, log), \
                aiohttp.ClientSession() as session:
            dom = await asyncio.to_thread(conn.defineXML, domain_xml("uid-1"))
            await asyncio.to_thread(dom.create)
            # The first guest, the real qemu-ga: this machine's hostname (the pipeline is starting up).
            deadline = time.monotonic() + 120
            while True:
                status, info, _ = await shown(session, port)
                if status == 200 and info is not None and info.get("hostname") == socket.gethostname():
                    break
                assert time.monotonic() < deadline, f"the first guest never showed:\n{log_tail(log)}"
                await asyncio.sleep(0.2)
            real_os = info["os"]

            for number in range(2, 2 + RESTARTS):
                identity = guest(number)
                await asyncio.to_thread(dom.destroy)
                await asyncio.to_thread(dom.undefine)
                qemu_ga.stop()
                agent_socket.unlink(missing_ok=True)
                async with fake_agent(agent_socket, script_of(identity)) as agent:
                    dom = await asyncio.to_thread(conn.defineXML, domain_xml(f"uid-{number}"))
                    started = time.monotonic()
                    await asyncio.to_thread(dom.create)
                    while True:
                        status, info, users = await shown(session, port)
                        if status == 200 and info is not None and info.get("hostname") == identity["hostname"] \
                                and users == identity["users"]:
                            break
                        waited = time.monotonic() - started
                        assert waited < POLL_INTERVAL, (
                            f"restart {number - 1}: the new guest is not shown {waited:.1f}s after its start "
                            f"(API: {status} {info} users {users})\n{log_tail(log)}")
                        await asyncio.sleep(0.1)
                    # Only the new guest's data: its OS, its users, none of the earlier guest's.
                    assert info["os"] == {"name": identity["os"]["name"], "id": identity["os"]["id"]}
                    assert info["os"] != real_os and [u["userName"] for u in info.get("userList", [])] == users
                    if number == 1 + RESTARTS:
                        await pause_and_resume(session, port, dom, agent, info)
                agent_socket.unlink(missing_ok=True)
    finally:
        qemu_ga.stop()
        conn.close()


async def pause_and_resume(
    session: aiohttp.ClientSession, port: int, dom: libvirt.virDomain, agent: FakeAgent, info: dict[str, Any]
) -> None:
    """Paused (the freeze status is asked every 1 s here): the agent is asked nothing once the suspend
    was seen, and for 4 s more the API keeps serving the same body; resumed, it is asked everything again
    at once."""
    await asyncio.to_thread(dom.suspend)
    # Once the collector has seen the suspend (its event), polling stops: 1.5 s without a request.
    asked, quiet_since, deadline = len(agent.requests), time.monotonic(), time.monotonic() + 5
    while time.monotonic() - quiet_since < 1.5:
        assert time.monotonic() < deadline, f"still asked after the suspend: {agent.requests[asked:]}"
        if len(agent.requests) != asked:
            asked, quiet_since = len(agent.requests), time.monotonic()
        await asyncio.sleep(0.05)
    for _ in range(16):
        status, body = await get(session, port, "guestosinfo")
        assert status == 200, f"a paused VMI lost its agent: {status} {body}"
        assert body == info
        await asyncio.sleep(0.25)
    assert len(agent.requests) == asked, f"asked while paused: {agent.requests[asked:]}"
    await asyncio.to_thread(dom.resume)
    deadline = time.monotonic() + 3
    # Every command at once, as after a (re)start: the OS too, which is otherwise asked every 120 s.
    while "guest-get-osinfo" not in {request["execute"] for request in agent.requests[asked:]}:
        assert time.monotonic() < deadline, f"not asked everything after the resume: {agent.requests[asked:]}"
        await asyncio.sleep(0.05)
    status, body = await get(session, port, "guestosinfo")
    assert status == 200 and body == info
