"""The libvirt agent transport: error mapping, and the test driver (which lacks the agent call)."""

from __future__ import annotations

import libvirt
import pytest

from collectors.agent_libvirt import LibvirtAgentTransport, map_libvirt_error
from collectors.errors import AgentCommandError, AgentError, AgentTimeout, AgentUnavailable


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (libvirt.VIR_ERR_NO_SUPPORT, "this function is not supported by the connection driver", AgentUnavailable),
        (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, "Guest agent is not responding: not connected", AgentUnavailable),
        (libvirt.VIR_ERR_AGENT_UNSYNCED, "guest agent replied with wrong id", AgentUnavailable),
        (libvirt.VIR_ERR_OPERATION_INVALID, "domain is not running", AgentUnavailable),
        (libvirt.VIR_ERR_NO_DOMAIN, "Domain not found", AgentUnavailable),
        (libvirt.VIR_ERR_OPERATION_TIMEOUT, "Guest agent is not responding", AgentTimeout),
        (
            libvirt.VIR_ERR_INTERNAL_ERROR,
            "internal error: unable to execute QEMU agent command 'guest-x': The command guest-x has not been found",
            AgentCommandError,
        ),
        (libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: something else", AgentUnavailable),
    ],
)
def test_libvirt_error_mapping(code: int, message: str, expected: type[AgentError]) -> None:
    error = map_libvirt_error("guest-x", code, message)
    assert type(error) is expected
    if isinstance(error, AgentCommandError):
        assert error.desc == "The command guest-x has not been found"


async def test_test_driver_agent_call_is_unavailable() -> None:
    conn = libvirt.open("test:///default")
    try:
        transport = LibvirtAgentTransport(conn.lookupByName("test"), timeout=2)
        with pytest.raises(AgentUnavailable, match="not supported"):
            await transport.execute("guest-info")
        with pytest.raises(AgentUnavailable):
            await transport.sync()
    finally:
        conn.close()
