"""The QEMU guest agent JSON protocol: one request line, one reply line, over a unix socket.

Every request carries an `"id"`, which qemu-ga echoes in its reply (`{"return": ..., "id": ...}`).
Lines that answer no request of ours (unsolicited output, replies to another id, garbage, partial
lines left from before) are skipped, up to `MAX_STRAY_LINES` per reply. A reply without any id is
taken only from an agent whose `guest-sync` reply on this connection did not echo the id either
(an agent too old to echo ids); from one that does, it is stray too.

A connection is synchronised with `guest-sync` when it opens, and again (as libvirt's agent code
does) only when it may be out of step: after stray lines were seen on it, when it has not answered
for `RESYNC_AFTER_IDLE` seconds, or with an agent that does not echo ids (whose replies only the sync
tells apart). A timeout, a bad reply or a lost connection drops it, so the next call opens and
synchronises a new one. A poll on a connection that needs none skips the sync (`try_skip_sync`): its
first call then stands for it, and a connection it finds closed by the agent (restarted since the
last poll) is counted in `reconnects`, replaced and synchronised, and the call asked again once.

Every reply is guest-written: it is bounded in size and depth before it is looked at, and anything
unexpected is an `AgentProtocolError`, never a crash.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import secrets
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol, TypeVar

import orjson

from collectors.errors import (
    AgentCommandError,
    AgentError,
    AgentProtocolError,
    AgentTimeout,
    AgentUnavailable,
)
from collectors.metrics import AGENT_STRAY_LINES
from schemas.limits import MAX_REPLY_BYTES, MAX_REPLY_DEPTH

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Default seconds allowed for one agent call (libvirt's QEMU_AGENT_WAIT_TIME is 5 s too).
DEFAULT_TIMEOUT = 5.0
#: Stray lines skipped while waiting for one reply (the `guest-sync` reply included) before giving up.
MAX_STRAY_LINES = 32
#: A held connection that has not answered for this many seconds is synchronised again before use.
RESYNC_AFTER_IDLE = 60.0
_MAX_ERROR_TEXT = 512


class AgentTransport(Protocol):
    """A way to talk to one guest agent: a direct unix socket or libvirt's agent channel."""

    @property
    def max_call_seconds(self) -> float:
        """The longest one call can take before its own timeout ends it."""
        ...

    async def sync(self) -> None:
        """Make sure the agent answers; raises an `AgentError` when it does not."""
        ...

    def try_skip_sync(self) -> bool:
        """True when the next call may go without a `sync` first (it then stands for the sync: a
        connection it finds closed is replaced at once); False when `sync` is needed."""
        ...

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Run one command and return its `return` value; raises an `AgentError` on any failure."""
        ...

    async def close(self) -> None:
        """Release the connection; the transport may be used again afterwards (it reconnects)."""
        ...


def encode_request(
    command: str, arguments: Mapping[str, Any] | None = None, *, request_id: str | None = None
) -> bytes:
    """One request line of the agent protocol; with `request_id`, the agent echoes it in the reply."""
    request: dict[str, Any] = {"execute": command}
    if arguments is not None:
        request["arguments"] = dict(arguments)
    if request_id is not None:
        request["id"] = request_id
    return orjson.dumps(request) + b"\n"


def json_depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
        if depth + 1 > MAX_REPLY_DEPTH:
            return depth + 1
        stack.extend((child, depth + 1) for child in children)
    return deepest


def decode_reply(line: bytes | str) -> dict[str, Any]:
    """Decode one reply line into its JSON object, within the size and depth limits."""
    size = len(line)
    if size > MAX_REPLY_BYTES:
        raise AgentProtocolError(f"reply of {size} bytes exceeds {MAX_REPLY_BYTES}")
    try:
        reply = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise AgentProtocolError(f"reply is not JSON: {exc}") from exc
    if not isinstance(reply, dict):
        raise AgentProtocolError(f"reply is a JSON {type(reply).__name__}, not an object")
    check_depth(reply)
    return reply


def check_depth(reply: dict[str, Any], line: bytes | None = None) -> None:
    """`reply` (decoded from `line`, when given) is nested no deeper than `MAX_REPLY_DEPTH`."""
    if line is not None and line.count(b"{") + line.count(b"[") <= MAX_REPLY_DEPTH:
        return  # each level opens a bracket: fewer brackets than levels allowed (the common case)
    if json_depth(reply) > MAX_REPLY_DEPTH:
        raise AgentProtocolError(f"reply nested deeper than {MAX_REPLY_DEPTH}")


def reply_value(command: str, reply: Mapping[str, Any]) -> Any:
    """The `return` value of a decoded reply; an `error` reply raises `AgentCommandError`."""
    if "error" in reply:
        error = reply["error"]
        if not isinstance(error, dict):
            raise AgentProtocolError(f"{command}: `error` is not an object")
        return_class = error.get("class")
        desc = error.get("desc")
        raise AgentCommandError(
            command,
            str(return_class)[:_MAX_ERROR_TEXT] if return_class is not None else "GenericError",
            str(desc)[:_MAX_ERROR_TEXT] if desc is not None else "",
        )
    if "return" not in reply:
        raise AgentProtocolError(f"{command}: reply has neither `return` nor `error`")
    return reply["return"]


class AgentSocketClient:
    """Client of one agent socket (qemu-ga `-m unix-listen`, or a virtio-serial channel's host end).

    Calls are serialised (the agent handles one request at a time and accepts one client). A new
    connection is synchronised with `guest-sync` before use; any transport or protocol failure drops
    the connection so that the next call reconnects and re-synchronises. `sync` always asks the agent.
    `sync` on a held connection that the agent closed in the meantime (it was restarted) counts it in
    `reconnects` and reconnects once at once, and so does the first call after `try_skip_sync`; a
    connection this client dropped itself (timeout, bad reply) is not counted.
    """

    def __init__(self, path: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        #: Times a held connection was found closed by the agent and replaced (the agent restarted).
        self.reconnects = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        #: Whether this connection's agent echoed the id of our `guest-sync`.
        self._echoes_ids = True
        #: The connection is in step: synchronised, and no stray line seen on it since.
        self._in_sync = False
        #: Loop time of the last reply read on this connection.
        self._answered_at = 0.0
        #: The next call stands for a skipped sync (`try_skip_sync`).
        self._confirm_next = False
        self._lock = asyncio.Lock()
        self._id_prefix = secrets.token_hex(4)
        self._ids = itertools.count(1)

    @property
    def max_call_seconds(self) -> float:
        return self.timeout + 1.5  # its timeout covers the whole call, then closing waits 1 s at most

    @property
    def connected(self) -> bool:
        """An open connection is held (it may still turn out dead on the next call)."""
        return self._writer is not None

    @property
    def echoes_ids(self) -> bool:
        """The agent echoed our request id in its last `guest-sync` reply (true until known)."""
        return self._echoes_ids

    @property
    def sync_needed(self) -> bool:
        """A `sync` must come before the next call: no connection is held, or the one held may be out
        of step (stray lines seen, closed by the agent, silent for `RESYNC_AFTER_IDLE` seconds, or an
        agent that does not echo ids)."""
        return (
            self._writer is None or self._reader is None or not self._in_sync or not self._echoes_ids
            or self._reader.at_eof()
            or asyncio.get_running_loop().time() - self._answered_at > RESYNC_AFTER_IDLE
        )

    def try_skip_sync(self) -> bool:
        """Skip the sync when none is needed: the next call then stands for it (a connection it finds
        closed is counted in `reconnects`, replaced and synchronised, and the call asked again)."""
        if self._lock.locked() or self.sync_needed:
            return False
        self._confirm_next = True
        return True

    async def sync(self) -> None:
        """Make sure the agent answers now: connect if needed, then a fresh `guest-sync` round."""
        async with self._lock:
            self._confirm_next = False
            await self._guarded(self._resynchronise())

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        async with self._lock:
            confirm, self._confirm_next = self._confirm_next, False
            return await self._guarded(self._call(command, arguments, confirm=confirm))

    async def close(self) -> None:
        writer = self._drop()
        if writer is None:
            return
        try:
            await asyncio.wait_for(writer.wait_closed(), timeout=1.0)
        except (OSError, TimeoutError):
            pass

    def _drop(self) -> asyncio.StreamWriter | None:
        writer, self._reader, self._writer = self._writer, None, None
        self._in_sync = self._confirm_next = False
        if writer is not None:
            writer.close()
        return writer

    async def _guarded(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await call
        except AgentCommandError:
            raise
        except asyncio.CancelledError:
            # A reply may still be on its way: it must not be read as the answer to the next request.
            self._drop()
            raise
        except TimeoutError as exc:
            await self.close()
            raise AgentTimeout(f"no answer from {self.path} within {self.timeout:g} s") from exc
        except AgentError:
            await self.close()
            raise
        except (OSError, EOFError) as exc:
            await self.close()
            raise AgentUnavailable(f"agent socket {self.path}: {exc}") from exc

    async def _resynchronise(self) -> None:
        if self._writer is None:
            await self._ensure_connected()  # a new connection is synchronised as it opens
            return
        try:
            await self._synchronise()
        except (AgentUnavailable, OSError) as exc:
            await self._replace_lost(exc)

    async def _replace_lost(self, exc: BaseException) -> None:
        """The agent closed the held connection since the last call (it was restarted): one new try."""
        log.debug("agent socket %s: held connection lost (%s), reconnecting", self.path, exc)
        self._drop()
        self.reconnects += 1  # counted even when the agent is not back yet: it did close on us
        await self._ensure_connected()

    async def _ensure_connected(self) -> None:
        if self._writer is not None:
            return
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                self.path, limit=MAX_REPLY_BYTES + 1
            )
        except OSError as exc:
            raise AgentUnavailable(f"cannot connect to {self.path}: {exc}") from exc
        self._echoes_ids = True
        await self._synchronise()

    def _next_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    async def _synchronise(self) -> None:
        token = random.randrange(1, 2**31)
        request_id = self._next_id()
        await self._send(encode_request("guest-sync", {"id": token}, request_id=request_id))
        for _ in range(MAX_STRAY_LINES + 1):
            line = await self._read_line()
            reply = _json_object(line)
            if reply is None:
                self._stray("not_json", line)
                continue
            if reply.get("return") == token and reply.get("id", request_id) == request_id:
                self._echoes_ids = "id" in reply
                self._in_sync = True
                self._answered_at = asyncio.get_running_loop().time()
                return
            if "id" in reply and reply["id"] == request_id:
                answer = reply["error"] if "error" in reply else reply.get("return")
                raise AgentProtocolError(f"guest-sync answered {str(answer)[:120]!r}, not {token}")
            self._stray("other_id" if "id" in reply else "stale_sync", line)
        raise AgentProtocolError(f"no guest-sync reply among {MAX_STRAY_LINES} stray lines")

    async def _call(self, command: str, arguments: Mapping[str, Any] | None, *, confirm: bool = False) -> Any:
        if confirm and self._writer is not None:
            request_id = self._next_id()
            try:
                await self._send(encode_request(command, arguments, request_id=request_id))
                reply = await self._read_reply(command, request_id)
            except (AgentUnavailable, OSError) as exc:
                # Found closed by the first call of a poll that skipped its sync: as that sync would have.
                await self._replace_lost(exc)
            else:
                return reply_value(command, reply)
        await self._ensure_connected()
        request_id = self._next_id()
        await self._send(encode_request(command, arguments, request_id=request_id))
        return reply_value(command, await self._read_reply(command, request_id))

    async def _read_reply(self, command: str, request_id: str) -> dict[str, Any]:
        for _ in range(MAX_STRAY_LINES + 1):
            line = await self._read_line()
            reply = _json_object(line)
            if reply is None:
                self._stray("not_json", line)
            elif "id" in reply and reply["id"] != request_id:
                self._stray("other_id", line)
            elif "id" not in reply and self._echoes_ids:
                self._stray("no_id", line)
            else:
                check_depth(reply, line)
                self._answered_at = asyncio.get_running_loop().time()
                return reply
        raise AgentProtocolError(f"{command}: no reply among {MAX_STRAY_LINES} stray lines")

    def _stray(self, reason: str, line: bytes) -> None:
        self._in_sync = False  # the connection carries what we did not ask for: synchronise it again
        AGENT_STRAY_LINES.labels(reason).inc()
        log.debug("agent socket %s: stray line skipped (%s): %.120r", self.path, reason, line[:120])

    async def _send(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    async def _read_line(self) -> bytes:
        assert self._reader is not None
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raise AgentUnavailable(f"agent socket {self.path} closed") from exc
        except asyncio.LimitOverrunError as exc:
            raise AgentProtocolError(f"reply line longer than {MAX_REPLY_BYTES} bytes") from exc
        return line


def _json_object(line: bytes) -> dict[str, Any] | None:
    """The JSON object of one line, or None when the line is not one (invalid JSON or UTF-8, NaN,
    a partial line, an array or scalar)."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
