"""When each VMI's next agent poll is due: one heap for the whole node.

A heap of (due time, order, key) with the current time of each key beside it: pushing a key again
supersedes its earlier entry, which stays in the heap and is skipped when it surfaces; the heap is
rebuilt when superseded entries outnumber live ones by `slack`. Popping, peeking and pushing are
O(log n), so a node with thousands of VMIs pays only for the ones due, never a scan of all.
"""

from __future__ import annotations

import heapq
import itertools


class DueQueue:
    """Keys (VMIs) by the time they are next due."""

    def __init__(self, slack: int = 4) -> None:
        self.slack = slack
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def get(self, key: str) -> float | None:
        """When `key` is due, or None when it is not queued."""
        return self._due.get(key)

    def push(self, key: str, when: float) -> None:
        """Queue `key` at `when` (replacing when it was due before)."""
        if self._due.get(key) == when:
            return
        self._due[key] = when
        heapq.heappush(self._heap, (when, next(self._order), key))
        if len(self._heap) > self.slack * len(self._due) + 64:  # drop the superseded entries
            self._heap = [(at, next(self._order), queued) for queued, at in self._due.items()]
            heapq.heapify(self._heap)

    def discard(self, key: str) -> None:
        """Take `key` out (its heap entry is skipped when it surfaces)."""
        self._due.pop(key, None)

    def pop_due(self, now: float) -> list[str]:
        """Take the keys due at `now` off the queue, earliest first."""
        heap, due = self._heap, self._due
        keys: list[str] = []
        while heap and heap[0][0] <= now:
            at, _, key = heapq.heappop(heap)
            if due.get(key) == at:
                del due[key]
                keys.append(key)
        return keys

    def next_due(self) -> float:
        """The earliest due time queued (infinity when none)."""
        heap, due = self._heap, self._due
        while heap and due.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # superseded
        return heap[0][0] if heap else float("inf")
