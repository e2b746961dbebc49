"""The Faust worker: one agent reads both raw topics, folds each event into a changelog-backed
Table keyed by `namespace/name`, and sends the merged record (or a tombstone) to `guestinfo.vmi.v1`.

Raw events that cannot be decoded go to the dead-letter topic with the reason; they never stop the
stream. Faust's settings for the Tansu broker: docs/kafka-on-tansu.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import faust
import orjson
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel, ConfigDict, Field

from schemas.codec import DecodeError, decode, encode
from schemas.events import AgentReport, DomainReport
from schemas.topics import AGENT_TOPIC, DEAD_LETTER_TOPIC, DOMAIN_TOPIC, PARTITIONS, UID_HEADER, VMI_TOPIC
from streams.consumer import JoinApp
from streams.join import JoinResult, VMIState, apply_agent, apply_domain
from streams.metrics import DEAD_LETTERS, EMITTED, EVENTS
from streams.output import Send, deliver, make_output_producer

log = logging.getLogger(__name__)

TABLE_NAME = "vmi-state"
MAX_RECORD_BYTES = 8 * 1024 * 1024
#: How long a stopping worker waits for the batch in hand before it leaves without committing it.
STOP_GRACE = 20.0
#: The exit status of a worker that leaves without committing (EX_SOFTWARE).
ABANDONED = 70


class JoinConfig(BaseModel):
    """Settings of the join worker."""

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str = Field(description="Kafka bootstrap servers, HOST:PORT[,HOST:PORT...]")
    app_id: str = Field(default="guestinfo-join", description="Faust app id: consumer group and table prefix")
    partitions: int = Field(default=PARTITIONS, description="Partition count of the topics and the table")
    datadir: Path = Field(default=Path("/tmp/guestinfo-join"), description="Faust's local data folder")
    web_port: int | None = Field(default=None, description="Faust web port; None disables Faust's web server")
    session_timeout: float = Field(default=6.0, description="Consumer session timeout, seconds")
    batch_size: int = Field(default=1000, ge=1, description="Raw events taken from the stream at once")
    batch_wait: float = Field(default=0.05, gt=0, description="Seconds to wait for a batch to fill")


def faust_settings(config: JoinConfig) -> dict[str, Any]:
    """The Faust app settings of the join worker (docs/kafka-on-tansu.md for Tansu).

    The changelog goes out in ordinary multi-record batches on every broker: `streams.consumer`
    confirms the highwaters that table recovery reads, which Tansu under-reports after such batches."""
    settings: dict[str, Any] = {
        "broker": [f"kafka://{server}" for server in config.bootstrap_servers.split(",")],
        "store": "memory://",
        "datadir": str(config.datadir),
        "topic_partitions": config.partitions,
        "topic_replication_factor": 1,
        "broker_session_timeout": config.session_timeout,
        "broker_heartbeat_interval": 1.0,
        "producer_linger": 0.05,
        # A record or state may be as large as the collector publishes (8 MiB) without killing the agent.
        "producer_max_request_size": MAX_RECORD_BYTES,
        "table_standby_replicas": 0,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "web_enabled": config.web_port is not None,
    }
    if config.web_port is not None:
        settings["web_port"] = config.web_port
    return settings


def build_app(config: JoinConfig) -> faust.App:
    """A Faust app with the raw topics, the state table and the join agent."""
    app = JoinApp(config.app_id, **faust_settings(config))

    raw_topics = app.topic(DOMAIN_TOPIC, AGENT_TOPIC, key_type=bytes, value_type=bytes)
    # Writes happen per key after a batch: the changelog partition comes from the key (the same
    # partitioner as the raw topics), not from the batch's last event (docs/kafka-on-tansu.md §3).
    table = app.Table(
        TABLE_NAME, default=None, partitions=config.partitions, key_type=bytes, value_type=bytes,
        use_partitioner=True,
    )

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # mode's stub rejects async receivers
    async def log_assignment(sender: Any, *_: Any, signal: Any = None, **__: Any) -> None:
        assigned = sorted(tp.partition for tp in sender.consumer.assignment() if tp.topic == DOMAIN_TOPIC)
        log.info("join worker %s ready: raw partitions %s", config.app_id, assigned)

    dead_letter_log = OncePerMinute(log)

    def dead_letter_send(message: Any, kind: str, reason: str) -> Send:
        DEAD_LETTERS.labels(kind).inc()
        dead_letter_log.warning(
            kind, "dead-lettering %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason
        )
        return Send(DEAD_LETTER_TOPIC, message.key or b"", dead_letter(message, reason))

    def count_output(key: bytes, result: JoinResult) -> None:
        record = result.record
        if record is not None:
            EMITTED.labels("record").inc()
            (log.info if record.revision == 1 else log.debug)(
                "VMI %s revision %d from node %s", record.vmi.key, record.revision, record.node
            )
        elif result.tombstone:
            EMITTED.labels("tombstone").inc()
            log.info("VMI %s is gone: tombstone sent", key.decode(errors="replace"))

    async def process_batch(producer: AIOKafkaProducer, by_key: dict[bytes, list[Any]]) -> None:
        """Fold each VMI's events (`fold_batch`), send all outputs and dead letters at once (`deliver`
        waits out a broker outage), then write the states. An output the broker refuses for good
        (too large for it, say) is not written as state, so the VMI's next event produces the record
        again, and the VMI's events go to the dead-letter topic with the reason."""
        folded = []
        for key, messages in by_key.items():
            stored = table.get(key)
            folded.append((key, stored, fold_batch(stored, key, messages), messages))
        sends: list[Send] = []
        output_at: dict[bytes, int] = {}
        for key, _, batch, _ in folded:
            sends += [dead_letter_send(message, kind, reason) for message, kind, reason in batch.refused]
            if batch.output is not None:
                output_at[key] = len(sends)
                sends.append(output_send(key, batch.output))
        refused = await deliver(producer, sends) if sends else []
        unsendable: list[Send] = []
        for key, stored, batch, messages in folded:
            at = output_at.get(key)
            if at is not None and refused[at] is not None:
                bad = {id(message) for message, _, _ in batch.refused}
                unsendable += [dead_letter_send(message, "unsendable", f"the broker refuses the merged output: "
                                                f"{refused[at]}") for message in messages if id(message) not in bad]
                continue
            if batch.output is not None:
                count_output(key, batch.output)
            if batch.state != stored:
                table[key] = batch.state
        outputs = set(output_at.values())
        lost = [error for at, error in enumerate(refused) if at not in outputs and error is not None]
        if unsendable:
            lost += [error for error in await deliver(producer, unsendable) if error is not None]
        if lost:
            log.error("the broker refuses %d dead letters (e.g. %s): their raw events are logged here only",
                      len(lost), lost[0])

    async def finish(batch: Awaitable[None]) -> None:
        """Run one batch to its end before Faust acknowledges its events (`take_events` does so when the
        agent's loop body ends, however it ends). A stop or rebalance that cancels the agent mid-batch
        waits for the batch; a bug, or a batch that cannot finish within `STOP_GRACE`, ends the process
        at once, before the events are committed: the group reads them again (at-least-once)."""
        task = asyncio.ensure_future(batch)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_GRACE)
            except BaseException as exc:
                abandon(f"stopping mid-batch, the batch did not finish within {STOP_GRACE:.0f}s ({exc!r})")
            raise
        except Exception:
            log.critical("the join failed on a batch", exc_info=True)
            abandon("a bug on a batch")

    @app.agent(raw_topics, concurrency=1)
    async def join(stream: faust.StreamT[bytes]) -> None:
        producer = make_output_producer(config.bootstrap_servers, MAX_RECORD_BYTES)
        await producer.start()
        try:
            batches = stream.take_events(config.batch_size, within=config.batch_wait)  # type: ignore[attr-defined]
            async for events in batches:
                by_key: dict[bytes, list[Any]] = {}
                for event in events:
                    by_key.setdefault(event.message.key or b"", []).append(event.message)
                await finish(process_batch(producer, by_key))
        finally:
            await producer.stop()

    return app


@dataclass(frozen=True, slots=True)
class FoldedBatch:
    """The outcome of one VMI's events of a batch: its new encoded state, the one output to send (the
    last; records carry revisions and the merged topic is compacted, so a batch coalesces them), and
    the events refused, each with a reason kind and text for the dead-letter topic."""

    state: bytes
    output: JoinResult | None
    refused: list[tuple[Any, str, str]]


def fold_batch(stored: bytes | None, key: bytes, messages: Sequence[Any]) -> FoldedBatch:
    """Apply one VMI's events of a batch, in order (pure; the Faust agent and the benchmark's plain
    aiokafka loop both use it). A bad event is refused, never raised: the rest go on."""
    state = load_state(stored)
    output: JoinResult | None = None
    refused: list[tuple[Any, str, str]] = []
    for message in messages:
        EVENTS.labels(message.topic).inc()
        try:
            result = apply_event(state, message.topic, message.value, key)
        except DecodeError as exc:
            refused.append((message, "undecodable", str(exc)))
            continue
        except Exception as exc:  # a bug on one event must not stop the stream for every VMI
            log.debug("join failed on %s[%d]@%d", message.topic, message.partition, message.offset, exc_info=True)
            refused.append((message, "internal", f"internal error: {type(exc).__name__}: {exc}"))
            continue
        state = result.state
        if result.record is not None or result.tombstone:
            output = result
    return FoldedBatch(encode(state), output, refused)


def fold(stored: bytes | None, topic: str, value: bytes | None) -> JoinResult:
    """Apply one raw event to a VMI's stored (encoded) state."""
    return apply_event(load_state(stored), topic, value)


def apply_event(state: VMIState, topic: str, value: bytes | None, key: bytes | None = None) -> JoinResult:
    """Apply one raw event to a VMI's state; with `key`, the report must be of that VMI."""
    if value is None:
        raise DecodeError("raw event without a value")
    if len(value) > MAX_RECORD_BYTES:
        raise DecodeError(f"raw event of {len(value)} bytes is over the {MAX_RECORD_BYTES} byte limit")
    report: DomainReport | AgentReport
    if topic == DOMAIN_TOPIC:
        report = decode(DomainReport, value)
    elif topic == AGENT_TOPIC:
        report = decode(AgentReport, value)
    else:
        raise DecodeError(f"unexpected topic {topic}")
    if key is not None and key != report.vmi.key.encode():
        raise DecodeError(f"key {key[:300]!r} is not the report's VMI {report.vmi.key!r}")
    if isinstance(report, DomainReport):
        return apply_domain(state, report)
    return apply_agent(state, report)


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


def output_send(key: bytes, output: JoinResult) -> Send:
    """The merged record, or the tombstone with the removed VMI's uid in `UID_HEADER`."""
    if output.record is not None or not output.state.removed_uid:
        return Send(VMI_TOPIC, key, output.record_bytes())
    return Send(VMI_TOPIC, key, None, ((UID_HEADER, output.state.removed_uid.encode()),))


def abandon(why: str) -> NoReturn:
    """End the process at once, without Faust's graceful stop: that would commit the offsets of the
    batch in hand, whose outputs are not all delivered. The consumer group reads them again."""
    log.critical("leaving without committing the batch in hand: %s", why)
    logging.shutdown()
    os._exit(ABANDONED)


def load_state(stored: bytes | None) -> VMIState:
    """A VMI's stored state; one that no longer decodes is replaced by a fresh state (and logged),
    so that the VMI is rebuilt from its next events instead of being stuck."""
    if stored is None:
        return VMIState()
    try:
        return decode(VMIState, stored)
    except DecodeError as exc:
        log.error("stored join state does not decode, starting it afresh: %s", exc)
        return VMIState()


def dead_letter(message: Any, reason: str) -> bytes:
    value: bytes | None = message.value
    return orjson.dumps(
        {
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "reason": reason,
            "value": value.decode("utf-8", errors="replace")[:65536] if value is not None else None,
        }
    )


def run_join_worker(config: JoinConfig) -> None:
    """Run the join worker in this process until SIGINT/SIGTERM; blocks and owns the event loop."""
    log.info("join worker %s starting on %s", config.app_id, config.bootstrap_servers)
    run_worker(build_app(config))


def run_worker(app: faust.App) -> None:
    """Run a Faust app's worker in this process until SIGINT/SIGTERM; blocks and owns the event loop.

    Logging stays as the caller configured it (Faust's own set-up is not applied).
    """
    worker = faust.Worker(app, quiet=True, override_logging=False, redirect_stdouts=False)
    worker.spinner = None  # the spinner would turn the root logger to DEBUG (docs/kafka-on-tansu.md §2)
    worker.execute_from_commandline()
