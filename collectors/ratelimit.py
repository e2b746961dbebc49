"""Logging that does not repeat itself every tick."""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable

#: A repeated identical warning is logged again (at WARNING) after this many seconds.
REPEAT_AFTER = 300.0


class RateLimitedLog:
    """Logs a warning once per key and message, again when it changes or after `repeat_after`
    seconds; repetitions in between go to DEBUG. `recovered` logs once when a key's problem ends."""

    def __init__(self, logger: logging.Logger, repeat_after: float = REPEAT_AFTER) -> None:
        self._logger = logger
        self._repeat_after = repeat_after
        self._last: dict[Hashable, tuple[str, float]] = {}

    def warning(self, key: Hashable, message: str, *args: object) -> None:
        text = message % args
        now = time.monotonic()
        last = self._last.get(key)
        if last is None or last[0] != text or now - last[1] >= self._repeat_after:
            self._last[key] = (text, now)
            self._logger.warning("%s", text)
        else:
            self._logger.debug("%s (repeated)", text)

    def recovered(self, key: Hashable, message: str, *args: object) -> None:
        if self._last.pop(key, None) is not None:
            self._logger.info(message, *args)
