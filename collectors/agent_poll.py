"""One tick of one VMI's guest agent: sync, run the polled commands, build its `AgentReport`.

A poll's `budget` is agent time: the seconds its calls take, not the time they wait for a slot of the
node's concurrency cap (`slots`, held per call, so a slow agent holds one slot for one call at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from collectors.agent_protocol import AgentTransport
from collectors.agent_replies import CONVERTERS, CURRENT_GUEST, convert
from collectors.budget import fit_report
from collectors.errors import AgentError, AgentTimeout, AgentUnavailable
from collectors.metrics import AGENT_CALL_DURATION, AGENT_ERRORS, error_kind
from schemas.events import AgentReport, ReportOrder, VMIRef
from schemas.limits import MAX_STRING

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Something to hold while one agent call runs (a slot of the node's concurrency cap); its argument
#: tells whether the call is the poll's first (the sync) or one of a poll that has synced.
Slots = Callable[[bool], AbstractAsyncContextManager[object]]

#: The commands polled every tick, in order (docs/upstream-behaviour.md §3, the raw-command set).
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
    #: A call timed out, or the poll ran out of its budget (the agent is slow or silent).
    timed_out: bool = False

    def report(self, vmi: VMIRef, *, node: str, observed_at: float, order: ReportOrder | None = None,
               session: str = "") -> AgentReport:
        """The report of this poll, within the byte budget of one report (`collectors.budget`)."""
        try:
            report = AgentReport(
                vmi=vmi, node=node, observed_at=observed_at, order=order, connected=self.synced, session=session,
                errors=self.errors, **self.fields,
            )
        except ValidationError as exc:  # a converter bug, never guest data: report no data at all
            log.error("agent report of %s does not validate: %s", vmi.key, exc)
            return AgentReport(
                vmi=vmi, node=node, observed_at=observed_at, order=order, connected=self.synced, session=session,
                errors={"report": short_reason(exc)},
            )
        return fit_report(report)


#: The duration histogram of each command (`labels` looks the child up on every call otherwise).
_DURATIONS: dict[str, Any] = {}


async def _measured(command: str, call: Awaitable[T]) -> T:
    """Await one agent call, counting its time and, when it fails, its error."""
    started = time.monotonic()
    try:
        return await call
    except AgentError as exc:
        AGENT_ERRORS.labels(command, error_kind(exc)).inc()
        raise
    finally:
        histogram = _DURATIONS.get(command)
        if histogram is None:
            histogram = _DURATIONS[command] = AGENT_CALL_DURATION.labels(command)
        histogram.observe(time.monotonic() - started)


async def poll_into(
    poll: AgentPoll, transport: AgentTransport, commands: tuple[str, ...] = POLLED_COMMANDS
) -> None:
    """Sync, then run each command; a failing command is recorded and its field left null.

    The sync is skipped on a connection that needs none (`AgentTransport.try_skip_sync`): the first
    command then stands for it, and when it gets no answer at all (timeout, connection lost) the poll
    is recorded as if the sync had failed. An unreachable or silent agent ends the poll: the remaining
    commands are not tried this tick.
    """
    skipped = bool(commands) and transport.try_skip_sync()
    if not skipped:
        try:
            await _measured(SYNC, transport.sync())
        except AgentError as exc:
            poll.errors[SYNC] = short_reason(exc)
            poll.timed_out = isinstance(exc, AgentTimeout)
            return
        poll.synced = True
    for command in commands:
        field_name = CONVERTERS[command][0]
        try:
            poll.fields[field_name] = await _measured(command, _converted(transport, command))
        except (AgentUnavailable, AgentTimeout) as exc:
            poll.errors[command if poll.synced else SYNC] = short_reason(exc)
            poll.timed_out = isinstance(exc, AgentTimeout)
            return
        except AgentError as exc:
            poll.errors[command] = short_reason(exc)
        poll.synced = True  # it answered (a skipped sync is confirmed by the first answer)


async def _converted(transport: AgentTransport, command: str) -> Any:
    return convert(command, await transport.execute(command))


class BudgetExceeded(Exception):
    """The calls of one poll took all of its budget."""


class BudgetedTransport:
    """A transport whose calls each hold one of `slots` while they run, and share `budget` seconds of
    call time: a call is cut when the budget runs out, and none starts after that."""

    def __init__(self, inner: AgentTransport, budget: float, slots: Slots | None = None) -> None:
        self.inner = inner
        self.remaining = budget
        self._slots = slots
        #: Longest an inner call can take by its own timeout (the budget needs no timer of its own above).
        self._call_limit = inner.max_call_seconds
        #: The next call is the poll's first (a skipped sync): it waits for a slot as a sync does.
        self._first = True

    @property
    def max_call_seconds(self) -> float:
        return min(self._call_limit, max(self.remaining, 0.0))

    async def sync(self) -> None:
        self._first = False
        await self._run(self.inner.sync, first=True)

    def try_skip_sync(self) -> bool:
        return self.remaining > 0 and self.inner.try_skip_sync()

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        first, self._first = self._first, False
        return await self._run(lambda: self.inner.execute(command, arguments), first=first)

    async def close(self) -> None:
        await self.inner.close()

    async def _run(self, call: Callable[[], Awaitable[T]], *, first: bool) -> T:
        async with self._slots(first) if self._slots is not None else contextlib.nullcontext():
            if self.remaining <= 0:
                raise BudgetExceeded
            started = time.monotonic()
            try:
                if self.remaining > self._call_limit:  # the call's own timeout ends it within the budget
                    return await call()
                async with asyncio.timeout(self.remaining):
                    return await call()
            except TimeoutError:
                raise BudgetExceeded from None
            finally:
                self.remaining -= time.monotonic() - started


async def run_poll(
    transport: AgentTransport,
    vmi: VMIRef,
    *,
    budget: float,
    slots: Slots | None = None,
    commands: tuple[str, ...] = POLLED_COMMANDS,
) -> AgentPoll:
    """One VMI's poll: its calls take `budget` seconds of agent time at most, each holding one of
    `slots` (the time waiting for a slot is not counted)."""
    poll = AgentPoll()
    token = CURRENT_GUEST.set(vmi.key)
    try:
        await poll_into(poll, BudgetedTransport(transport, budget, slots), commands)
    except BudgetExceeded:
        poll.errors["tick"] = f"agent poll exceeded its budget of {budget:g} s"
        poll.timed_out = True
    finally:
        CURRENT_GUEST.reset(token)
    return poll
