"""The agent socket client against a scripted fake agent, and against the real qemu-ga."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from collectors.agent_poll import poll_agent
from collectors.agent_protocol import AgentSocketClient, decode_reply, json_depth
from collectors.errors import AgentCommandError, AgentProtocolError, AgentTimeout, AgentUnavailable
from schemas.events import VMIRef
from schemas.limits import MAX_REPLY_BYTES, MAX_REPLY_DEPTH
from tests.collectors.fake_agent import fake_agent, sync_reply


def answer(value: Any) -> list[bytes]:
    return [orjson.dumps({"return": value}) + b"\n"]


def replying(**commands: list[bytes] | str | None) -> Any:
    """A script: guest-sync answered properly, each command (dashes as underscores) as given."""

    def script(request: dict[str, Any]) -> list[bytes] | str | None:
        if request["execute"] == "guest-sync":
            return sync_reply(request)
        return commands.get(request["execute"].replace("-", "_"))

    return script


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "agent.sock"


async def test_stale_and_garbage_lines_before_the_sync_reply_are_discarded(sock: Path) -> None:
    def script(request: dict[str, Any]) -> list[bytes] | None:
        if request["execute"] == "guest-sync":
            return [b'{"return": {"host-name": "stale"}}\n', b"\xff\xff garbage\n", b'{"return": 12}\n',
                    *sync_reply(request)]
        return answer({"host-name": "fresh"})

    async with fake_agent(sock, script):
        client = AgentSocketClient(str(sock), timeout=2)
        try:
            assert await client.execute("guest-get-host-name") == {"host-name": "fresh"}
        finally:
            await client.close()


async def test_sync_without_matching_reply_is_a_protocol_error(sock: Path) -> None:
    async with fake_agent(sock, lambda request: [b'{"return": 1}\n'] * 40):
        client = AgentSocketClient(str(sock), timeout=2)
        with pytest.raises(AgentProtocolError, match="guest-sync"):
            await client.sync()
        assert not client.connected


async def test_error_reply_keeps_the_connection(sock: Path) -> None:
    error = [b'{"error": {"class": "CommandNotFound", "desc": "The command guest-x has not been found"}}\n']
    async with fake_agent(sock, replying(guest_x=error, guest_ping=answer({}))) as agent:
        client = AgentSocketClient(str(sock), timeout=2)
        try:
            with pytest.raises(AgentCommandError) as caught:
                await client.execute("guest-x")
            assert caught.value.error_class == "CommandNotFound"
            assert "has not been found" in caught.value.desc
            assert await client.execute("guest-ping") == {}
            assert agent.connections == 1
        finally:
            await client.close()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ([b"this is not json\n"], "not JSON"),
        ([b"[1, 2, 3]\n"], "not an object"),
        ([b'{"neither": 1}\n'], "neither"),
        ([b'{"error": "flat"}\n'], "not an object"),
        ([b'{"return": ' + b"[" * (MAX_REPLY_DEPTH + 1) + b"]" * (MAX_REPLY_DEPTH + 1) + b"}\n"], "deeper"),
        ([b'{"return": "' + b"x" * MAX_REPLY_BYTES + b'"}\n'], "longer than"),
    ],
    ids=["garbage", "array", "no-return", "flat-error", "too-deep", "too-large"],
)
async def test_bad_replies_are_protocol_errors_and_the_client_reconnects(
    sock: Path, reply: list[bytes], message: str
) -> None:
    calls = 0

    def script(request: dict[str, Any]) -> list[bytes] | None:
        nonlocal calls
        if request["execute"] == "guest-sync":
            return sync_reply(request)
        calls += 1
        return reply if calls == 1 else answer("thawed")

    async with fake_agent(sock, script) as agent:
        client = AgentSocketClient(str(sock), timeout=2)
        try:
            with pytest.raises(AgentProtocolError, match=message):
                await client.execute("guest-fsfreeze-status")
            assert await client.execute("guest-fsfreeze-status") == "thawed"
            assert agent.connections == 2
        finally:
            await client.close()


async def test_silent_agent_times_out_and_a_late_reply_is_not_taken_for_the_next(sock: Path) -> None:
    calls = 0

    def script(request: dict[str, Any]) -> list[bytes] | None:
        nonlocal calls
        if request["execute"] == "guest-sync":
            return sync_reply(request)
        calls += 1
        return None if calls == 1 else answer(calls)

    async with fake_agent(sock, script):
        client = AgentSocketClient(str(sock), timeout=0.3)
        try:
            started = time.monotonic()
            with pytest.raises(AgentTimeout):
                await client.execute("guest-info")
            assert time.monotonic() - started < 1.5
            assert await client.execute("guest-info") == 2
        finally:
            await client.close()


async def test_closed_connection_is_unavailable_then_reconnects(sock: Path) -> None:
    calls = 0

    def script(request: dict[str, Any]) -> list[bytes] | str | None:
        nonlocal calls
        if request["execute"] == "guest-sync":
            return sync_reply(request)
        calls += 1
        return "close" if calls == 1 else answer("ok")

    async with fake_agent(sock, script) as agent:
        client = AgentSocketClient(str(sock), timeout=2)
        try:
            with pytest.raises(AgentUnavailable, match="closed"):
                await client.execute("guest-ping")
            assert await client.execute("guest-ping") == "ok"
            assert agent.connections == 2
        finally:
            await client.close()


async def test_missing_socket_is_unavailable(sock: Path) -> None:
    client = AgentSocketClient(str(sock), timeout=1)
    with pytest.raises(AgentUnavailable, match="cannot connect"):
        await client.sync()


def test_depth_and_size_limits_of_decode_reply() -> None:
    assert json_depth({"return": [{"a": 1}]}) == 3
    assert decode_reply(b'{"return": 1}') == {"return": 1}
    with pytest.raises(AgentProtocolError, match="exceeds"):
        decode_reply(b" " * (MAX_REPLY_BYTES + 1))
    with pytest.raises(AgentProtocolError):
        decode_reply(b'{"return": NaN}')


async def test_poll_records_bad_replies_and_keeps_going(sock: Path) -> None:
    script = replying(
        guest_info=answer({"version": "9.9", "supported_commands": []}),
        guest_get_osinfo=[b"garbage\n"],
        guest_get_host_name=answer({"host-name": 5}),
        guest_get_timezone=answer({"zone": "CET", "offset": 3600}),
        guest_get_users=[b'{"error": {"class": "GenericError", "desc": "no utmpx"}}\n'],
        guest_get_fsinfo=answer([]),
        guest_network_get_interfaces=answer([]),
        guest_fsfreeze_status=answer("frozen"),
    )
    async with fake_agent(sock, script):
        client = AgentSocketClient(str(sock), timeout=1)
        try:
            report, synced = await poll_agent(
                client, VMIRef(namespace="ns", name="vm"), node="n", observed_at=1.0, budget=5
            )
        finally:
            await client.close()
    assert synced and report.connected
    assert report.info is not None and report.info.version == "9.9"
    assert report.os is None and report.hostname is None and report.users is None
    assert set(report.errors) == {"guest-get-osinfo", "guest-get-host-name", "guest-get-users"}
    assert "no utmpx" in report.errors["guest-get-users"]
    assert report.timezone is not None and report.timezone.offset == 3600
    assert report.filesystems == [] and report.interfaces == [] and report.fs_freeze_status == "frozen"


async def test_poll_of_a_silent_agent_stops_after_the_first_timeout(sock: Path) -> None:
    async with fake_agent(sock, replying()) as agent:
        client = AgentSocketClient(str(sock), timeout=0.2)
        try:
            report, synced = await poll_agent(
                client, VMIRef(namespace="ns", name="vm"), node="n", observed_at=1.0, budget=5
            )
        finally:
            await client.close()
    assert synced
    assert list(report.errors) == ["guest-info"]
    assert [r["execute"] for r in agent.requests] == ["guest-sync", "guest-info"]


def os_release_name() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise AssertionError("no NAME in /etc/os-release")


@pytest.mark.integration
async def test_real_qemu_ga(qemu_ga: Path) -> None:
    client = AgentSocketClient(str(qemu_ga), timeout=5)
    try:
        await client.sync()
        osinfo = await client.execute("guest-get-osinfo")
        assert osinfo["name"] == os_release_name()
        assert (await client.execute("guest-get-host-name"))["host-name"] == socket.gethostname()
        with pytest.raises(AgentCommandError) as caught:
            await client.execute("guest-no-such-command")
        assert caught.value.error_class == "CommandNotFound"
    finally:
        await client.close()


@pytest.mark.integration
async def test_real_qemu_ga_full_poll(qemu_ga: Path) -> None:
    client = AgentSocketClient(str(qemu_ga), timeout=5)
    try:
        report, synced = await poll_agent(
            client, VMIRef(namespace="ns", name="vm"), node="n", observed_at=1.0, budget=15
        )
    finally:
        await client.close()
    assert synced and report.connected and report.errors == {}
    assert report.info is not None and report.info.version
    assert any(c.name == "guest-get-osinfo" and c.enabled for c in report.info.supported_commands)
    assert report.os is not None and report.os.name == os_release_name()
    assert report.hostname == socket.gethostname()
    assert report.timezone is not None
    assert report.fs_freeze_status == "thawed"
    assert report.users is not None and report.filesystems is not None
    assert report.interfaces is not None and any(i.name == "lo" for i in report.interfaces)


async def test_sync_on_an_open_connection_asks_the_agent_again(sock: Path) -> None:
    """A hung agent on a connection that is already open must not count as answering."""
    async with fake_agent(sock, replying(guest_ping=answer({}))) as agent:
        client = AgentSocketClient(str(sock), timeout=0.5)
        try:
            await client.sync()
            await client.sync()
            assert agent.connections == 1
            assert [r["execute"] for r in agent.requests].count("guest-sync") == 2
        finally:
            await client.close()
