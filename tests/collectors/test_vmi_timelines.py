"""The decisions of one VMI (`collectors.vmi.VMI`), as timelines on a fake clock: data files under
`data/vmi-timelines`, one per rule. No libvirt, no agent, no event loop.

A file has `steps`, each at a time `at` (seconds), one of:
- `shown`: a listing shows the domain `{"state", "id", "agent" (libvirt channel connected), "socket"
  (reached through a socket)}`, in a scheduled round unless `"scheduled": false`;
- `polled`: the poll planned last ended `{"synced", "timed_out", "asked": "all" | [commands],
  "client", "reconnects"}`;
- `event`: a libvirt event of the domain (`rebooted`, `resumed`, `suspended`, ...);
- `socket_gone`: its agent socket went away, `{"held": bool}` (a connection was held to it);
- `poll_running`: true/false, whether a poll is in flight (as the collector's task would be).
and what is `expect`ed of it: `poll` (null: none; `"everything"`; or `{"includes": [...], "excludes":
[...]}`), `void_poll`, `skipped`, `backed_off` (each false unless said), `session` (`"same"` or `"new"`
against the step before), `domains` (the `agent_connected` of each domain report sent now) and
`agents` (the `connected` of each agent report sent now).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from collectors.agent_poll import POLLED_COMMANDS
from collectors.config import DEFAULT_POLL_INTERVALS
from collectors.schedule import CommandSchedule
from collectors.vmi import VMI, PollPlan, Step
from schemas.events import DomainReport, VMIRef

DATA = Path(__file__).parent / "data" / "vmi-timelines"
FILES = sorted(DATA.glob("*.json"))


class FakePoll:
    """Stands for the collector's poll task: only `done()` and `cancel()` are used."""

    def __init__(self) -> None:
        self.running = True

    def done(self) -> bool:
        return not self.running

    def cancel(self) -> bool:
        self.running = False
        return True


def domain_report(shown: dict[str, Any], at: float) -> DomainReport:
    return DomainReport(
        vmi=VMIRef(namespace="default", name="vm", uid="uid-1"), node="node-a", observed_at=1_700_000_000 + at,
        state=shown.get("state", "running"), agent_connected=shown.get("agent", True),
    )


def check_step(step: Step, expect: dict[str, Any], where: str) -> None:
    poll = expect.get("poll")
    if poll is None:
        assert step.poll is None, f"{where}: polled {step.poll}"
    elif poll == "everything":
        assert step.poll == PollPlan(POLLED_COMMANDS, True), f"{where}: {step.poll}"
    else:
        assert step.poll is not None and not step.poll.everything, f"{where}: {step.poll}"
        assert set(poll.get("includes", [])) <= set(step.poll.commands), f"{where}: {step.poll.commands}"
        assert not set(poll.get("excludes", [])) & set(step.poll.commands), f"{where}: {step.poll.commands}"
    for flag in ("void_poll", "skipped", "backed_off"):
        assert getattr(step, flag) is expect.get(flag, False), f"{where}: {flag} is {getattr(step, flag)}"
    if "domains" in expect:
        assert [r.agent_connected for r in step.domains] == expect["domains"], f"{where}: {step.domains}"
    if "agents" in expect:
        assert [r.connected for r in step.agents] == expect["agents"], f"{where}: {step.agents}"


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_vmi_timeline(path: Path) -> None:
    timeline = json.loads(path.read_text())
    intervals = {**DEFAULT_POLL_INTERVALS, **timeline.get("intervals", {})}
    schedule = CommandSchedule(intervals, warmup=10.0, jitter=0.0, rng=random.Random(1))
    first = timeline["steps"][0]["shown"]
    schedule.restart(float(timeline["steps"][0]["at"]))
    vmi = VMI(schedule, max_backoff=timeline.get("max_backoff", 16), domain_id=first.get("id", 1), key="default/vm")
    plan: PollPlan | None = None
    for index, entry in enumerate(timeline["steps"]):
        at, expect = float(entry["at"]), entry.get("expect", {})
        where = f"{path.name} step {index} at {at}"
        session = vmi.session
        if "shown" in entry:
            shown = entry["shown"]
            step = vmi.shown(domain_report(shown, at), shown.get("id", 1), shown.get("socket", False), at,
                             entry.get("scheduled", True))
            check_step(step, expect, where)
            if step.void_poll and isinstance(vmi.poll, FakePoll):
                vmi.poll.cancel()
            if step.poll is not None:
                plan = step.poll
                vmi.poll = FakePoll()  # type: ignore[assignment]
        elif "polled" in entry:
            result = entry["polled"]
            assert plan is not None, f"{where}: no poll was planned"
            asked = list(plan.commands) if result.get("asked", "all") == "all" else result["asked"]
            vmi.poll = None
            vmi.polled(plan, asked, result.get("synced", True), result.get("timed_out", False), at,
                       result.get("client"), result.get("reconnects", 0))
        elif "event" in entry:
            assert vmi.event(entry["event"]) is expect.get("void_poll", False), where
        elif "socket_gone" in entry:
            vmi.socket_gone(entry["socket_gone"]["held"])
        elif "poll_running" in entry:
            vmi.poll = FakePoll() if entry["poll_running"] else None  # type: ignore[assignment]
        if "session" in expect:
            assert (vmi.session == session) is (expect["session"] == "same"), f"{where}: session {expect['session']}"
        for field, value in expect.get("state", {}).items():
            assert getattr(vmi, field) == value, f"{where}: {field} is {getattr(vmi, field)}, not {value}"


def test_every_rule_has_a_timeline() -> None:
    assert len(FILES) >= 8
