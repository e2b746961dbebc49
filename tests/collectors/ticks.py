"""Ticks and polls as the tests take them: one at a time, waiting for everything they started."""

from __future__ import annotations

import asyncio

from collectors.agent_poll import AgentTransport, run_poll
from collectors.node import NodeCollector, TickReports
from schemas.events import AgentReport, VMIRef


async def collect_once(collector: NodeCollector) -> TickReports:
    """One tick, waiting for the agent polls it started: all of its reports, those known at tick time
    first, then each poll's as it ended."""
    collected = TickReports()

    async def keep(reports: TickReports) -> None:
        collected.domains.extend(reports.domains)
        collected.agents.extend(reports.agents)

    polls = await collector.tick(keep)
    if polls:
        await asyncio.wait(polls)
    return collected


async def poll_agent(transport: AgentTransport, vmi: VMIRef, *, node: str, observed_at: float, budget: float,
                     commands: tuple[str, ...] | None = None) -> tuple[AgentReport, bool]:
    """The `AgentReport` of one VMI, within `budget` seconds; also whether the agent answered the sync."""
    poll = await run_poll(transport, vmi, budget=budget, **({"commands": commands} if commands else {}))
    return poll.report(vmi, node=node, observed_at=observed_at), poll.synced
