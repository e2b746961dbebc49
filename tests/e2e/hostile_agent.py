"""A guest agent for the hostile corpus: the simulated guest agent (`guestinfo.lab.agent`) answering
like a healthy agent for the first ticks, then following the case's script (tests/e2e/hostile/*.json)
through its delivery options.

Script actions per command (or "*" for all): `reply` (a JSON value), `generate` (users: N,
hostnameLength: N), `raw` (a line as text), `rawRepeat` (prefix + item * count + suffix), `rawHex`
(bytes), `silent`, `close` (after what was written), `flood` (N junk lines first), `delay` (seconds),
`id` (answer with another request id).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from guestinfo.lab import agent

HOSTILE = Path(__file__).parent / "hostile"
HEALTHY: dict[str, Any] = orjson.loads((HOSTILE / "healthy_agent.json").read_bytes())["replies"]


def healthy_reply(command: str, mac: str) -> Any:
    reply = HEALTHY.get(command)
    if command == "guest-network-get-interfaces":
        return orjson.loads(orjson.dumps(reply).replace(b'"MAC"', orjson.dumps(mac)))
    return reply


def generated(spec: dict[str, int]) -> Any:
    if "users" in spec:
        return [{"user": f"user{i:05d}", "login-time": 1718000000 + i} for i in range(spec["users"])]
    return {"host-name": "h" * spec["hostnameLength"]}


def body_line(action: dict[str, Any], request_id: Any) -> bytes:
    """The reply line an action asks for (without flood or delay)."""
    if "raw" in action:
        return str(action["raw"]).encode() + (b"" if action.get("close") else b"\n")
    if "rawRepeat" in action:
        spec = action["rawRepeat"]
        text = spec["prefix"] + spec["separator"].join([spec["item"]] * spec["count"]) + spec["suffix"]
        return text.encode() + b"\n"
    if "rawHex" in action:
        return bytes.fromhex(action["rawHex"]) + b"\n"
    value = generated(action["generate"]) if "generate" in action else action["reply"]
    answer: dict[str, Any] = {"return": value}
    answer["id"] = action.get("id", request_id)
    return orjson.dumps(answer) + b"\n"


#: A request after this many quiet seconds starts a new tick: the collector's next poll (its commands
#: come in a burst; the collector sends `guest-sync` only when a connection may be out of step, so that
#: cannot mark a poll).
TICK_GAP = 0.3


class ScriptedAgent:
    """One VMI's agent. `pulse`: the hostname changes every tick (`pulse-<tick>`), to watch freshness."""

    def __init__(self, mac: str, case: dict[str, Any] | None = None, pulse: bool = False) -> None:
        self.mac = mac
        self.case = case
        self.pulse = pulse
        self.ticks = 0
        self._last_request = float("-inf")

    def _count_tick(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_request >= TICK_GAP:
            self.ticks += 1
        self._last_request = now

    def action(self, command: str) -> dict[str, Any] | None:
        if self.case is None or self.ticks <= self.case["healthyTicks"]:
            return None
        script = self.case["script"]
        return script.get(command) or script.get("*")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await agent.serve(reader, writer, self.deliver)

    def deliver(self, request: dict[str, Any]) -> agent.Delivery | None:
        """Healthy answers for the first ticks, then the case's action, as the simulated agent's options."""
        command, request_id = request.get("execute"), request.get("id")
        self._count_tick()
        if command == "guest-sync":
            return agent.Delivery([agent.sync_reply(request)])
        action = self.action(str(command))
        if action is None or set(action) <= {"flood", "delay"}:
            value = healthy_reply(str(command), self.mac)
            if self.pulse and command == "guest-get-host-name":
                value = {"host-name": f"pulse-{self.ticks}"}
            line = orjson.dumps({"return": value, "id": request_id}) + b"\n"
        else:
            line = b"" if action.get("silent") else body_line(action, request_id)
        if action is None:
            return agent.Delivery([line])
        return agent.Delivery([line], delay=action.get("delay", 0.0), flood=action.get("flood", 0),
                              close=bool(action.get("close")))


@contextlib.asynccontextmanager
async def serve_agent(path: Path, agent: ScriptedAgent) -> AsyncIterator[ScriptedAgent]:
    server = await asyncio.start_unix_server(agent.handle, path=str(path), limit=2**20)
    try:
        yield agent
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)
