"""A scripted QGA unix-socket server, for replies a real qemu-ga cannot give (garbage, stale, huge)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

#: Given a request, the raw lines to write back (each should end with "\n"); None: stay silent;
#: "close": drop the connection.
Script = Callable[[dict[str, Any]], "list[bytes] | str | None"]


def sync_reply(request: dict[str, Any]) -> list[bytes]:
    return [orjson.dumps({"return": request["arguments"]["id"]}) + b"\n"]


class FakeAgent:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[dict[str, Any]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while line := await reader.readline():
                request = orjson.loads(line)
                self.requests.append(request)
                answer = self.script(request)
                if answer == "close":
                    break
                if isinstance(answer, list):
                    for chunk in answer:
                        writer.write(chunk)
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def fake_agent(path: Path, script: Script) -> AsyncIterator[FakeAgent]:
    agent = FakeAgent(script)
    server = await asyncio.start_unix_server(agent.handle, path=str(path), limit=2**24)
    try:
        yield agent
    finally:
        server.close()
        await server.wait_closed()
