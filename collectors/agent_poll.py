"""One tick of one VMI's guest agent: sync, run the polled commands, build its `AgentReport`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from collectors.agent_protocol import AgentTransport
from collectors.agent_replies import CONVERTERS, convert
from collectors.budget import fit_report
from collectors.errors import AgentError, AgentTimeout, AgentUnavailable
from collectors.metrics import AGENT_CALL_DURATION, AGENT_ERRORS, error_kind
from schemas.events import AgentReport, VMIRef
from schemas.limits import MAX_STRING

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The commands polled every tick, in order (kubevirt-reference §3, the raw-command set).
POLLED_COMMANDS: tuple[str, ...] = tuple(CONVERTERS)
SYNC = "guest-sync"


def short_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:MAX_STRING]


@dataclass
class AgentPoll:
    """What one VMI's agent said so far in this tick (kept when the tick's budget runs out)."""

    synced: bool = False
    fields: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def report(self, vmi: VMIRef, *, node: str, observed_at: float, session: str = "") -> AgentReport:
        """The report of this poll, within the byte budget of one report (`collectors.budget`)."""
        try:
            report = AgentReport(
                vmi=vmi, node=node, observed_at=observed_at, connected=self.synced, session=session,
                errors=self.errors, **self.fields,
            )
        except ValidationError as exc:  # a converter bug, never guest data: report no data at all
            log.error("agent report of %s does not validate: %s", vmi.key, exc)
            return AgentReport(
                vmi=vmi, node=node, observed_at=observed_at, connected=self.synced, session=session,
                errors={"report": short_reason(exc)},
            )
        return fit_report(report)


async def _measured(command: str, call: Awaitable[T]) -> T:
    """Await one agent call, counting its time and, when it fails, its error."""
    started = time.monotonic()
    try:
        return await call
    except AgentError as exc:
        AGENT_ERRORS.labels(command, error_kind(exc)).inc()
        raise
    finally:
        AGENT_CALL_DURATION.labels(command).observe(time.monotonic() - started)


async def poll_into(
    poll: AgentPoll, transport: AgentTransport, commands: tuple[str, ...] = POLLED_COMMANDS
) -> None:
    """Sync, then run each command; a failing command is recorded and its field left null.

    An unreachable or silent agent ends the poll: the remaining commands are not tried this tick.
    """
    try:
        await _measured(SYNC, transport.sync())
    except AgentError as exc:
        poll.errors[SYNC] = short_reason(exc)
        return
    poll.synced = True
    for command in commands:
        field_name = CONVERTERS[command][0]
        try:
            poll.fields[field_name] = await _measured(command, _converted(transport, command))
        except (AgentUnavailable, AgentTimeout) as exc:
            poll.errors[command] = short_reason(exc)
            return
        except AgentError as exc:
            poll.errors[command] = short_reason(exc)


async def _converted(transport: AgentTransport, command: str) -> Any:
    return convert(command, await transport.execute(command))


async def poll_agent(
    transport: AgentTransport,
    vmi: VMIRef,
    *,
    node: str,
    observed_at: float,
    budget: float,
    commands: tuple[str, ...] = POLLED_COMMANDS,
) -> tuple[AgentReport, bool]:
    """The `AgentReport` of one VMI, within `budget` seconds; also whether the agent answered the sync."""
    poll = AgentPoll()
    try:
        async with asyncio.timeout(budget):
            await poll_into(poll, transport, commands)
    except TimeoutError:
        poll.errors["tick"] = f"agent poll exceeded its budget of {budget:g} s"
    return poll.report(vmi, node=node, observed_at=observed_at), poll.synced
