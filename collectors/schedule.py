"""When each agent command of one VMI is due (kubevirt-reference §3, upstream virt-launcher's poller).

Every command has an interval (`CollectorConfig.poll_intervals`). After a `restart` (an agent found,
a resume, a reboot) every command is due at once; then each waits `warmup` seconds, the wait doubling
after each poll until it reaches the command's interval. Commands whose interval is at most `warmup`
poll at their interval from the start. Every wait is stretched by a random factor in
[1 - jitter, 1 + jitter], so VMIs started together drift apart.
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
        self._rng = rng or random.Random()
        self.period: dict[str, float] = {}
        self.due_at: dict[str, float] = {}
        self.restart(0.0)

    def _stretch(self, seconds: float) -> float:
        return seconds * self._rng.uniform(1 - self.jitter, 1 + self.jitter)

    def restart(self, now: float, *, spread: float = 0.0) -> None:
        """Every command due at `now` (plus one random offset within `spread` for the whole VMI), and
        the warm-up starts over."""
        offset = self._rng.uniform(0, spread) if spread > 0 else 0.0
        for command, interval in self.intervals.items():
            self.period[command] = min(self.warmup, interval)
            self.due_at[command] = now + offset

    def due(self, now: float) -> tuple[str, ...]:
        """The commands due at `now`, in polling order."""
        return tuple(command for command, at in self.due_at.items() if at <= now)

    def polled(self, commands: Iterable[str], now: float) -> None:
        """`commands` were asked (answered or failed): each is next due after its period, which doubles."""
        for command in commands:
            period = self.period[command]
            self.due_at[command] = now + self._stretch(period)
            self.period[command] = min(period * 2, self.intervals[command])

    def defer(self, commands: Iterable[str], now: float) -> None:
        """`commands` were due but not asked (no agent, backed off, cut short): try again after one
        warm-up period (or their interval, when shorter), without doubling."""
        for command in commands:
            self.due_at[command] = now + self._stretch(min(self.warmup, self.intervals[command]))

    def next_due(self) -> float:
        return min(self.due_at.values(), default=float("inf"))
