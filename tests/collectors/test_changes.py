"""Only changes are published; full resyncs; a bounded per-VMI buffer while Kafka is away."""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import REGISTRY

from collectors.changes import ChangeTracker, Outbox, StatePublisher
from collectors.reports import TickReports
from schemas.events import AgentReport, DomainReport, GuestTimezone, VMIRef
from schemas.topics import AGENT_TOPIC, DOMAIN_TOPIC
from tests.collectors.test_publisher import FlakyProducer


def vmi(name: str) -> VMIRef:
    return VMIRef(namespace="ns", name=name)


def domain(name: str, at: float, *, removed: bool = False, state: str = "running") -> DomainReport:
    return DomainReport(vmi=vmi(name), node="n", observed_at=at, removed=removed, state=state)  # type: ignore[arg-type]


def agent(name: str, at: float, session: str = "s1", **fields: object) -> AgentReport:
    return AgentReport(vmi=vmi(name), node="n", observed_at=at, connected=True, session=session, **fields)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_unchanged_data_publishes_nothing_and_a_change_only_its_field() -> None:
    tracker = ChangeTracker(300.0, clock=Clock())
    first = tracker.changes(TickReports(
        domains=[domain("a", 1.0)], agents=[agent("a", 1.0, hostname="h", users=[], timezone=GuestTimezone(zone="UTC"))]
    ))
    assert len(first.domains) == 1 and first.agents[0].hostname == "h", "the first report carries everything"

    same = tracker.changes(TickReports(
        domains=[domain("a", 2.0)], agents=[agent("a", 2.0, hostname="h", users=[], timezone=GuestTimezone(zone="UTC"))]
    ))
    assert same.domains == [] and same.agents == []

    changed = tracker.changes(TickReports(
        domains=[domain("a", 3.0, state="paused")],
        agents=[agent("a", 3.0, hostname="h2", users=[], timezone=GuestTimezone(zone="UTC"))],
    ))
    assert [d.state for d in changed.domains] == ["paused"]
    (delta,) = changed.agents
    assert delta.hostname == "h2" and delta.users is None and delta.timezone is None

    renewed = tracker.changes(TickReports(agents=[agent("a", 4.0, session="s2", hostname="h2")]))
    assert renewed.agents[0].hostname == "h2", "a new session's first report carries everything"


def test_the_periodic_resync_publishes_the_whole_state() -> None:
    clock = Clock()
    tracker = ChangeTracker(100.0, jitter=0.1, clock=clock)
    tracker.changes(TickReports(domains=[domain("a", 1.0)], agents=[agent("a", 1.0, hostname="h")]))
    tracker.changes(TickReports(agents=[agent("a", 2.0, fs_freeze_status="thawed")]))
    assert tracker.due_resyncs() == TickReports()
    before = REGISTRY.get_sample_value("guestinfo_collector_full_resyncs_total", {"reason": "periodic"}) or 0.0
    clock.now = 111.0
    full = tracker.due_resyncs()
    assert [d.vmi.key for d in full.domains] == ["ns/a"]
    (state,) = full.agents
    assert (state.hostname, state.fs_freeze_status) == ("h", "thawed")
    assert REGISTRY.get_sample_value("guestinfo_collector_full_resyncs_total", {"reason": "periodic"}) == before + 1
    assert tracker.due_resyncs() == TickReports(), "next one a jittered interval later"
    assert 90.0 + 111.0 <= tracker.next_resync() <= 110.0 + 111.0


def test_the_outbox_keeps_one_state_per_vmi() -> None:
    outbox = Outbox()
    for at in range(100):
        outbox.put(TickReports(domains=[domain("a", float(at))], agents=[agent("a", float(at), hostname=f"h{at}")]))
    outbox.put(TickReports(agents=[agent("a", 100.0, users=[])]))
    assert len(outbox) == 1
    assert (outbox.agents["ns/a"].hostname, outbox.agents["ns/a"].users) == ("h99", [])
    outbox.put(TickReports(domains=[domain("b", 1.0, removed=True)]))
    taken = outbox.take()
    assert len(outbox) == 0
    outbox.put(TickReports(agents=[agent("a", 200.0, hostname="newer")]))
    outbox.put_back([*taken.domains, *taken.agents])
    assert outbox.agents["ns/a"].hostname == "newer" and outbox.agents["ns/a"].users == []
    assert outbox.domains["ns/b"].removed, "a removal is kept until sent"
    outbox.put(TickReports(domains=[domain("b", 5.0)]))
    assert not outbox.domains["ns/b"].removed, "a live report of the VMI voids its pending removal"


async def test_kafka_away_buffers_the_latest_state_then_republishes_everything() -> None:
    class Started(FlakyProducer):
        async def stop(self) -> None: ...

    started = Started()
    started.down = True

    async def start(_servers: str) -> Started:
        return started

    publisher = StatePublisher("dead:1", resync_interval=300.0, producer_factory=start)
    task = asyncio.create_task(publisher.run())
    try:
        for at in range(20):
            await publisher.send(TickReports(
                domains=[domain(name, float(at)) for name in ("a", "b", "c")],
                agents=[agent(name, float(at), hostname=f"{name}{at}") for name in ("a", "b", "c")],
            ))
            await asyncio.sleep(0.02)
        await publisher.send(TickReports(domains=[domain("c", 30.0, removed=True)]))
        assert len(publisher.outbox) <= 3
        assert REGISTRY.get_sample_value("guestinfo_collector_buffered_vmis") == len(publisher.outbox)
        assert started.delivered == []

        started.down = False
        async with asyncio.timeout(10):
            while not any(r["removed"] for t, _, r in started.delivered if t == DOMAIN_TOPIC) or publisher.outbox:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    agents = [r for t, _, r in started.delivered if t == AGENT_TOPIC]
    domains = [(k, r["removed"]) for t, k, r in started.delivered if t == DOMAIN_TOPIC]
    assert {r["hostname"] for r in agents if r["vmi"]["name"] == "a"} == {"a19"}, "only the latest state"
    assert (b"ns/c", True) in domains
    # After the outage, the full state of every VMI is sent again (a and b: c is gone).
    assert domains.count((b"ns/a", False)) >= 2 and domains.count((b"ns/b", False)) >= 2
    assert not any(k == b"ns/c" and not removed for k, removed in domains)


def test_an_agent_report_beside_its_vmis_removal_is_dropped() -> None:
    """A removal and an agent report of the same VMI in one batch: nothing of the VMI is kept or sent after."""
    tracker = ChangeTracker(resync_interval=3600)
    ref = VMIRef(namespace="ns", name="gone")
    tracker.changes(TickReports(domains=[DomainReport(vmi=ref, node="n", observed_at=1.0)]))
    out = tracker.changes(TickReports(
        domains=[DomainReport(vmi=ref, node="n", observed_at=2.0, removed=True)],
        agents=[AgentReport(vmi=ref, node="n", observed_at=2.0, connected=True, session="s", hostname="h")],
    ))
    assert [d.removed for d in out.domains] == [True] and out.agents == []
    assert tracker.full().agents == [] and tracker.full().domains == []


def test_changes_are_found_against_the_state_handed_over_field_by_field() -> None:
    """Each poll asks some commands: a field is compared with its last value handed over (whichever poll
    brought it), a change back is a change too, and a nested domain change is seen."""
    tracker = ChangeTracker(300.0, clock=Clock())
    tracker.changes(TickReports(agents=[agent("a", 1.0, hostname="h", fs_freeze_status="thawed")]))
    assert not tracker.changes(TickReports(agents=[agent("a", 2.0, fs_freeze_status="thawed")])).agents
    (frozen,) = tracker.changes(TickReports(agents=[agent("a", 3.0, fs_freeze_status="frozen")])).agents
    assert frozen.fs_freeze_status == "frozen" and frozen.hostname is None
    assert not tracker.changes(TickReports(agents=[agent("a", 4.0, hostname="h")])).agents
    (thawed,) = tracker.changes(TickReports(agents=[agent("a", 5.0, fs_freeze_status="thawed")])).agents
    assert thawed.fs_freeze_status == "thawed", "back to the earlier value is a change"
    assert tracker.full([vmi("a").key]).agents[0].hostname == "h"

    up = DomainReport.model_validate({**domain("b", 1.0).model_dump(), "interfaces": [{"name": "x"}]})
    down = DomainReport.model_validate(
        {**up.model_dump(), "observedAt": 2.0, "interfaces": [{"name": "x", "linkState": "down"}]}
    )
    assert tracker.changes(TickReports(domains=[up])).domains == [up]
    assert tracker.changes(TickReports(domains=[up.model_copy(update={"observed_at": 3.0})])).domains == []
    assert tracker.changes(TickReports(domains=[down])).domains == [down]
