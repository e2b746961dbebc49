"""The join's delivery rules, over a mapping of states and a producer: at-least-once, batch by batch.

For each batch of raw events:
1. Each VMI's events are folded at once (`streams.fold`): its stored state is read once, and at
   most one output comes out (the last: records carry revisions and the merged topic is compacted).
2. Every output and dead letter is handed to the producer at once, and the batch waits for all the
   acks. What fails for a passing reason is sent again until it is delivered (`streams.output.deliver`):
   an outage delays and never loses.
3. Then the change events of the batch's revisions (`streams.vmi_events`), in a round of their own
   when there are any: after their VMI's record is out (none for an output refused for good: its
   revisions are made again), before any state is written, so that a crash sends them again with the
   same revisions, which consumers drop as duplicates. An event the broker refuses for good is counted
   and logged, and holds nothing up.
4. Only then are the new states written: with a changelog, each only once the changelog holds it (a
   store on disk must never be ahead of its changelog). An output the broker refuses for good (too
   large for it, say) is not written as state, so the VMI's next event produces the record again; the
   VMI's raw events go to the dead-letter topic with the reason, in the events' round.
   With a `changelog_topic`, `states` is only the local store, and the changed states go to that topic
   in a round of sends of their own, after the outputs and events (the Faust worker's table: one Faust table write costs
   about as much as folding ten events, `docs/kafka.md` §2). Never before: a changelog ahead
   of an output a crash kept from the broker would lose that output for good (a tombstone is not sent
   again for a removal the state has already applied). A state the changelog refuses for good is
   written without the agent's answers (`trimmed_state`): the changelog never stays behind a revision
   consumers have seen.
5. The caller acknowledges the batch's events only when `take` returns. A batch is never left half
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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import NoReturn, Protocol

from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from plumbing.logs import RateLimitedLog
from schemas.topics import DEAD_LETTER_TOPIC, EVENTS_TOPIC, VMI_TOPIC
from streams.fold import FoldedBatch, RawMessage, Refusal, dead_letter, fold_batch, output_send, trimmed_state
from streams.join import JoinResult
from streams.metrics import CHANGELOG_REFUSED, DEAD_LETTERS, EMITTED, VMI_EVENTS_REFUSED, VMI_EVENTS_SENT
from streams.output import Producer, Send, deliver

log = logging.getLogger(__name__)

#: How long a stopping worker waits for the batch in hand before it leaves without committing it.
STOP_GRACE = 20.0
#: The exit status of a worker that leaves without committing (EX_SOFTWARE).
ABANDONED = 70


class States(Protocol):
    """Where the encoded states live: a Faust table's store, or a plain mapping."""

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
        events_topic: str = EVENTS_TOPIC,
        changelog_topic: str | None = None,
        #: Told (partition, offset) once the states up to that changelog record are in `states`.
        on_persisted: Callable[[int, int], None] | None = None,
        stop_grace: float = STOP_GRACE,
        on_abandon: Callable[[str], NoReturn] = abandon,
    ) -> None:
        self._states = states
        self._changelog_topic = changelog_topic
        self._on_persisted = on_persisted
        self._producer = producer
        self._output_topic = output_topic
        self._dead_letter_topic = dead_letter_topic
        self._events_topic = events_topic
        self._stop_grace = stop_grace
        self._abandon = on_abandon
        #: Dead letters are logged once a minute per kind (the metric counts all): raw events are written
        #: by collectors, and a broken one repeats.
        self._dead_letter_log = RateLimitedLog(log, repeat_after=60.0)

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
        folded = []
        for key, messages in by_key.items():
            stored = self._states.get(key)
            folded.append(_Folded(key, stored, fold_batch(stored, key, messages), messages))
        lost = await self._send_outputs(folded)
        delivered = [vmi for vmi in folded if not vmi.unsendable]
        lost += await self._send_events(folded)
        await self._write_states([vmi for vmi in delivered
                                  if vmi.batch.state is not None and vmi.batch.state != vmi.stored])
        if lost:
            log.error("the broker refuses %d dead letters (e.g. %s): their raw events are logged here only",
                      len(lost), lost[0])

    async def _send_outputs(self, folded: list[_Folded]) -> list[KafkaError]:
        """Round 1: every VMI's output and the dead letters of refused events. Marks the VMIs whose output
        the broker refuses for good; returns the dead letters it refuses."""
        sends: list[Send] = []
        for vmi in folded:
            sends += [self._dead_letter(refusal) for refusal in vmi.batch.refused]
            if vmi.batch.output is not None:
                vmi.output_at = len(sends)
                sends.append(output_send(self._output_topic, vmi.key, vmi.batch.output))
        refused = await deliver(self._producer, sends) if sends else []
        for vmi in folded:
            if vmi.output_at is not None and (error := refused[vmi.output_at]) is not None:
                vmi.unsendable = f"the broker refuses the merged output: {error}"
            elif vmi.batch.output is not None:
                _count_output(vmi.key, vmi.batch.output)
        outputs = {vmi.output_at for vmi in folded if vmi.output_at is not None}
        return [error for at, error in enumerate(refused) if at not in outputs and error is not None]

    async def _send_events(self, folded: list[_Folded]) -> list[KafkaError]:
        """Round 2, when there is anything to send: the change events of the VMIs whose output went, and the
        dead letters of those whose output did not (their state is not written: no events either, their
        revisions are made again). Before any state is written, so that a crash sends them again."""
        sends: list[Send] = []
        for vmi in folded:
            if vmi.unsendable:
                sends += self._unsendable(vmi, vmi.unsendable)
            else:
                sends += [Send(self._events_topic, vmi.key, event) for event in vmi.batch.events]
        refused = await deliver(self._producer, sends) if sends else []
        lost = []
        for send, error in zip(sends, refused, strict=True):
            if send.topic != self._events_topic:
                if error is not None:
                    lost.append(error)
            elif error is None:
                VMI_EVENTS_SENT.inc()
            else:
                VMI_EVENTS_REFUSED.inc()
                self._dead_letter_log.note(logging.ERROR, "event", "the broker refuses a change event of VMI %s: %s",
                                           send.key.decode(errors="replace"), error)
        return lost

    async def _write_states(self, changed: list[_Folded]) -> None:
        """Round 3: the changed states, into the changelog first when there is one, then the store."""
        if self._changelog_topic is None:
            for vmi in changed:
                self._states[vmi.key] = vmi.batch.state or b""
            return
        acked: dict[int, int] = {}
        sends = [Send(self._changelog_topic, vmi.key, vmi.batch.state or b"") for vmi in changed]
        refused = await deliver(self._producer, sends, self._acked_into(acked)) if sends else []
        too_large: list[tuple[_Folded, KafkaError]] = []
        for vmi, error in zip(changed, refused, strict=True):
            if error is None:
                self._states[vmi.key] = vmi.batch.state or b""
            else:
                too_large.append((vmi, error))
        if too_large:
            await self._trimmed(too_large, acked)
        self._persisted(acked)

    async def _trimmed(self, refused: list[tuple[_Folded, KafkaError]], acked: dict[int, int]) -> None:
        """States the changelog refuses for good (a broker whose record limit is under the producer's):
        their outputs are out, so the changelog must not stay behind at a revision consumers have seen.
        It gets the state without the agent's answers instead, which the VMI's next reports bring back."""
        assert self._changelog_topic is not None
        trimmed = []
        for vmi, error in refused:
            CHANGELOG_REFUSED.inc()
            state = vmi.batch.state or b""
            log.error("the changelog refuses the state of VMI %s (%d bytes: %s): writing it without the agent's "
                      "answers", vmi.key.decode(errors="replace"), len(state), error)
            trimmed.append(trimmed_state(state))
        sends = [Send(self._changelog_topic, vmi.key, state) for (vmi, _), state in zip(refused, trimmed, strict=True)]
        delivered = await deliver(self._producer, sends, self._acked_into(acked))
        for (vmi, _), state, error in zip(refused, trimmed, delivered, strict=True):
            if error is None:
                self._states[vmi.key] = state
                continue
            # Nothing the changelog takes: the store keeps the whole state, so that this worker at least
            # never reuses a revision; a restart elsewhere recovers an older one.
            self._states[vmi.key] = vmi.batch.state or b""
            log.critical("the changelog refuses even the trimmed state of VMI %s (%s): a restart recovers "
                         "an older state of it", vmi.key.decode(errors="replace"), error)

    def _acked_into(self, acked: dict[int, int]) -> Callable[[Send, RecordMetadata], None]:
        """Collect, per changelog partition, the offset of the last record stored."""

        def on_ack(send: Send, where: RecordMetadata) -> None:
            if send.topic == self._changelog_topic:
                acked[where.partition] = max(where.offset, acked.get(where.partition, -1))

        return on_ack

    def _persisted(self, acked: dict[int, int]) -> None:
        """After the states are in the store, the store may remember how far each changelog partition is
        applied (a RocksDB store recovers from there): never before, or a crash in between would leave a
        state out of both."""
        if self._on_persisted is not None:
            for partition, offset in sorted(acked.items()):
                self._on_persisted(partition, offset)

    def _unsendable(self, vmi: _Folded, why: str) -> list[Send]:
        """An output the broker refuses for good: the VMI's state stays as it was (its next event makes
        the record again), and its events go to the dead-letter topic."""
        bad = {id(refusal.message) for refusal in vmi.batch.refused}
        return [self._dead_letter(Refusal(message, "unsendable", why))
                for message in vmi.messages if id(message) not in bad]

    def _dead_letter(self, refusal: Refusal) -> Send:
        DEAD_LETTERS.labels(refusal.kind).inc()
        message = refusal.message
        self._dead_letter_log.note(logging.WARNING, refusal.kind, "dead-lettering %s[%d]@%d: %s", message.topic,
                                   message.partition, message.offset, refusal.reason)
        return dead_letter(self._dead_letter_topic, refusal)


@dataclass(slots=True)
class _Folded:
    """One VMI's part of a batch: its stored state, what the fold made of it, and where its output
    is among the batch's sends."""

    key: bytes
    stored: bytes | None
    batch: FoldedBatch
    messages: list[RawMessage]
    output_at: int | None = None
    #: Why the broker refuses its output for good ("" when it took it).
    unsendable: str = ""


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

