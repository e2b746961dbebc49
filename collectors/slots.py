"""The node's cap on concurrent agent calls: slots handed out by priority, then first come first served."""

from __future__ import annotations

import asyncio
import heapq
import itertools

#: A call of a poll that has synced already: finishing started polls frees the node fastest.
CONTINUING = 0
#: The first call (the sync) of a VMI whose agent answered last time.
ANSWERING = 1
#: The first call of any other VMI (new, or its agent did not answer last time).
OTHER = 2


class PrioritySlots:
    """A semaphore whose waiters are served lowest priority number first (FIFO within one)."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # handed a slot just as it was cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1
