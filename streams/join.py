"""The per-VMI join: fold raw domain and agent reports into state, and decide what to emit.

Pure functions, no I/O: the Faust agent (streams.app) feeds them and sends what they return.

Ordering (at-least-once delivery, two topics read in no fixed order between them):
- One node's reports are ordered by the node's own order (`order`: its boot and the time since it,
  which never steps back), not by its wall clock: a clock stepped back or forward (NTP, a hand) neither
  freezes a VMI nor lets an old report win. Reports of other nodes or boots, and from collectors that
  send no order, are ordered by `observedAt` (`_compare`).
- A report older than the last one applied from the same side is ignored, so a reordered event never
  moves a VMI backwards. A report as old as the last one is a re-delivery:
  the current record is sent again with its revision unchanged (consumers drop it as a duplicate),
  so a crash between the state write and the send never loses a record.
- A removed VMI leaves a small marker (when, which uid, the last revision): reports observed before
  the removal are stale and ignored, so a late event cannot bring a ghost back.
- A report of another uid under the same name is a new VMI (a restart): newer, it replaces the old
  state; older, it is ignored. Revisions keep growing across incarnations of a name. Clocks are
  compared only between reports of one node: a new uid on another node that does not look newer is
  held as the incoming side and takes over when the old VMI's domain goes. A replaced uid has ended:
  its reports are never taken again (`ended_uids`).
- The two raw topics have no order between them: an agent report may come before the domain report
  of its tick. Agent answers that no applied domain report claims yet (before the first one, of a new
  uid, of a migration target) are held (`pending`) and adopted when a domain report of their node and
  uid is taken; answers that can only be of the past (of the node that removed the VMI from before
  the removal, of an earlier uid, of the node a migration left) are dropped.

Ownership (live migration: two nodes report the same VMI):
- The node whose domain report was applied owns the VMI. Another node's report is remembered as the
  incoming side and otherwise ignored; its agent reports are ignored.
- Ownership moves when the incoming node reports the domain running while the owner's is not (the
  switch-over), or when the owner's domain goes away while another node has it. Only when no other
  node has the domain does a removal tombstone the VMI.

Freshness:
- Within one agent session a report replaces only the fields it carries; a null field keeps the
  previous answer, so a failed command or a disconnect never blanks data that was valid before.
- A new agent session (the agent was lost and found again, the domain restarted or rebooted: the
  collector's `session` token changes) voids everything the earlier session said: the new report
  replaces the agent data whole.
- Every part of a record carries when the value shown was observed (`observed`); re-reporting an
  unchanged value keeps its time, so an unchanged input never produces a different record.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from msgspec.structs import replace

from schemas.agent_commands import AGENT_COMMANDS
from streams.conditions import conditions, unsupported_reason
from streams.interfaces import merge_interfaces
from streams.record import Encoded, record_content
from streams.reports import AgentReport, DomainReport, ReportOrder

#: The agent answers (`schemas.agent_commands`), by `AgentReport` field, with their key in
#: `VMIRecord.observed` (the JSON name).
AGENT_FIELDS = {command.field: command.key for command in AGENT_COMMANDS}


class VMIState(msgspec.Struct, frozen=True, rename="camel"):
    """What the join keeps per VMI in its changelog-backed table (camelCase JSON, as it always was)."""

    domain: DomainReport | None = None
    #: The latest report of a node that has the domain but does not own the VMI (migration target).
    incoming: DomainReport | None = None
    agent: AgentReport | None = None
    connected_since: float | None = None
    unsupported_reason: str | None = None
    unsupported_since: float | None = None
    revision: int = 0
    emitted_digest: str = ""
    #: When each part's current value was first reported (see `VMIRecord.observed`).
    observed: dict[str, float] = {}
    #: The node ownership moved away from (a live migration's source): its later reports are late.
    left_node: str | None = None
    #: Set when the VMI was removed: that node's reports observed up to then are stale.
    removed_at: float | None = None
    removed_order: ReportOrder | None = None
    removed_uid: str = ""
    removed_node: str = ""
    #: Agent answers that no applied domain report claims yet: before the first one, of a new uid whose
    #: domain report is still on its way, of a migration target. Adopted when a domain report of their
    #: node and uid is taken (the two raw topics have no order between them).
    pending: AgentReport | None = None
    #: Uids that another uid has replaced under this name, latest first: their reports are never taken
    #: again, whatever the clocks say (KubeVirt creates a name's next VMI only once the last is deleted).
    ended_uids: list[str] = []
    #: The latest answer of each kind of the VMI's agent, across its sessions, as of the last revision,
    #: while `agent` does not tell them all (a new session, the agent away): what the change events of
    #: the next revision compare with (`streams.vmi_events.last_answers`).
    known: AgentReport | None = None


STATES = msgspec.json.Decoder(VMIState)
encode_state = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class JoinResult:
    """The new state and what to send: `record` (the merged record's JSON, as it goes on the topic),
    or a tombstone."""

    state: VMIState
    record: bytes | None = None
    tombstone: bool = False


# --------------------------------------------------------------------------------------------- order


def _compare(at: float, order: ReportOrder | None, node: str,
             other_at: float, other_order: ReportOrder | None, other_node: str) -> int:
    """-1, 0 or 1: observed before, at the same time as, or after the other. Within one boot of one node
    the node's own order decides (`ReportOrder`: it never steps back); otherwise the wall clocks do
    (reports of other nodes, even sharing a kernel, of another boot, or from collectors without order)."""
    if node == other_node and order is not None and other_order is not None and order.boot == other_order.boot:
        return (order.uptime_ns > other_order.uptime_ns) - (order.uptime_ns < other_order.uptime_ns)
    return (at > other_at) - (at < other_at)


def _cmp(report: DomainReport | AgentReport, other: DomainReport | AgentReport) -> int:
    return _compare(report.observed_at, report.order, report.node, other.observed_at, other.order, other.node)


# ---------------------------------------------------------------------------------------------- domain


def apply_domain(state: VMIState, report: DomainReport) -> JoinResult:
    if report.removed:
        state = _forget_pending(state, report)
    if state.removed_at is not None:
        return _after_removal(state, report)
    owner = state.domain
    if owner is None:
        return JoinResult(state) if report.removed else _take(state, report)
    if other_vmi(owner.vmi.uid, report.vmi.uid):
        return _other_incarnation(state, report)
    if report.node != owner.node:
        return _from_other_node(state, report)
    order = _cmp(report, owner)
    if order <= 0:
        return _redelivered(state) if order == 0 else JoinResult(state)
    if report.removed:
        return _owner_gone(state, report)
    if state.incoming is not None and _switch_over(report, state.incoming):
        return _move(state, state.incoming)
    return _take(state, report)


def other_vmi(uid: str, other_uid: str) -> bool:
    """Another VMI under the same name: both uids known and different."""
    return bool(uid and other_uid and uid != other_uid)


#: How many ended uids a state remembers.
ENDED_UIDS = 4


def _fresh(state: VMIState, ended: str) -> VMIState:
    """The state a new incarnation of the name starts from, the uid `ended` replaced: revisions keep
    growing, and agent answers held for the new one stay held."""
    ended_uids = state.ended_uids
    if ended and ended not in ended_uids:
        ended_uids = [ended, *ended_uids][:ENDED_UIDS]
    pending = state.pending if state.pending is not None and state.pending.vmi.uid not in ended_uids else None
    return VMIState(revision=state.revision, pending=pending, ended_uids=ended_uids)


def _forget_pending(state: VMIState, removal: DomainReport) -> VMIState:
    """A node's domain went away: answers held from it of that VMI and from before then are of the past
    (that node's clock); a later stay there brings its own."""
    pending = state.pending
    if pending is None or pending.node != removal.node or other_vmi(pending.vmi.uid, removal.vmi.uid) \
            or _cmp(pending, removal) > 0:
        return state
    return replace(state, pending=None)


def _after_removal(state: VMIState, report: DomainReport) -> JoinResult:
    """The VMI was removed: a report of the removing node from before that, or of the node its last
    migration left, is stale; any other brings the name back as a new incarnation (revisions keep
    growing)."""
    if report.removed or _late(state, report):
        return JoinResult(state)
    ended = state.removed_uid if other_vmi(state.removed_uid, report.vmi.uid) else ""
    return _take(_fresh(state, ended=ended), report)


def _other_incarnation(state: VMIState, report: DomainReport) -> JoinResult:
    """A report of another uid than the owner's. An ended uid's, or an older one from the owner's node
    (one clock), is of the past; a newer one is a new VMI. From another node, clocks are not comparable:
    a report that looks newer is taken (the old VMI's node may be down for good), one that does not is
    held as the incoming side, which takes over when the owner's domain goes (KubeVirt removes a VMI
    before it creates the next one of the name, so the owner's removal is on its way), and is forgotten
    when its own domain goes."""
    assert state.domain is not None
    if _late(state, report):
        return JoinResult(state)
    incoming = state.incoming
    same_incoming = incoming is not None and incoming.node == report.node and incoming.vmi.uid == report.vmi.uid
    if incoming is not None and same_incoming and _cmp(report, incoming) < 0:
        return JoinResult(state)
    if report.removed:
        return JoinResult(replace(state, incoming=None)) if same_incoming else JoinResult(state)
    if _cmp(report, state.domain) > 0:
        return _take(_fresh(state, ended=state.domain.vmi.uid), report)
    return JoinResult(replace(state, incoming=report))


def _switch_over(owner: DomainReport, incoming: DomainReport) -> bool:
    """The incoming node runs the domain and the owner does not: the migration switched over."""
    return incoming.state == "running" and owner.state != "running" and not incoming.removed


def _from_other_node(state: VMIState, report: DomainReport) -> JoinResult:
    assert state.domain is not None
    if report.node == state.left_node:
        # The source of a finished migration: its late reports change nothing (its removal ends that),
        # unless it runs the VMI while the owner does not: a migration back.
        if report.removed:
            return JoinResult(replace(state, left_node=None))
        return _move(state, report) if _switch_over(state.domain, report) else JoinResult(state)
    incoming = state.incoming
    if incoming is not None and incoming.node == report.node and _cmp(report, incoming) < 0:
        return JoinResult(state)
    if report.removed:
        if incoming is not None and incoming.node == report.node:
            return JoinResult(replace(state, incoming=None))
        return JoinResult(state)
    if _switch_over(state.domain, report):
        return _move(state, report)
    return JoinResult(replace(state, incoming=report))


def _owner_gone(state: VMIState, report: DomainReport) -> JoinResult:
    """The owner's domain went away: hand over to a node that runs it, or tombstone the VMI."""
    incoming = state.incoming
    if incoming is not None and incoming.state == "running":
        return _move(state, incoming)
    marker = VMIState(
        revision=state.revision,
        removed_at=report.observed_at,
        removed_order=report.order,
        removed_uid=report.vmi.uid,
        removed_node=report.node,
        left_node=state.left_node,
        pending=state.pending,
        ended_uids=state.ended_uids,
    )
    return JoinResult(marker, tombstone=state.revision > 0)


def _move(state: VMIState, report: DomainReport) -> JoinResult:
    """Ownership moves to `report`'s node; the node it leaves is remembered as the source. A report of
    another uid is a new incarnation there, which starts afresh."""
    assert state.domain is not None
    if other_vmi(state.domain.vmi.uid, report.vmi.uid):
        return _take(_fresh(state, ended=state.domain.vmi.uid), report)
    left = state.domain.node
    return _take(replace(state, incoming=None, left_node=left), report)


def _take(state: VMIState, report: DomainReport) -> JoinResult:
    """Apply `report` as the owner's domain. Agent answers that are not of this VMI on this node
    (an earlier uid, or a node that does not own it) are dropped; answers held for this VMI on this
    node are adopted."""
    moved = state.domain is not None and state.domain.node != report.node
    agent = state.agent
    observed = dict(state.observed)
    if agent is not None and (other_vmi(report.vmi.uid, agent.vmi.uid) or (agent.node != report.node and not moved)):
        agent = None
        observed = {k: v for k, v in observed.items() if k not in AGENT_FIELDS.values()}
    connected_since = None
    if report.agent_connected:
        keep = state.connected_since is not None and not moved
        connected_since = state.connected_since if keep else report.observed_at
    if state.domain is None or replace(state.domain, observed_at=report.observed_at, order=report.order) != report:
        observed["domain"] = report.observed_at
    taken = replace(state, domain=report, agent=agent, connected_since=connected_since, observed=observed)
    pending = taken.pending
    if pending is not None and _claims(report, pending):
        taken = replace(taken, pending=None)
        if not _stale_agent(taken, pending):
            taken = _with_agent(taken, pending)
    return _emit(taken)


# ----------------------------------------------------------------------------------------------- agent


def apply_agent(state: VMIState, report: AgentReport) -> JoinResult:
    owner = state.domain
    if owner is None or not _claims(owner, report):
        return JoinResult(state if _late(state, report) else _hold(state, report))
    previous = state.agent
    if previous is not None and previous.node == report.node and _cmp(report, previous) == 0:
        return _redelivered(state)
    if _stale_agent(state, report):
        return JoinResult(state)
    return _emit(_with_agent(state, report))


def _claims(domain: DomainReport, agent: AgentReport) -> bool:
    """The agent answers are of the VMI of this domain report: the same node and uid."""
    return agent.node == domain.node and not other_vmi(domain.vmi.uid, agent.vmi.uid)


def _stale_agent(state: VMIState, report: AgentReport) -> bool:
    """Older than (or as old as) the answers already applied from the same node."""
    previous = state.agent
    return previous is not None and previous.node == report.node and _cmp(report, previous) <= 0


def _late(state: VMIState, report: AgentReport | DomainReport) -> bool:
    """A report that can only be of the past: of an ended uid; from the node that removed the VMI,
    observed before the removal (whatever its uid: on that node the next incarnation is observed
    later); of the VMI from the node its last migration left; or of an earlier uid on the owner's node
    (one clock)."""
    if report.vmi.uid and report.vmi.uid in state.ended_uids:
        return True
    if state.removed_at is not None and report.node == state.removed_node \
            and _compare(report.observed_at, report.order, report.node,
                         state.removed_at, state.removed_order, state.removed_node) <= 0:
        return True
    owner = state.domain
    uid = owner.vmi.uid if owner is not None else state.removed_uid
    if report.node == state.left_node and not other_vmi(uid, report.vmi.uid):
        return True
    return (
        owner is not None and report.node == owner.node and other_vmi(uid, report.vmi.uid)
        and _cmp(report, owner) <= 0
    )


def _hold(state: VMIState, report: AgentReport) -> VMIState:
    """Keep agent answers that no domain report claims yet (see `VMIState.pending`): the latest, merged
    with earlier ones of the same node, uid and session."""
    pending = state.pending
    if pending is not None and pending.node == report.node and pending.vmi.uid == report.vmi.uid:
        if _cmp(report, pending) <= 0:
            return state
        if report.session == pending.session:
            report = merge_agent(pending, report)
    return replace(state, pending=report)


def _with_agent(state: VMIState, report: AgentReport) -> VMIState:
    """Apply the owner's agent answers (not stale). Within a session a report replaces only the fields
    it carries; a new session, or another node's agent, replaces the agent data whole."""
    previous = state.agent
    same_source = previous is not None and previous.node == report.node
    new_session = previous is None or not same_source or report.session != previous.session
    agent = report if previous is None or new_session else merge_agent(previous, report)
    observed = {k: v for k, v in state.observed.items() if k not in AGENT_FIELDS.values()}
    for name, key in AGENT_FIELDS.items():
        value = getattr(agent, name)
        if value is None:
            continue
        unchanged = not new_session and previous is not None and getattr(previous, name) == value
        observed[key] = state.observed[key] if unchanged and key in state.observed else report.observed_at
    return replace(state, agent=agent, observed=observed)


def merge_agent(previous: AgentReport, report: AgentReport) -> AgentReport:
    """The latest answers of one session: fields the new report left null keep their previous value."""
    carried = {name: getattr(previous, name) for name in AGENT_FIELDS if getattr(report, name) is None}
    return replace(report, **carried)


# ---------------------------------------------------------------------------------------------- output


def _redelivered(state: VMIState) -> JoinResult:
    """The event was applied before (at-least-once re-delivery, e.g. after a crash between the state
    write and the send): send the current record again, same revision, so it cannot be lost."""
    if state.domain is None or state.revision == 0:
        return JoinResult(state)
    return JoinResult(state, record=Encoded(_content(state)).record(state.revision, observed_at(state)))


def _judge_agent_version(state: VMIState) -> VMIState:
    """AgentVersionNotSupported: judged only while connected and once guest-info is known."""
    if state.connected_since is None or state.agent is None or state.agent.info is None or state.domain is None:
        return state
    reason = unsupported_reason(state.agent.info, state.domain.access_credentials)
    if reason is None:
        return replace(state, unsupported_reason=None, unsupported_since=None)
    if state.unsupported_reason is None:
        return replace(state, unsupported_reason=reason, unsupported_since=state.agent.observed_at)
    return state


def _content(state: VMIState) -> dict[str, object]:
    """What the VMI's record says (`streams.record`), leaving out its revision and observation time."""
    domain = state.domain
    assert domain is not None
    agent = state.agent
    unsupported = None
    if state.unsupported_reason is not None and state.unsupported_since is not None:
        unsupported = (state.unsupported_reason, state.unsupported_since)
    return record_content(
        domain.vmi, domain.node, domain.agent_connected,
        merge_interfaces(domain.interfaces, agent.interfaces if agent else None),
        conditions(state.connected_since, unsupported), agent, state.observed,
    )


def observed_at(state: VMIState) -> float:
    """The record's `observedAt`: its latest report's."""
    assert state.domain is not None
    return max(state.domain.observed_at, state.agent.observed_at if state.agent else 0.0)


def _emit(state: VMIState) -> JoinResult:
    """Send the record when what it says changed (its digest), with the next revision."""
    state = _judge_agent_version(state)
    if state.domain is None:
        return JoinResult(state)
    encoded = Encoded(_content(state))
    if encoded.digest == state.emitted_digest:
        return JoinResult(state)
    revision = state.revision + 1
    record = encoded.record(revision, observed_at(state))
    return JoinResult(replace(state, revision=revision, emitted_digest=encoded.digest), record=record)
