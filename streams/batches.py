"""The join's delivery rules, over a mapping of states and a producer: at-least-once, batch by batch.

For each batch of raw events:
1. Each VMI's events are folded at once (`streams.fold`): its stored state is read once, and at
   most one output comes out (the last: records carry revisions and the merged topic is compacted).
2. Every output and dead letter is handed to the producer at once, and the batch waits for all the
   acks. What fails for a passing reason is sent again until it is delivered (`streams.output.deliver`):
   an outage delays and never loses.
3. Only then are the new states written. An output the broker refuses for good (too large for it,
   say) is not written as state, so the VMI's next event produces the record again; the VMI's events
   go to the dead-letter topic with the reason.
4. The caller acknowledges the batch's events only when `take` returns. A batch is never left half
   done: a stop or rebalance that cancels it waits for it; a bug, or a batch that cannot finish within
   the stop grace, ends the process at once (`abandon`), before the events are committed, and the
   consumer group reads them again.

The Faust worker (`streams.app`) and the benchmark's plain aiokafka loop both run batches through
`JoinBatches`, so the two measure the same work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import NoReturn, Protocol

from schemas.topics import DEAD_LETTER_TOPIC, VMI_TOPIC
from streams.fold import FoldedBatch, RawMessage, Refusal, dead_letter, fold_batch, output_send
from streams.join import JoinResult
from streams.metrics import DEAD_LETTERS, EMITTED
from streams.output import Producer, Send, deliver

log = logging.getLogger(__name__)

#: How long a stopping worker waits for the batch in hand before it leaves without committing it.
STOP_GRACE = 20.0
#: The exit status of a worker that leaves without committing (EX_SOFTWARE).
ABANDONED = 70


class States(Protocol):
    """Where the encoded states live: a Faust table, or a plain mapping."""

    def get(self, key: bytes) -> bytes | None: ...
    def __setitem__(self, key: bytes, value: bytes) -> None: ...


def abandon(why: str) -> NoReturn:
    """End the process at once, without a graceful stop: that would commit the offsets of the batch
    in hand, whose outputs are not all delivered. The consumer group reads them again."""
    log.critical("leaving without committing the batch in hand: %s", why)
    logging.shutdown()
    os._exit(ABANDONED)


class JoinBatches:
    """Runs batches of raw events through the fold and delivers their outputs (see the module)."""

    def __init__(
        self,
        states: States,
        producer: Producer,
        *,
        output_topic: str = VMI_TOPIC,
        dead_letter_topic: str = DEAD_LETTER_TOPIC,
        stop_grace: float = STOP_GRACE,
        on_abandon: Callable[[str], NoReturn] = abandon,
    ) -> None:
        self._states = states
        self._producer = producer
        self._output_topic = output_topic
        self._dead_letter_topic = dead_letter_topic
        self._stop_grace = stop_grace
        self._abandon = on_abandon
        self._dead_letter_log = OncePerMinute(log)

    async def take(self, messages: Iterable[RawMessage]) -> None:
        """Run one batch to its end; the caller acknowledges its events once this returns."""
        by_key: dict[bytes, list[RawMessage]] = {}
        for message in messages:
            by_key.setdefault(message.key or b"", []).append(message)
        await self._finish(self._process(by_key))

    async def _finish(self, batch: Awaitable[None]) -> None:
        """Run `batch` to its end even when the caller is cancelled mid-batch (a stop, a rebalance):
        wait for it up to the stop grace, then let the cancellation through. A bug, or a batch that
        does not finish in time, abandons the process."""
        task = asyncio.ensure_future(batch)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            try:
                await asyncio.wait_for(asyncio.shield(task), self._stop_grace)
            except BaseException as exc:
                self._abandon(f"stopping mid-batch, the batch did not finish within {self._stop_grace:.0f}s "
                              f"({exc!r})")
            raise
        except Exception:
            log.critical("the join failed on a batch", exc_info=True)
            self._abandon("a bug on a batch")

    async def _process(self, by_key: dict[bytes, list[RawMessage]]) -> None:
        folded: list[tuple[bytes, bytes | None, FoldedBatch, list[RawMessage]]] = []
        for key, messages in by_key.items():
            stored = self._states.get(key)
            folded.append((key, stored, fold_batch(stored, key, messages), messages))
        sends: list[Send] = []
        output_at: dict[bytes, int] = {}
        for key, _, batch, _ in folded:
            sends += [self._dead_letter(refusal) for refusal in batch.refused]
            if batch.output is not None:
                output_at[key] = len(sends)
                sends.append(output_send(self._output_topic, key, batch.output))
        refused = await deliver(self._producer, sends) if sends else []
        unsendable: list[Send] = []
        for key, stored, batch, messages in folded:
            at = output_at.get(key)
            if at is not None and refused[at] is not None:
                bad = {id(refusal.message) for refusal in batch.refused}
                why = f"the broker refuses the merged output: {refused[at]}"
                unsendable += [self._dead_letter(Refusal(message, "unsendable", why))
                               for message in messages if id(message) not in bad]
                continue
            if batch.output is not None:
                _count_output(key, batch.output)
            if batch.state != stored:
                self._states[key] = batch.state
        outputs = set(output_at.values())
        lost = [error for at, error in enumerate(refused) if at not in outputs and error is not None]
        if unsendable:
            lost += [error for error in await deliver(self._producer, unsendable) if error is not None]
        if lost:
            log.error("the broker refuses %d dead letters (e.g. %s): their raw events are logged here only",
                      len(lost), lost[0])

    def _dead_letter(self, refusal: Refusal) -> Send:
        DEAD_LETTERS.labels(refusal.kind).inc()
        message = refusal.message
        self._dead_letter_log.warning(refusal.kind, "dead-lettering %s[%d]@%d: %s", message.topic,
                                      message.partition, message.offset, refusal.reason)
        return dead_letter(self._dead_letter_topic, refusal)


def _count_output(key: bytes, result: JoinResult) -> None:
    state = result.state
    if result.record is not None:
        EMITTED.labels("record").inc()
        (log.info if state.revision == 1 else log.debug)(
            "VMI %s revision %d from node %s", key.decode(errors="replace"), state.revision,
            state.domain.node if state.domain else "?",
        )
    elif result.tombstone:
        EMITTED.labels("tombstone").inc()
        log.info("VMI %s is gone: tombstone sent", key.decode(errors="replace"))


class OncePerMinute:
    """Logs a warning at most once a minute per kind; the rest go to DEBUG (the metric counts all)."""

    def __init__(self, logger: logging.Logger, every: float = 60.0) -> None:
        self._logger = logger
        self._every = every
        self._last: dict[str, float] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self._every) >= self._every:
            self._last[kind] = now
            self._logger.warning(message + " (more of this kind within a minute go to debug)", *args)
        else:
            self._logger.debug(message, *args)
