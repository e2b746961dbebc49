"""A scripted producer for the join's delivery tests: what aiokafka's `send` does, without a broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

#: What the scripted producer answers a send with: None (delivered), an error, or a future to await.
Outcome = BaseException | None | asyncio.Future[object]


@dataclass(frozen=True)
class Stored:
    """Where a delivered record went (what `deliver` reads of aiokafka's RecordMetadata)."""

    topic: str
    partition: int
    offset: int


@dataclass
class ScriptedProducer:
    """Answers each send with `script(topic, key, attempt)`; records every send."""

    script: Callable[[str, bytes, int], Outcome] = lambda topic, key, attempt: None
    sent: list[tuple[str, bytes, bytes | None]] = field(default_factory=list)

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, timestamp_ms: int | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[object]:
        assert key is not None
        attempt = sum(1 for t, k, _ in self.sent if (t, k) == (topic, key))
        self.sent.append((topic, key, value))
        outcome = self.script(topic, key, attempt)
        if isinstance(outcome, asyncio.Future):
            return outcome
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if outcome is None:
            future.set_result(Stored(topic, 0, len(self.sent) - 1))
        else:
            future.set_exception(outcome)
        return future

    def to(self, topic: str) -> list[tuple[bytes, bytes | None]]:
        return [(key, value) for t, key, value in self.sent if t == topic]

    def per_key(self) -> dict[bytes, int]:
        """How many times each key was sent."""
        counts: dict[bytes, int] = {}
        for _, key, _ in self.sent:
            counts[key] = counts.get(key, 0) + 1
        return counts


def scripts(outcomes: dict[bytes, list[BaseException | None]]) -> Callable[[str, bytes, int], Outcome]:
    """Each key's outcomes in turn (None: delivered); the last one repeats."""
    return lambda topic, key, attempt: outcomes[key][min(attempt, len(outcomes[key]) - 1)]
