"""The join worker's Kafka consumer: three changes to faust-streaming's, two for the Tansu broker and one
for a rebalance on any broker.

1. **Fetch wait.** faust-streaming builds its aiokafka consumer with a fixed `fetch_max_wait_ms=1500`;
   on Tansu the wait adds to every event's latency (`plumbing.kafka`). The consumer gets the same
   100 ms as every other.
2. **Highwaters.** Table recovery reads a changelog partition up to its highwater, which Faust takes
   from ListOffsets(LATEST). Tansu answers that with the base offset of the newest batch + 1, short of
   the end whenever that batch holds more than one record (docs/kafka.md §1): the tail of the changelog
   would be skipped and states come back stale. The highwater is confirmed with a fetch, whose
   high watermark is right, and the higher of the two is used. On Kafka both agree. So the
   changelog can be sent in ordinary multi-record batches (one record per batch cost the join half of
   its throughput).

3. **Records after a rebalance** (seen on Apache Kafka: tests/faults/test_join_workers.py lost changes
   of a VMI across a takeover; docs/kafka.md §4 has the traces).
   When partitions come back to a worker, Faust resumes them before it seeks them to their committed
   offsets, so records fetched from the old position are handed out and then the partition is sought
   back. Faust remembers the highest offset it handed out and drops every record below it as read
   already: the records from the committed offset up to it, which nobody processed (its DROPPED
   MESSAGE lines), were lost; a jump over offsets was even counted as acknowledged (a "gap"). And at the
   end of a rebalance Faust resumes its flow control, which empties the stream queues every time, even
   when the flow was already running: records handed out while the seek was under way, fetched from
   the new position, were thrown away with nobody to read them again, and the next fetch counted them
   as a gap. Here:
   - a record whose offset is at or past its partition's position was fetched before a seek back: it
     is left out (the fetch from the new position hands it out again);
   - a record below the highest offset handed out is handed out again, not dropped (at least once:
     the join drops what it has applied);
   - a seek forgets the acknowledgements and gaps past the committed offset, so no commit goes beyond
     a record not processed since;
   - no record of the stream's topics is handed out during a rebalance (a record on its way into a
     queue when the queues are emptied lands in the emptied queue, ahead of those that come again), or
     once Faust has emptied the stream queues, until their partitions have been sought to their
     committed offsets again (to their beginning when nothing is committed yet): what was thrown away
     or left out comes again, in order.

Faust has no settings for any of them; the app uses a transport whose consumer makes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import faust
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent

from plumbing.kafka import FETCH_MAX_WAIT_MS, make_consumer

log = logging.getLogger(__name__)

#: How long confirming the highwaters may take before the reported ones are used (and a warning logged).
CONFIRM_TIMEOUT = 15.0


async def confirmed_highwaters(servers: Sequence[str], reported: Mapping[Any, int]) -> dict[Any, int]:
    """`reported` highwaters (ListOffsets), each raised to the high watermark a fetch of that partition
    returns. A partition whose fetch gives no answer within `CONFIRM_TIMEOUT` keeps its reported value."""
    if not reported:
        return {}
    consumer = make_consumer(",".join(servers), group_id=None, client_id="guestinfo-join-highwaters")
    await consumer.start()
    try:
        partitions = {TopicPartition(tp.topic, tp.partition): tp for tp in reported}
        consumer.assign(list(partitions))
        for partition, tp in partitions.items():
            consumer.seek(partition, max(reported[tp] - 1, 0))
        deadline = asyncio.get_running_loop().time() + CONFIRM_TIMEOUT
        while any(consumer.highwater(p) is None for p in partitions):
            if asyncio.get_running_loop().time() > deadline:
                missing = sorted(f"{p.topic}[{p.partition}]" for p in partitions if consumer.highwater(p) is None)
                log.warning("no fetch answer for %s within %.0fs: recovering them to the reported highwater",
                            ", ".join(missing), CONFIRM_TIMEOUT)
                break
            try:
                await consumer.getmany(timeout_ms=200)
            except KafkaError as exc:  # the high watermark is all this fetch is for: try again
                log.debug("fetching for the highwaters: %s", exc)
                await asyncio.sleep(0.2)
        confirmed: dict[Any, int] = {}
        for partition, tp in partitions.items():
            fetched = consumer.highwater(partition)
            confirmed[tp] = max(reported[tp], fetched or 0)
            if confirmed[tp] != reported[tp]:
                log.info("highwater of %s[%d]: %d, not %d as ListOffsets says (the broker under-reports)",
                         tp.topic, tp.partition, confirmed[tp], reported[tp])
        return confirmed
    finally:
        await consumer.stop()


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    #: The bootstrap servers, as the consumer got them.
    _servers: list[str]

    def _create_worker_consumer(self, transport: Any) -> Any:
        self._servers = faust_aiokafka.server_list(transport.url, transport.default_port)
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
        return consumer

    async def _highwaters(self, partitions: list[Any]) -> Mapping[Any, int]:
        reported = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return reported
        return await confirmed_highwaters(self._servers, reported)


class _FlowControl(FlowControlEvent):
    """Faust's flow control of the stream queues, counting the times it empties them (`cleared`):
    each `resume` does, and each rebalance's revocation."""

    cleared = 0

    def clear(self) -> None:
        super().clear()
        self.cleared += 1


class _Consumer(faust_aiokafka.Consumer):
    #: `_FlowControl.cleared` as of the last seek to the committed offsets; -1 once a record of the
    #: stream's topics was left out during a rebalance. Those records are handed out only while it is
    #: current.
    _sought_after_clear = 0

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @property
    def _flow_control(self) -> _FlowControl:
        flow_control = self.app.flow_control
        assert isinstance(flow_control, _FlowControl), "the consumer of a JoinApp"
        return flow_control

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        """Faust's records, less those fetched before a seek back, with the read offset moved back for
        a record below it; none of the stream's topics during a rebalance, or once the stream queues were
        emptied, until they are sought back (3. in the module)."""
        read_offset = self._read_offset
        flow_control = self._flow_control
        acked_topic = self.app.topics.acks_enabled_for
        async for tp, message in super().getmany(timeout):
            # The gate first: it is shut only around a rebalance, and this runs for every record.
            if (self.app.rebalancing or flow_control.cleared != self._sought_after_clear) and acked_topic(tp.topic):
                log.debug("%s[%d]@%d comes again after the rebalance, from the committed offset", tp.topic,
                          tp.partition, message.offset)
                self._sought_after_clear = -1
                continue
            position = self._position(tp)
            if position is not None and message.offset >= position:
                log.debug("%s[%d]@%d was fetched before a seek back to %d: it comes again", tp.topic,
                          tp.partition, message.offset, position)
                continue
            last = read_offset[tp]
            if last is not None and message.offset < last:
                read_offset[tp] = message.offset
            yield tp, message

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        """Faust's next fetch, after a seek to the committed offsets when the stream queues were emptied
        or records left out since the last one, once the rebalance is over (they come again)."""
        cleared = self._flow_control.cleared
        if cleared != self._sought_after_clear and self.flow_active and not self.app.rebalancing:
            try:
                await self._read_again()
            except KafkaError as exc:  # a rebalance under way, a broker away: the next fetch tries again
                log.warning("seeking to the committed offsets after the stream queues were emptied: %s", exc)
                await asyncio.sleep(0.2)
                return None, None
            log.debug("the stream queues were emptied: sought to the committed offsets")
            self._sought_after_clear = cleared
        return await super()._wait_next_records(timeout)

    async def _read_again(self) -> None:
        """Seek the stream's partitions to their committed offsets, those without one to their beginning:
        the records the emptied queues held come again (a table's changelog is read on as it was)."""
        await self.perform_seek()
        acked_topic = self.app.topics.acks_enabled_for
        uncommitted = [tp for tp in self.assignment()
                       if acked_topic(tp.topic) and not self._committed_offset.get(tp)]
        if uncommitted:
            await self._thread.seek_to_beginning(*(TopicPartition(tp.topic, tp.partition) for tp in uncommitted))
            for tp in uncommitted:
                self._read_offset[tp] = None

    def _position(self, tp: TP) -> int | None:
        """The aiokafka consumer's position of `tp` (its state is read across threads: an int)."""
        consumer = self._thread._consumer
        subscription = consumer._subscription.subscription if consumer is not None else None
        assignment = subscription.assignment if subscription is not None else None
        state = assignment.state_value(tp) if assignment else None  # a TP is the same tuple
        return state.position if state is not None and state.has_valid_position else None

    async def perform_seek(self) -> None:
        """Seek to the committed offsets, forgetting the acknowledgements and gaps past them: the records
        from there on are handed out again, and acknowledged again once processed."""
        await super().perform_seek()
        for tp, committed in self._committed_offset.items():
            if committed is None:
                continue
            self._acked[tp] = [offset for offset in self._acked.get(tp, []) if offset < committed]
            self._acked_index[tp] = set(self._acked[tp])
            self._gap.pop(tp, None)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class JoinApp(faust.App):
    """A Faust app with the consumer above (broker URLs must be `kafka://`)."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return _FlowControl(loop=self.loop)
