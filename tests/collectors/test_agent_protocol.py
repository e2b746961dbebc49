"""The agent socket client against a scripted fake agent, and against the real qemu-ga."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from collectors.agent_protocol import MAX_STRAY_LINES, AgentSocketClient, decode_reply, json_depth
from collectors.errors import AgentCommandError, AgentProtocolError, AgentTimeout, AgentUnavailable
from schemas.events import VMIRef
from schemas.limits import MAX_REPLY_BYTES, MAX_REPLY_DEPTH
from tests.collectors.fake_agent import Answer, Script, fake_agent, returning, sync_reply
from tests.collectors.ticks import poll_agent

Reply = Callable[[dict[str, Any]], Answer]


def ok(value: Any) -> Reply:
    """The command's reply: `value`, with the request's id."""
    return lambda request: returning(request, value)


def raw(*lines: bytes | str) -> Reply:
    """These exact lines, whatever the request; `@ID` in a line is replaced by the request's id."""
    return lambda request: [
        item.replace(b"@ID", orjson.dumps(request["id"])) if isinstance(item, bytes) else item for item in lines
    ]


def replying(*, echo_ids: bool = True, **commands: Reply) -> Script:
    """A script: guest-sync answered properly, each command (dashes as underscores) as given, others
    not at all."""

    def script(request: dict[str, Any]) -> Answer:
        if request["execute"] == "guest-sync":
            return sync_reply(request, echo_id=echo_ids)
        reply = commands.get(request["execute"].replace("-", "_"))
        return None if reply is None else reply(request)

    return script


def agent_errors(command: str, kind: str) -> float:
    labels = {"command": command, "kind": kind}
    return REGISTRY.get_sample_value("guestinfo_collector_agent_errors_total", labels) or 0.0


def agent_calls(command: str) -> float:
    labels = {"command": command}
    return REGISTRY.get_sample_value("guestinfo_collector_agent_call_duration_seconds_count", labels) or 0.0


def stray_count(reason: str) -> float:
    return REGISTRY.get_sample_value("guestinfo_collector_agent_stray_lines_total", {"reason": reason}) or 0.0


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "agent.sock"


async def test_every_request_carries_a_unique_id(sock: Path) -> None:
    async with fake_agent(sock, replying(guest_ping=ok({}))) as agent:
        client = AgentSocketClient(str(sock), timeout=2)
        try:
            await client.sync()
            await client.execute("guest-ping")
            await client.execute("guest-ping")
        finally:
            await client.close()
    ids = [request["id"] for request in agent.requests]
    assert len(ids) == 3 and len(set(ids)) == 3 and all(isinstance(i, str) for i in ids)


async def test_stale_and_garbage_lines_before_the_sync_reply_are_discarded(sock: Path) -> None:
    def script(request: dict[str, Any]) -> Answer:
        if request["execute"] == "guest-sync":
            return [b'{"return": {"host-name": "stale"}}\n', b"\xff\xff garbage\n", b'{"return": 12}\n',
                    *sync_reply(request)]
        return returning(request, {"host-name": "fresh"})

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
    error = raw(b'{"error": {"class": "CommandNotFound", "desc": "The command guest-x has not been found"}, '
                b'"id": @ID}\n')
    async with fake_agent(sock, replying(guest_x=error, guest_ping=ok({}))) as agent:
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


DEEP = b"[" * (MAX_REPLY_DEPTH + 1) + b"]" * (MAX_REPLY_DEPTH + 1)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (raw(b'{"neither": 1, "id": @ID}\n'), "neither"),
        (raw(b'{"error": "flat", "id": @ID}\n'), "not an object"),
        (raw(b'{"return": ' + DEEP + b', "id": @ID}\n'), "deeper"),
        (raw(b'{"return": "' + b"x" * MAX_REPLY_BYTES + b'"}\n'), "longer than"),
        (raw(*[b'{"event": "unsolicited"}\n'] * (MAX_STRAY_LINES + 1)), "stray lines"),
    ],
    ids=["no-return", "flat-error", "too-deep", "too-large", "flood"],
)
async def test_bad_replies_are_protocol_errors_and_the_client_reconnects(
    sock: Path, reply: Reply, message: str
) -> None:
    calls = 0

    def script(request: dict[str, Any]) -> Answer:
        nonlocal calls
        if request["execute"] == "guest-sync":
            return sync_reply(request)
        calls += 1
        return reply(request) if calls == 1 else returning(request, "thawed")

    async with fake_agent(sock, script) as agent:
        client = AgentSocketClient(str(sock), timeout=2)
        try:
            with pytest.raises(AgentProtocolError, match=message):
                await client.execute("guest-fsfreeze-status")
            assert await client.execute("guest-fsfreeze-status") == "thawed"
            assert agent.connections == 2
        finally:
            await client.close()


GOOD = b'{"return": "thawed", "id": @ID}\n'


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ([b'{"return": "frozen", "id": "someone-else-1"}\n'], "other_id"),
        ([b'{"return": "frozen", "id": 7}\n', b'{"return": "frozen", "id": null}\n'], "other_id"),
        ([b'{"return": "frozen"}\n'], "no_id"),
        ([b'{"event": "unsolicited", "data": {}}\n'] * MAX_STRAY_LINES, "no_id"),
        ([b'{"return": "\xff\xfe", "id": @ID}\n'], "not_json"),
        ([b'{"return": NaN, "id": @ID}\n', b'{"return": -Infinity, "id": @ID}\n'], "not_json"),
        ([b'{"return": 1e999, "id": @ID}\n'], "not_json"),
        ([b'[1, 2]\n', b'"thawed"\n', b"\n", b'{"return": "fro\n'], "not_json"),
    ],
    ids=["other-id", "other-id-types", "id-less-from-echoing-agent", "flood-within-bound", "invalid-utf8",
         "nan-infinity", "number-overflow", "not-objects-and-partial"],
)
async def test_stray_lines_before_the_reply_are_skipped_and_counted(
    sock: Path, lines: list[bytes], reason: str
) -> None:
    before = stray_count(reason)
    async with fake_agent(sock, replying(guest_fsfreeze_status=raw(*lines, GOOD))) as agent:
        client = AgentSocketClient(str(sock), timeout=2)
        try:
            assert await client.execute("guest-fsfreeze-status") == "thawed"
            assert agent.connections == 1
        finally:
            await client.close()
    assert stray_count(reason) - before == len(lines)


async def test_agent_that_does_not_echo_ids_is_answered_by_id_less_replies(sock: Path) -> None:
    script = replying(
        echo_ids=False,
        guest_get_host_name=raw(b'{"return": {"host-name": "old"}}\n'),
        guest_fsfreeze_status=raw(b'{"return": "frozen", "id": "someone-else"}\n', b'{"return": "thawed"}\n'),
    )
    async with fake_agent(sock, script):
        client = AgentSocketClient(str(sock), timeout=2)
        try:
            assert await client.execute("guest-get-host-name") == {"host-name": "old"}
            assert await client.execute("guest-fsfreeze-status") == "thawed"
        finally:
            await client.close()


async def test_reply_cut_mid_line_then_closed_is_unavailable(sock: Path) -> None:
    async with fake_agent(sock, replying(guest_info=raw(b'{"return": {"version": "9', "close"))):
        client = AgentSocketClient(str(sock), timeout=2)
        with pytest.raises(AgentUnavailable, match="closed"):
            await client.execute("guest-info")
        assert not client.connected


async def test_reply_cut_mid_line_then_silent_times_out(sock: Path) -> None:
    async with fake_agent(sock, replying(guest_info=raw(b'{"return": {"version": "9'))):
        client = AgentSocketClient(str(sock), timeout=0.3)
        started = time.monotonic()
        with pytest.raises(AgentTimeout):
            await client.execute("guest-info")
        assert time.monotonic() - started < 1.5
        assert not client.connected


async def test_silent_agent_times_out_and_a_late_reply_is_not_taken_for_the_next(sock: Path) -> None:
    calls = 0

    def script(request: dict[str, Any]) -> Answer:
        nonlocal calls
        if request["execute"] == "guest-sync":
            return sync_reply(request)
        calls += 1
        return None if calls == 1 else returning(request, calls)

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

    def script(request: dict[str, Any]) -> Answer:
        nonlocal calls
        if request["execute"] == "guest-sync":
            return sync_reply(request)
        calls += 1
        return "close" if calls == 1 else returning(request, "ok")

    async with fake_agent(sock, script) as agent:
        client = AgentSocketClient(str(sock), timeout=2)
        try:
            with pytest.raises(AgentUnavailable, match="closed"):
                await client.execute("guest-ping")
            assert await client.execute("guest-ping") == "ok"
            assert agent.connections == 2
            assert client.reconnects == 0, "closed in the middle of a call: not an agent restart"
        finally:
            await client.close()


async def test_sync_on_a_connection_the_agent_dropped_reconnects_at_once(sock: Path) -> None:
    async with fake_agent(sock, replying()):
        client = AgentSocketClient(str(sock), timeout=2)
        try:
            await client.sync()
            assert client.reconnects == 0
        finally:
            pass
    async with fake_agent(sock, replying()) as restarted:
        try:
            await client.sync()
            assert restarted.connections == 1
            assert client.reconnects == 1
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
        guest_info=ok({"version": "9.9", "supported_commands": []}),
        guest_get_osinfo=raw(b'{"id": @ID, "return": [1, 2]}\n'),
        guest_get_host_name=ok({"host-name": 5}),
        guest_get_timezone=ok({"zone": "CET", "offset": 3600}),
        guest_get_users=raw(b'{"error": {"class": "GenericError", "desc": "no utmpx"}, "id": @ID}\n'),
        guest_get_fsinfo=ok([]),
        guest_network_get_interfaces=ok([]),
        guest_fsfreeze_status=ok("frozen"),
    )
    kinds = [("guest-get-osinfo", "reply"), ("guest-get-host-name", "reply"), ("guest-get-users", "command")]
    before = [agent_errors(command, kind) for command, kind in kinds]
    calls_before = agent_calls("guest-get-timezone")
    async with fake_agent(sock, script):
        client = AgentSocketClient(str(sock), timeout=1)
        try:
            report, synced = await poll_agent(
                client, VMIRef(namespace="ns", name="vm"), node="n", observed_at=1.0, budget=5
            )
        finally:
            await client.close()
    assert [agent_errors(command, kind) - b for (command, kind), b in zip(kinds, before, strict=True)] == [1, 1, 1]
    assert agent_calls("guest-get-timezone") == calls_before + 1
    assert synced and report.connected
    assert report.info is not None and report.info.version == "9.9"
    assert report.os is None and report.hostname is None and report.users is None
    assert set(report.errors) == {"guest-get-osinfo", "guest-get-host-name", "guest-get-users"}
    assert "no utmpx" in report.errors["guest-get-users"]
    assert report.timezone is not None and report.timezone.offset == 3600
    assert report.filesystems == [] and report.interfaces == [] and report.fs_freeze_status == "frozen"


async def test_poll_of_a_silent_agent_stops_after_the_first_timeout(sock: Path) -> None:
    timeouts = agent_errors("guest-info", "timeout")
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
    assert agent_errors("guest-info", "timeout") == timeouts + 1


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
        assert client.echoes_ids, "qemu-ga echoes the request id"
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
    async with fake_agent(sock, replying(guest_ping=ok({}))) as agent:
        client = AgentSocketClient(str(sock), timeout=0.5)
        try:
            await client.sync()
            await client.sync()
            assert agent.connections == 1
            assert [r["execute"] for r in agent.requests].count("guest-sync") == 2
        finally:
            await client.close()


def executed(agent: Any) -> list[str]:
    return [request["execute"] for request in agent.requests]


async def test_a_connection_that_answered_in_step_is_not_synced_again(sock: Path) -> None:
    async with fake_agent(sock, replying(guest_ping=ok({}))) as agent:
        client = AgentSocketClient(str(sock), timeout=0.5)
        try:
            assert not client.try_skip_sync(), "a new connection is synced"
            await client.sync()
            assert client.try_skip_sync()
            assert await client.execute("guest-ping") == {}
            assert client.try_skip_sync()
            assert await client.execute("guest-ping") == {}
            assert executed(agent) == ["guest-sync", "guest-ping", "guest-ping"]
            assert agent.connections == 1 and client.reconnects == 0
        finally:
            await client.close()


async def test_a_stray_line_has_the_next_poll_sync_again(sock: Path) -> None:
    """Request ids still reject a stale reply on an unsynced call, and the connection is synced again."""
    calls = 0

    def script(request: dict[str, Any]) -> Answer:
        nonlocal calls
        if request["execute"] == "guest-sync":
            return sync_reply(request)
        calls += 1
        stale = [b'{"return": "frozen", "id": "earlier-1"}\n'] if calls == 1 else []
        return [*stale, *returning(request, "thawed")]

    before = stray_count("other_id")
    async with fake_agent(sock, script) as agent:
        client = AgentSocketClient(str(sock), timeout=0.5)
        try:
            await client.sync()
            assert client.try_skip_sync()
            assert await client.execute("guest-fsfreeze-status") == "thawed"
            assert stray_count("other_id") == before + 1
            assert not client.try_skip_sync(), "stray data: out of step"
            await client.sync()
            assert client.try_skip_sync()
            assert executed(agent) == ["guest-sync", "guest-fsfreeze-status", "guest-sync"]
        finally:
            await client.close()


async def test_a_connection_silent_for_long_or_of_an_agent_without_ids_is_synced_again(
    sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with fake_agent(sock, replying(echo_ids=False, guest_ping=raw(b'{"return": {}}\n'))):
        client = AgentSocketClient(str(sock), timeout=0.5)
        try:
            await client.sync()
            assert not client.echoes_ids and not client.try_skip_sync(), "only the sync tells its replies apart"
        finally:
            await client.close()
    async with fake_agent(sock, replying(guest_ping=ok({}))):
        client = AgentSocketClient(str(sock), timeout=0.5)
        try:
            await client.sync()
            assert client.try_skip_sync()
            await client.execute("guest-ping")
            monkeypatch.setattr("collectors.agent_protocol.RESYNC_AFTER_IDLE", 0.0)
            await asyncio.sleep(0.01)
            assert not client.try_skip_sync(), "silent since longer than RESYNC_AFTER_IDLE"
        finally:
            await client.close()


async def test_a_connection_the_agent_closed_is_synced_again_and_counted(sock: Path) -> None:
    async with fake_agent(sock, replying(guest_ping=ok({}))) as agent:
        client = AgentSocketClient(str(sock), timeout=0.5)
        await client.sync()
        agent.drop_connections()  # the agent restarted between two polls
        await asyncio.sleep(0.05)
        assert not client.try_skip_sync(), "the closed connection is seen: sync"
        await client.sync()
        try:
            assert client.reconnects == 1 and agent.connections == 2
        finally:
            await client.close()


async def test_the_call_standing_for_a_skipped_sync_replaces_a_closed_connection(sock: Path) -> None:
    """A connection closed just as the poll starts (not seen before the call) is found by its first call:
    counted as the agent's restart, replaced and synchronised, and the call asked again."""
    pings = 0

    def script(request: dict[str, Any]) -> Answer:
        nonlocal pings
        if request["execute"] == "guest-sync":
            return sync_reply(request)
        pings += 1
        return "close" if pings == 1 else returning(request, "pong")

    async with fake_agent(sock, script) as agent:
        client = AgentSocketClient(str(sock), timeout=0.5)
        try:
            await client.sync()
            assert client.try_skip_sync()
            assert await client.execute("guest-ping") == "pong"
            assert client.reconnects == 1 and agent.connections == 2
            assert executed(agent) == ["guest-sync", "guest-ping", "guest-sync", "guest-ping"]
            assert len({request["id"] for request in agent.requests}) == 4
        finally:
            await client.close()


async def test_a_hung_agent_asked_without_a_sync_is_reported_unreachable(sock: Path) -> None:
    hung = False

    def script(request: dict[str, Any]) -> Answer:
        if hung:
            return None
        return sync_reply(request) if request["execute"] == "guest-sync" else returning(request, "thawed")

    vmi = VMIRef(namespace="ns", name="vm")
    async with fake_agent(sock, script) as agent:
        client = AgentSocketClient(str(sock), timeout=0.2)
        try:
            first, synced = await poll_agent(client, vmi, node="n", observed_at=1.0, budget=5,
                                             commands=("guest-fsfreeze-status",))
            assert synced and first.fs_freeze_status == "thawed"
            second, synced = await poll_agent(client, vmi, node="n", observed_at=2.0, budget=5,
                                              commands=("guest-fsfreeze-status",))
            assert synced and second.connected and second.fs_freeze_status == "thawed"
            hung = True
            third, synced = await poll_agent(client, vmi, node="n", observed_at=3.0, budget=5,
                                             commands=("guest-fsfreeze-status", "guest-get-users"))
        finally:
            await client.close()
    assert executed(agent) == ["guest-sync", "guest-fsfreeze-status", "guest-fsfreeze-status", "guest-fsfreeze-status"]
    assert not synced and not third.connected and third.fs_freeze_status is None
    assert set(third.errors) == {"guest-sync"} and "no answer" in third.errors["guest-sync"]
    assert not client.connected, "the timed-out connection is dropped: the next poll syncs a new one"
