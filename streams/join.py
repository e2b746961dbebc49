"""The per-VMI join: fold raw domain and agent reports into state, and decide what to emit.

Pure functions, no I/O: the Faust agent (streams.app) feeds them and sends what they return.

Rules:
- A report older (`observedAt`) than the last one applied from the same side is ignored, so a
  reordered event never moves a VMI backwards. A report as old as the last one is a re-delivery:
  the current record is sent again with its revision unchanged (consumers drop it as a duplicate),
  so a crash between the state write and the send never loses a record.
- An agent report replaces only the fields it carries; a null field keeps the previous answer, so
  a failed command or a disconnect never blanks data that was valid before.
- A VMI is emitted once its domain is known. A record is emitted only when its content changed;
  each emission carries the next `revision`. A removed domain emits a tombstone and drops the state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from schemas.codec import encode
from schemas.events import AgentReport, DomainReport, EventModel
from schemas.vmi import VMIRecord, VMIStatusFields
from streams.conditions import conditions, unsupported_reason
from streams.guestosinfo import guest_agent_info
from streams.interfaces import merge_interfaces


class VMIState(EventModel):
    """What the join keeps per VMI in its changelog-backed table."""

    domain: DomainReport | None = None
    agent: AgentReport | None = None
    connected_since: float | None = None
    unsupported_reason: str | None = None
    unsupported_since: float | None = None
    revision: int = 0
    emitted_digest: str = ""


@dataclass(frozen=True, slots=True)
class JoinResult:
    """The new state (None: forget the VMI) and what to send (`record`, or a tombstone)."""

    state: VMIState | None
    record: VMIRecord | None = None
    tombstone: bool = False


def merge_agent(previous: AgentReport | None, report: AgentReport) -> AgentReport:
    """The latest agent answers: fields the new report left null keep their previous value."""
    if previous is None:
        return report
    carried = {
        name: getattr(previous, name)
        for name in ("info", "os", "hostname", "timezone", "users", "filesystems", "interfaces", "fs_freeze_status")
        if getattr(report, name) is None
    }
    return report.model_copy(update=carried)


def apply_domain(state: VMIState, report: DomainReport) -> JoinResult:
    if state.domain is not None and report.observed_at <= state.domain.observed_at:
        return _redelivered(state) if report.observed_at == state.domain.observed_at else JoinResult(state)
    if report.removed:
        return JoinResult(None, tombstone=state.revision > 0)
    connected_since = None
    if report.agent_connected:
        connected_since = state.connected_since if state.connected_since is not None else report.observed_at
    return _emit(state.model_copy(update={"domain": report, "connected_since": connected_since}))


def apply_agent(state: VMIState, report: AgentReport) -> JoinResult:
    if state.agent is not None and report.observed_at <= state.agent.observed_at:
        return _redelivered(state) if report.observed_at == state.agent.observed_at else JoinResult(state)
    return _emit(state.model_copy(update={"agent": merge_agent(state.agent, report)}))


def _redelivered(state: VMIState) -> JoinResult:
    """The event was applied before (at-least-once re-delivery, e.g. after a crash between the state
    write and the send): send the current record again, same revision, so it cannot be lost."""
    if state.domain is None or state.revision == 0:
        return JoinResult(state)
    return JoinResult(state, record=build_record(state, state.revision))


def _judge_agent_version(state: VMIState) -> VMIState:
    """AgentVersionNotSupported: judged only while connected and once guest-info is known."""
    if state.connected_since is None or state.agent is None or state.agent.info is None:
        return state
    reason = unsupported_reason(state.agent.info)
    if reason is None:
        return state.model_copy(update={"unsupported_reason": None, "unsupported_since": None})
    if state.unsupported_reason is None:
        return state.model_copy(
            update={"unsupported_reason": reason, "unsupported_since": state.agent.observed_at}
        )
    return state


def build_record(state: VMIState, revision: int) -> VMIRecord:
    domain = state.domain
    assert domain is not None
    agent = state.agent
    unsupported = None
    if state.unsupported_reason is not None and state.unsupported_since is not None:
        unsupported = (state.unsupported_reason, state.unsupported_since)
    info = guest_agent_info(agent)
    return VMIRecord(
        vmi=domain.vmi,
        node=domain.node,
        revision=revision,
        observed_at=max(domain.observed_at, agent.observed_at if agent else 0.0),
        agent_connected=domain.agent_connected,
        status=VMIStatusFields(
            guest_os_info=info.os,
            interfaces=merge_interfaces(domain.interfaces, agent.interfaces if agent else None),
            conditions=list(conditions(state.connected_since, unsupported)),
        ),
        guest_agent_info=info,
        users=(agent.users or []) if agent else [],
        filesystems=(agent.filesystems or []) if agent else [],
    )


def content_digest(record: VMIRecord) -> str:
    """A digest of what a record says, leaving out its revision and observation time."""
    neutral = record.model_copy(update={"revision": 1, "observed_at": 0.0})
    return hashlib.blake2b(encode(neutral), digest_size=16).hexdigest()


def _emit(state: VMIState) -> JoinResult:
    state = _judge_agent_version(state)
    if state.domain is None:
        return JoinResult(state)
    record = build_record(state, state.revision + 1)
    digest = content_digest(record)
    if digest == state.emitted_digest:
        return JoinResult(state)
    return JoinResult(
        state.model_copy(update={"revision": record.revision, "emitted_digest": digest}), record=record
    )
