"""The guest agent reached through libvirt (`virDomainQemuAgentCommand`), run in a worker thread.

libvirt does the `guest-sync` itself before every command and owns the channel, so this transport
keeps no connection of its own. Only the QEMU driver implements the call.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

import libvirt
import libvirt_qemu

from collectors.agent_protocol import DEFAULT_TIMEOUT, decode_reply, encode_request, reply_value
from collectors.errors import AgentCommandError, AgentError, AgentTimeout, AgentUnavailable

#: libvirt's wording when the agent answered `{"error": ...}` (qemuAgentCheckError).
_COMMAND_FAILED_MARKER = "unable to execute QEMU agent command"
_TIMEOUT_CODES = frozenset({libvirt.VIR_ERR_OPERATION_TIMEOUT})


def map_libvirt_error(command: str, code: int, message: str) -> AgentError:
    """The agent error meaning the libvirt error `code` with `message` raised by an agent command."""
    message = message[:512]
    if code in _TIMEOUT_CODES:
        return AgentTimeout(f"{command}: {message}")
    if code == libvirt.VIR_ERR_INTERNAL_ERROR and _COMMAND_FAILED_MARKER in message:
        # "unable to execute QEMU agent command 'guest-x': <desc>"
        desc = message.split(_COMMAND_FAILED_MARKER, 1)[1].split(":", 1)[-1].strip()
        return AgentCommandError(command, "GenericError", desc)
    # Not supported by the driver, agent not connected/unresponsive/unsynced, domain not running or
    # gone, connection to libvirt lost: in every case there is no agent to talk to right now.
    return AgentUnavailable(f"{command}: {message} (libvirt error {code})")


class LibvirtAgentTransport:
    """`AgentTransport` over libvirt's agent channel of one domain."""

    def __init__(
        self, domain: libvirt.virDomain, *, timeout: float = DEFAULT_TIMEOUT, executor: Executor | None = None
    ) -> None:
        self.domain = domain
        self.timeout = timeout
        self._executor = executor

    @property
    def max_call_seconds(self) -> float:
        return self.timeout + 1.5  # its asyncio timeout is `timeout` + 1 s

    async def sync(self) -> None:
        await self.execute("guest-ping")

    def try_skip_sync(self) -> bool:
        return False  # holds no connection of its own: each poll asks `guest-ping` first

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        request = encode_request(command, arguments).decode()
        seconds = max(1, math.ceil(self.timeout))
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout + 1.0):
                raw = await loop.run_in_executor(self._executor, self._command, command, request, seconds)
        except TimeoutError as exc:
            raise AgentTimeout(f"{command}: libvirt did not return within {self.timeout:g} s") from exc
        return reply_value(command, decode_reply(raw))

    async def close(self) -> None:
        return None

    def _command(self, command: str, request: str, seconds: int) -> str:
        try:
            raw = libvirt_qemu.qemuAgentCommand(self.domain, request, seconds, 0)
        except libvirt.libvirtError as exc:
            raise map_libvirt_error(command, exc.get_error_code() or 0, str(exc)) from None
        if raw is None:
            raise AgentUnavailable(f"{command}: libvirt returned no reply")
        return str(raw)
