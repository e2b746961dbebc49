"""What a collector tick hands over."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from schemas.events import AgentReport, DomainReport


@dataclass
class TickReports:
    """Reports of one tick, or of a part of it: `DomainReport`s (removals among them) and `AgentReport`s."""

    domains: list[DomainReport] = field(default_factory=list)
    agents: list[AgentReport] = field(default_factory=list)


#: Where a tick hands its reports: once for the reports known at tick time, once per finished poll.
Emit = Callable[[TickReports], Awaitable[None]]
