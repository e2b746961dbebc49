"""The simulated guest agent: the QGA protocol on a unix socket, for the fleet simulator and the tests.

One connection loop (`serve`) reads a request per line and asks an answerer what to deliver. A guest
answers like a healthy agent (`returning`, `sync_reply`, `command_not_found`), or, for the replies a
real qemu-ga cannot give, with the hostile options of `Delivery`: any bytes (garbage, a line cut short,
another request's id), silence, a flood of unsolicited lines first, a delay, or the connection closed
after writing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Delivery:
    """What to write for one request."""

    #: Written in order; a line without its "\n" is cut short.
    lines: Sequence[bytes] = ()
    #: Seconds to wait before writing.
    delay: float = 0.0
    #: Unsolicited event lines written first.
    flood: int = 0
    #: Close the connection after writing.
    close: bool = False


#: Given a request, what to deliver; None: stay silent.
Answerer = Callable[[dict[str, Any]], Delivery | None]


def returning(request: dict[str, Any], value: Any) -> bytes:
    """The reply line qemu-ga writes: the return value and the request's id, when it had one."""
    reply: dict[str, Any] = {"return": value}
    if "id" in request:
        reply["id"] = request["id"]
    return orjson.dumps(reply) + b"\n"


def sync_reply(request: dict[str, Any], *, echo_id: bool = True) -> bytes:
    """The reply to `guest-sync`: its argument back (and the request's id, unless `echo_id` is off)."""
    reply: dict[str, Any] = {"return": request.get("arguments", {}).get("id")}
    if echo_id and "id" in request:
        reply["id"] = request["id"]
    return orjson.dumps(reply) + b"\n"


def command_not_found(request: dict[str, Any]) -> bytes:
    reply: dict[str, Any] = {"error": {"class": "CommandNotFound", "desc": f"command {request.get('execute')} "
                                       "has not been found"}}
    if "id" in request:
        reply["id"] = request["id"]
    return orjson.dumps(reply) + b"\n"


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: Answerer) -> None:
    """Answer requests on one connection until the client leaves, a delivery closes it, or a request
    line is over the reader's limit. Lines that are not a JSON object are ignored."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        try:
            while line := await reader.readline():
                try:
                    request = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(request, dict):
                    continue
                delivery = answer(request)
                if delivery is None:
                    continue
                if not await _deliver(writer, delivery):
                    break
        finally:
            writer.close()


async def _deliver(writer: asyncio.StreamWriter, delivery: Delivery) -> bool:
    """Write one delivery; False when the connection is to be closed."""
    if delivery.delay:
        await asyncio.sleep(delivery.delay)
    for number in range(delivery.flood):
        if writer.is_closing():
            return False
        writer.write(b'{"event": "unsolicited", "n": %d}\n' % number)
    for line in delivery.lines:
        writer.write(line)
    await writer.drain()
    return not delivery.close
