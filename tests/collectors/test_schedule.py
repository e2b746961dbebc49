"""The per-command poll schedule (docs/upstream-behaviour.md §3), on a fake clock."""

from __future__ import annotations

import itertools
import random

import pytest

from collectors.config import DEFAULT_POLL_INTERVALS
from collectors.schedule import CommandSchedule


def polls_of(schedule: CommandSchedule, command: str, until: float, step: float = 0.5) -> list[float]:
    """Walk the clock and poll whatever is due; the times `command` was polled."""
    times: list[float] = []
    now = 0.0
    while now <= until:
        due = schedule.due(now)
        if command in due:
            times.append(now)
        schedule.polled(due, now)
        now += step
    return times


def test_upstream_defaults_warm_up_from_10s_doubling_to_the_interval() -> None:
    schedule = CommandSchedule(DEFAULT_POLL_INTERVALS, warmup=10.0, jitter=0.0)
    # guest-info: at once, then 10, 20, 40, 80, 160 s later, then every 300 s (upstream #4512).
    gaps = [b - a for a, b in itertools.pairwise(polls_of(schedule, "guest-info", 1500))]
    assert gaps[:5] == [10, 20, 40, 80, 160]
    assert set(gaps[5:]) == {300}


def test_short_intervals_poll_at_their_interval_from_the_start() -> None:
    schedule = CommandSchedule(DEFAULT_POLL_INTERVALS, warmup=10.0, jitter=0.0)
    freeze = polls_of(schedule, "guest-fsfreeze-status", 30)
    assert freeze == [0, 5, 10, 15, 20, 25, 30]
    users = polls_of(CommandSchedule(DEFAULT_POLL_INTERVALS, warmup=10.0, jitter=0.0), "guest-get-users", 40)
    assert users == [0, 10, 20, 30, 40]


def test_restart_makes_everything_due_and_warms_up_again() -> None:
    schedule = CommandSchedule(DEFAULT_POLL_INTERVALS, warmup=10.0, jitter=0.0)
    polls_of(schedule, "guest-info", 1000)
    assert schedule.due(1000.5) == ()
    schedule.restart(1001.0)  # agent connected, resumed or rebooted
    assert set(schedule.due(1001.0)) == set(DEFAULT_POLL_INTERVALS)
    schedule.polled(schedule.due(1001.0), 1001.0)
    assert schedule.due_at["guest-info"] == 1011.0


def test_jitter_spreads_vmis_started_together() -> None:
    firsts = []
    for seed in range(50):
        schedule = CommandSchedule(DEFAULT_POLL_INTERVALS, warmup=10.0, jitter=0.1, rng=random.Random(seed))
        schedule.restart(0.0, spread=10.0)
        firsts.append(schedule.next_due())
    assert all(0.0 <= first <= 10.0 for first in firsts)
    assert len({round(first, 3) for first in firsts}) > 40, "a restart must not poll every VMI in the same second"
    schedule = CommandSchedule({"guest-get-users": 10.0}, warmup=10.0, jitter=0.1, rng=random.Random(7))
    schedule.polled(["guest-get-users"], 0.0)
    assert 9.0 <= schedule.due_at["guest-get-users"] <= 11.0


def test_commands_nearly_due_ride_along_within_the_jitter() -> None:
    """A poll also asks the commands whose wait reached (1 - jitter) x their period, so users (10 s)
    keeps coming with every second freeze-status poll (5 s); no wait is shorter than the jitter allows."""
    schedule = CommandSchedule(
        {"guest-fsfreeze-status": 5.0, "guest-get-users": 10.0}, warmup=10.0, jitter=0.1, rng=random.Random(3)
    )
    asked: dict[str, list[float]] = {"guest-fsfreeze-status": [], "guest-get-users": []}
    polls = 0
    now = 0.0
    while now <= 600:
        if schedule.due(now):
            polls += 1
            ready = schedule.ready(now)
            assert set(schedule.due(now)) <= set(ready)
            for command in ready:
                asked[command].append(now)
            schedule.polled(ready, now)
        now = round(now + 0.1, 1)
    users = [b - a for a, b in itertools.pairwise(asked["guest-get-users"])]
    freezes = [b - a for a, b in itertools.pairwise(asked["guest-fsfreeze-status"])]
    assert all(8.95 <= gap <= 11.05 for gap in users) and all(4.45 <= gap <= 5.55 for gap in freezes)
    assert polls == len(asked["guest-fsfreeze-status"]), "users never needs a poll of its own"
    assert 0.95 <= 600 / len(users) / 10 <= 1.05


def test_without_jitter_nothing_is_asked_before_it_is_due() -> None:
    schedule = CommandSchedule(DEFAULT_POLL_INTERVALS, warmup=10.0, jitter=0.0)
    schedule.polled(schedule.due(0.0), 0.0)
    schedule.polled(["guest-fsfreeze-status"], 5.0)
    assert schedule.ready(9.99) == schedule.due(9.99) == ()
    assert set(schedule.ready(10.0)) == set(schedule.due(10.0)) == set(DEFAULT_POLL_INTERVALS)


@pytest.mark.parametrize("poll_time", [0.01, 0.2, 1.5])
def test_late_polls_keep_the_cadence_and_ride_along(poll_time: float) -> None:
    """Rounds come up to half a second after a command falls due and a poll takes time: the next poll is
    still due one period after the last fell due, so users are asked every 10 s and the freeze status
    every 5 s on average, not every 10.7 and 5.7 s (issue 8); and users still ride along with a freeze
    poll instead of drifting into polls of their own."""
    schedule = CommandSchedule(DEFAULT_POLL_INTERVALS, warmup=10.0, jitter=0.1, rng=random.Random(5))
    asked: dict[str, int] = {}
    users_alone = 0
    now = 0.0
    while now <= 3600:
        due = schedule.due(now)
        if due:
            ready = schedule.ready(now)
            assert set(due) <= set(ready)
            users_alone += "guest-get-users" in ready and "guest-fsfreeze-status" not in ready
            ended = now + poll_time
            for command in ready:
                asked[command] = asked.get(command, 0) + 1
            schedule.polled(ready, ended)
            now = ended
        now = round(now + 0.5, 3)  # the next round
    assert 0.98 <= asked["guest-fsfreeze-status"] / (3600 / 5) <= 1.02, asked
    assert 0.98 <= asked["guest-get-users"] / (3600 / 10) <= 1.02, asked
    assert users_alone == 0, "users never needs a poll of its own"


def test_a_very_late_poll_is_not_followed_by_a_burst() -> None:
    schedule = CommandSchedule({"guest-get-users": 10.0}, warmup=10.0, jitter=0.0)
    schedule.polled(["guest-get-users"], 0.0)
    assert schedule.due_at["guest-get-users"] == 10.0
    schedule.polled(["guest-get-users"], 10.4)  # a round 0.4 s late: the cadence holds
    assert schedule.due_at["guest-get-users"] == 20.0
    schedule.polled(["guest-get-users"], 29.0)  # 9 s late (the agent timed out): half a period from now
    assert schedule.due_at["guest-get-users"] == 34.0
