"""When each agent command of one VMI is due (docs/upstream-behaviour.md §3, upstream virt-launcher's poller).

Every command has an interval (`CollectorConfig.poll_intervals`). After a `restart` (an agent found,
a resume, a reboot) every command is due at once; then each waits `warmup` seconds, the wait doubling
after each poll until it reaches the command's interval. Commands whose interval is at most `warmup`
poll at their interval from the start. Every wait is stretched by a random factor in
[1 - jitter, 1 + jitter], so VMIs started together drift apart. A wait counts from when the poll fell
due, not from when it ended, as upstream's tickers do: a scheduler round that comes late or a slow
agent does not stretch every later period (users stay at 10 s on average, not 10.5 s).

A poll asks the commands due, and with them each command of the VMI that would be due before the
next poll could come (within (1 + jitter) x the shortest interval) and whose wait has reached the
short end of that range ((1 - jitter) x its period): `ready`, as if its random factor had come out
lower. The commands asked in one poll share one random factor. So one VMI's commands keep coming
in one poll (e.g. users with every second freeze-status poll, the others with the freeze-status poll
just before they are due) instead of drifting into polls of their own, and no wait, counted from
when the polls fell due, is shorter or longer than the jitter allows.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

from collectors.agent_poll import POLLED_COMMANDS


class CommandSchedule:
    """The next due time (on the event loop's clock) and current period of each command of one VMI."""

    def __init__(
        self, intervals: Mapping[str, float], *, warmup: float, jitter: float, rng: random.Random | None = None
    ) -> None:
        self.intervals = {command: intervals[command] for command in POLLED_COMMANDS if command in intervals}
        self.warmup = warmup
        self.jitter = jitter
        #: The longest time between two polls of a command of the shortest interval.
        self._horizon = (1 + jitter) * min(self.intervals.values(), default=0.0)
        self._rng = rng or random.Random()
        self.period: dict[str, float] = {}
        self.due_at: dict[str, float] = {}
        #: From when each command may be asked along with a due one.
        self.ready_at: dict[str, float] = {}
        self.restart(0.0)

    def _stretch(self, seconds: float) -> float:
        return seconds * self._rng.uniform(1 - self.jitter, 1 + self.jitter)

    def restart(self, now: float, *, spread: float = 0.0) -> None:
        """Every command due at `now` (plus one random offset within `spread` for the whole VMI), and
        the warm-up starts over."""
        offset = self._rng.uniform(0, spread) if spread > 0 else 0.0
        for command, interval in self.intervals.items():
            self.period[command] = min(self.warmup, interval)
            self.due_at[command] = self.ready_at[command] = now + offset

    def due(self, now: float) -> tuple[str, ...]:
        """The commands due at `now`, in polling order."""
        return tuple(command for command, at in self.due_at.items() if at <= now)

    def ready(self, now: float) -> tuple[str, ...]:
        """The commands to ask in a poll at `now` (when some are due): the due ones, and those whose wait
        has reached (1 - jitter) x its period, in polling order."""
        return tuple(command for command, at in self.ready_at.items() if at <= now)

    def polled(self, commands: Iterable[str], now: float) -> None:
        """`commands` were asked (answered or failed) in a poll that ended at `now`: each is next due one
        period after the poll fell due, as a ticker, so a poll that started late or took time does not
        push every later poll back (the scheduler runs rounds up to half a second apart); but never
        within half a period of `now`, so a very late poll is not followed by a burst. The period doubles."""
        asked = list(commands)
        factor = self._stretch(1.0)  # one factor and one origin for the poll: its commands stay in step
        fell_due = min([now, *(self.due_at[command] for command in asked)])
        for command in asked:
            period = self.period[command]
            due = max(fell_due + period * factor, now + period * factor / 2)
            self.due_at[command] = due
            # Askable early from the same origin, so the window in which it rides along with another
            # command's poll does not shrink by the poll's lateness; never within half of that of `now`.
            early = (1 - self.jitter) * period
            self.ready_at[command] = min(due, max(fell_due + early, now + early / 2, due - self._horizon))
            self.period[command] = min(period * 2, self.intervals[command])

    def defer(self, commands: Iterable[str], now: float) -> None:
        """`commands` were due but not asked (no agent, backed off, cut short): try again after one
        warm-up period (or their interval, when shorter), without doubling."""
        factor = self._stretch(1.0)
        for command in commands:
            wait = min(self.warmup, self.intervals[command])
            self.due_at[command] = now + wait * factor
            self.ready_at[command] = max(now + wait * (1 - self.jitter), self.due_at[command] - self._horizon)

    def next_due(self) -> float:
        return min(self.due_at.values(), default=float("inf"))
