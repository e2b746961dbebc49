"""One VMI as its node's collector follows it: the agent session, what the last listing showed, the poll
schedule and back-off, and the decisions about them.

`VMI.shown(...)` takes what a listing shows of the VMI (its domain report, libvirt domain id, whether
its agent is reached through a socket) and the time, and says what to do (`Step`): the reports known
now, whether to void the poll in flight, and which commands to poll. `VMI.polled(...)` takes how a poll
went. Neither does any I/O nor calls back into the collector: the decisions are tested as timelines
(`tests/collectors/data/vmi-timelines`). The rules (from `collectors/node.py`'s description):

- The agent session is renewed only on evidence that the agent or the guest restarted: a new domain
  id, the libvirt agent channel going from disconnected to connected, a reboot event, or the agent
  closing the socket connection the collector held.
- A paused domain is not polled and its agent stays connected; a poll in flight is voided; its resume
  asks every command at once and forgets earlier timeouts.
- A scheduled round polls only the due commands (every command for an agent newly found, resumed or
  rebooted); a VMI whose poll still runs is skipped; one whose polls timed out waits 1, 2, 4 ...
  `max_backoff_ticks` rounds.
- A VMI whose agent cannot be asked (not running, no libvirt channel) is reported disconnected.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field

from collectors.agent_poll import POLLED_COMMANDS
from collectors.schedule import CommandSchedule
from schemas.events import AgentReport, DomainReport

log = logging.getLogger(__name__)

#: Events after which every command is asked at once.
_ASK_EVERYTHING = frozenset({"rebooted", "resumed", "agent-connected", "started"})
#: Events that void a poll in flight: what it asks is void (a rebooted guest) or will not be answered.
_VOID_POLL = frozenset({"rebooted", "suspended", "stopped", "shutdown", "crashed", "undefined", "pmsuspended"})


def new_session() -> str:
    """A fresh agent session token: 12 random hex characters."""
    return secrets.token_hex(6)


@dataclass(frozen=True, slots=True)
class PollPlan:
    """The commands to ask; `everything`: asked as after a (re)start, so the warm-up starts over."""

    commands: tuple[str, ...]
    everything: bool


@dataclass(slots=True)
class Step:
    """What to do for one VMI after a listing."""

    domains: list[DomainReport] = field(default_factory=list)
    agents: list[AgentReport] = field(default_factory=list)
    #: Cancel the poll in flight (and wait for it) before anything else.
    void_poll: bool = False
    poll: PollPlan | None = None
    #: Not polled: its previous poll still runs / it is backing off (for the metrics).
    skipped: bool = False
    backed_off: bool = False


@dataclass(slots=True)
class VMI:
    """What the collector keeps of one VMI between listings."""

    schedule: CommandSchedule
    max_backoff: int = 16
    session: str = field(default_factory=new_session)
    #: libvirt's domain id in the last listing (-1 while the domain is not running).
    domain_id: int = -1
    #: Whether the agent answered in the last poll; None before the first.
    answered: bool | None = None
    #: The libvirt agent channel's state in the last listing; None before the first.
    channel: bool | None = None
    #: The socket client of the last poll (its identity) and its reconnect count after that poll.
    client: object | None = None
    reconnects: int = 0
    #: Polls in a row that timed out, and the rounds left before the next poll (the back-off).
    timeouts: int = 0
    backoff: int = 0
    #: The poll in flight, if any (started by the collector from a `PollPlan`).
    poll: asyncio.Task[None] | None = None
    #: Poll every command at the next chance (a resume, reboot or agent-connected event).
    poll_all: bool = False
    #: The domain's state in its last listing.
    listed: str | None = None
    key: str = ""

    @property
    def busy(self) -> bool:
        return self.poll is not None and not self.poll.done()

    def renew(self, why: str) -> None:
        self.session = new_session()
        log.info("agent of %s: new session (%s)", self.key, why)

    def due_at(self, running: bool) -> float | None:
        """When this VMI is next due for a scheduled poll (0: at once); None while it cannot be polled (not
        listed running, or mid-poll: the poll's end queues it again)."""
        if not running or (self.poll is not None and not self.poll.done()):
            return None
        return 0.0 if self.poll_all else self.schedule.next_due()

    def wants_poll(self, now: float) -> bool:
        """Whether a scheduled round should look at this VMI now."""
        return self.poll_all or bool(self.schedule.due(now))

    def shown(self, report: DomainReport, domain_id: int, through_socket: bool, now: float, scheduled: bool) -> Step:
        """What to do now that a listing shows the VMI so (see the module's rules)."""
        step = Step()
        busy = self.busy
        if domain_id != self.domain_id:
            log.info("domain %s: id %s → %s (restarted)", self.key, self.domain_id, domain_id)
            self.renew("the domain restarted")
            self.domain_id = domain_id
            self.poll_all = True
            step.void_poll, busy = busy, False
        if not through_socket:
            self._follow_channel(report.agent_connected)
        if self.listed == "paused" and report.state == "running":
            self.resumed()  # also without an event
        self.listed = report.state
        if report.state == "paused":
            step.void_poll = step.void_poll or busy
            self._unpolled(step, report, through_socket)
            return step
        commands, everything = POLLED_COMMANDS, True
        if scheduled and report.state == "running":
            due = self.schedule.due(now)
            if not busy and not due and not self.poll_all:  # nothing to ask now
                self._unpolled(step, report, through_socket)
                return step
            if self.answered is True and not self.poll_all and due:
                commands, everything = self.schedule.ready(now), False  # the due ones, and those nearly due
        if busy:
            step.skipped = True
            if not through_socket:
                step.domains.append(report)
            return step
        if self.backoff > 0 and report.state == "running":
            self.backoff -= 1
            self.schedule.defer(self.schedule.due(now), now)
            step.backed_off = True
            step.domains.append(
                report.model_copy(update={"agent_connected": bool(self.answered)}) if through_socket else report
            )
            return step
        if report.state != "running" or not (through_socket or report.agent_connected):
            self.answered = False
            self.poll_all = False  # nothing to poll now: the schedule's deferral tries again, no busy loop
            self.schedule.defer(self.schedule.due(now), now)
            step.domains.append(report.model_copy(update={"agent_connected": False}) if through_socket else report)
            step.agents.append(self.disconnected(report))
            return step
        if not through_socket:
            step.domains.append(report)
        self.poll_all = False
        step.poll = PollPlan(commands, everything)
        return step

    def disconnected(self, report: DomainReport, errors: dict[str, str] | None = None) -> AgentReport:
        """The agent report of an agent that could not be asked."""
        return AgentReport(
            vmi=report.vmi, node=report.node, observed_at=report.observed_at, order=report.order, connected=False,
            session=self.session, errors=errors or {},
        )

    def polled(
        self, plan: PollPlan, asked: list[str], synced: bool, timed_out: bool, now: float,
        client: object | None = None, reconnects: int = 0,
    ) -> None:
        """A poll ended: `asked` the commands answered or failed, `synced` whether the agent answered at
        all, `timed_out` whether a call timed out; for an agent reached through a socket, the client and
        its reconnect count (a reconnect means the agent closed the connection held: a new session)."""
        if synced and plan.everything:
            self.schedule.restart(now)  # everything asked anew (not merely all due at once): warm-up from here
        self.schedule.polled(asked, now)
        self.schedule.defer([c for c in plan.commands if c not in asked], now)
        self._follow_backoff(timed_out)
        self.answered = synced
        if client is None:
            return
        if self.client is not client:  # a new client: its count starts from here
            self.client, self.reconnects = client, 0
        if reconnects != self.reconnects:
            self.reconnects = reconnects
            self.renew("it closed its socket since the last poll")

    def socket_gone(self, held_connection: bool) -> None:
        """The VMI's agent socket (of `agent_socket_dir`) is gone; a connection held to it means the agent
        closed it (it stopped), so its session ends."""
        if held_connection:
            self.renew("its socket is gone")
        self.client = None

    def event(self, kind: str) -> bool:
        """A libvirt event of the domain; True when the poll in flight must be voided."""
        if kind == "rebooted":
            self.renew("the domain rebooted")
        if kind == "resumed":
            self.resumed()
        if kind in _ASK_EVERYTHING:
            self.poll_all = True
        return kind in _VOID_POLL and self.busy

    def resumed(self) -> None:
        """The domain runs again after a pause: every command is asked at once, as upstream restarts its
        pollers; timeouts from before (a paused guest does not answer) no longer hold the VMI back."""
        self.poll_all = True
        self.timeouts = self.backoff = 0

    def _follow_channel(self, connected: bool) -> None:
        """The libvirt agent channel in this listing: disconnected → connected renews the session (the
        guest's agent reopened its port: it or the guest restarted)."""
        if self.channel is False and connected:
            self.renew("its libvirt channel connected again")
        self.channel = connected

    def _follow_backoff(self, timed_out: bool) -> None:
        """A timed-out poll doubles the back-off (in rounds, capped); any other poll ends it."""
        if not timed_out:
            if self.timeouts:
                log.info("agent of %s: answers in time again, back-off ended", self.key)
            self.timeouts = self.backoff = 0
            return
        self.timeouts += 1
        self.backoff = min(2 ** (self.timeouts - 1), self.max_backoff)

    def _unpolled(self, step: Step, report: DomainReport, through_socket: bool) -> None:
        """The domain report of a VMI not polled now (nothing due, or paused). An agent reached through a
        socket is as connected as its last poll found it; before its first poll that is unknown, and the
        domain report waits for the poll."""
        if not through_socket:
            step.domains.append(report)
        elif self.answered is not None:
            step.domains.append(report.model_copy(update={"agent_connected": self.answered}))
