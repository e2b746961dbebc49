"""Logging that does not repeat itself: per key, once per period (keys may be tenant-chosen: bounded)."""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable

#: A repeated identical warning is logged again (at WARNING) after this many seconds.
REPEAT_AFTER = 300.0
#: Keys remembered at most (the oldest are forgotten first): keys may name tenant-chosen VMIs.
MAX_KEYS = 10_000


class RateLimitedLog:
    """Logs a warning once per key and message, again when it changes or after `repeat_after`
    seconds; repetitions in between go to DEBUG. `recovered` logs once when a key's problem ends.

    `note` is for lines about tenant-written data: once per key (whatever the text, which the tenant
    may vary) every `repeat_after` seconds, at the level given; the rest go to DEBUG.
    """

    def __init__(self, logger: logging.Logger, repeat_after: float = REPEAT_AFTER) -> None:
        self._logger = logger
        self._repeat_after = repeat_after
        self._last: dict[Hashable, tuple[str, float]] = {}

    def warning(self, key: Hashable, message: str, *args: object) -> None:
        text = message % args
        now = time.monotonic()
        last = self._last.get(key)
        if last is None or last[0] != text or now - last[1] >= self._repeat_after:
            self._remember(key, text, now)
            self._logger.warning("%s", text)
        else:
            self._logger.debug("%s (repeated)", text)

    def note(self, level: int, key: Hashable, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        text = message % args
        if last is None or now - last[1] >= self._repeat_after:
            self._remember(key, text, now)
            self._logger.log(level, "%s", text)
        else:
            self._logger.debug("%s (repeated)", text)

    def recovered(self, key: Hashable, message: str, *args: object) -> None:
        if self._last.pop(key, None) is not None:
            self._logger.info(message, *args)

    def _remember(self, key: Hashable, text: str, now: float) -> None:
        self._last.pop(key, None)
        self._last[key] = (text, now)
        while len(self._last) > MAX_KEYS:
            del self._last[next(iter(self._last))]
