"""A scripted QGA unix-socket server, for replies a real qemu-ga cannot give (garbage, stale, huge):
a script per test over the simulated guest agent (`guestinfo.lab.agent`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeAlias

import orjson

from guestinfo.lab import agent

#: Given a request, the raw lines to write back (each should end with "\n", or not, to cut a line);
#: None: stay silent; "close" (alone or as the last item of the list): drop the connection.
Answer: TypeAlias = list[bytes | str] | str | None
Script = Callable[[dict[str, Any]], Answer]


def line(value: Any) -> bytes:
    return orjson.dumps(value) + b"\n"


def returning(request: dict[str, Any], value: Any) -> list[bytes | str]:
    """The reply line qemu-ga writes: the return value and the request's id, when it had one."""
    return [agent.returning(request, value)]


def sync_reply(request: dict[str, Any], *, echo_id: bool = True) -> list[bytes | str]:
    return [agent.sync_reply(request, echo_id=echo_id)]


class FakeAgent:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self._writers: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await agent.serve(reader, writer, self.deliver)
        finally:
            self._writers.discard(writer)

    def deliver(self, request: dict[str, Any]) -> agent.Delivery | None:
        """The script's answer as the simulated agent's delivery."""
        self.requests.append(request)
        answer = self.script(request)
        if answer is None:
            return None
        if answer == "close":
            return agent.Delivery(close=True)
        return agent.Delivery([chunk for chunk in answer if isinstance(chunk, bytes)], close="close" in answer)

    def drop_connections(self) -> None:
        """Close every open connection, as an agent that exits does."""
        for writer in list(self._writers):
            writer.close()


@asynccontextmanager
async def fake_agent(path: Path, script: Script) -> AsyncIterator[FakeAgent]:
    """Serve `script` on `path` until the block ends; then stop listening and close every connection."""
    agent = FakeAgent(script)
    server = await asyncio.start_unix_server(agent.handle, path=str(path), limit=2**24)
    try:
        yield agent
    finally:
        server.close()
        agent.drop_connections()
        await server.wait_closed()
