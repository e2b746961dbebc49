"""The Faust worker: one agent reads both raw topics in batches and runs each through `JoinBatches`
(`streams.batches`: the fold into a changelog-backed Table keyed by `namespace/name`, the merged
record or tombstone to `guestinfo.vmi.v1`, refused events to the dead-letter topic, at least once).

Faust's settings for the Tansu broker: docs/kafka.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import faust
from pydantic import BaseModel, ConfigDict, Field

from plumbing.kafka import Compression, stop_producer, track_topics
from schemas.topics import AGENT_TOPIC, DEAD_LETTER_TOPIC, DOMAIN_TOPIC, EVENTS_TOPIC, PARTITIONS, VMI_TOPIC
from streams.batches import JoinBatches
from streams.consumer import JoinApp
from streams.fold import MAX_RECORD_BYTES
from streams.output import start_output_producer
from streams.tables import TableStates, TableStore

log = logging.getLogger(__name__)

TABLE_NAME = "vmi-state"


class JoinConfig(BaseModel):
    """Settings of the join worker."""

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str = Field(description="Kafka bootstrap servers, HOST:PORT[,HOST:PORT...]")
    app_id: str = Field(default="guestinfo-join", description="Faust app id: consumer group and table prefix")
    partitions: int = Field(default=PARTITIONS, description="Partition count of the topics and the table")
    replication_factor: int = Field(
        default=1, ge=1, description="Replicas of the topics the worker creates (its table's changelog)")
    datadir: Path = Field(default=Path("/tmp/guestinfo-join"), description="Faust's local data folder")
    web_port: int | None = Field(default=None, description="Faust web port; None disables Faust's web server")
    session_timeout: float = Field(default=6.0, description="Consumer session timeout, seconds")
    batch_size: int = Field(default=1000, ge=1, description="Raw events taken from the stream at once")
    batch_wait: float = Field(default=0.05, gt=0, description="Seconds to wait for a batch to fill")
    compression: Compression = Field(default="none", description="Compression of the records the join sends")
    table_store: TableStore = Field(
        default="memory",
        description="Where the states live: memory, or RocksDB below `datadir` (restarts read the changelog's tail)",
    )


def faust_settings(config: JoinConfig) -> dict[str, Any]:
    """The Faust app settings of the join worker (docs/kafka.md for Tansu).

    The changelog goes out in ordinary multi-record batches on every broker: `streams.consumer`
    confirms the highwaters that table recovery reads, which Tansu under-reports after such batches."""
    settings: dict[str, Any] = {
        "broker": [f"kafka://{server}" for server in config.bootstrap_servers.split(",")],
        "store": "rocksdb://" if config.table_store == "rocksdb" else "memory://",
        "datadir": str(config.datadir),
        "topic_partitions": config.partitions,
        "topic_replication_factor": config.replication_factor,
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
    # partitioner as the raw topics), not from the batch's last event (docs/kafka.md §3).
    table = app.Table(
        TABLE_NAME, default=None, partitions=config.partitions, key_type=bytes, value_type=bytes,
        use_partitioner=True,
    )

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # mode's stub rejects async receivers
    async def log_assignment(sender: Any, *_: Any, signal: Any = None, **__: Any) -> None:
        assigned = sorted(tp.partition for tp in sender.consumer.assignment() if tp.topic == DOMAIN_TOPIC)
        log.info("join worker %s ready: raw partitions %s", config.app_id, assigned)

    @app.agent(raw_topics, concurrency=1)
    async def join(stream: faust.StreamT[bytes]) -> None:
        # The changelog is created with the table's partitions before anything looks it up: a broker that
        # creates topics on demand (Apache Kafka's default) would make it with one partition otherwise.
        await table.changelog_topic.maybe_declare()
        producer = await start_output_producer(config.bootstrap_servers, MAX_RECORD_BYTES, config.compression)
        changelog = table.changelog_topic.get_topic_name()
        try:
            await track_topics(producer, [VMI_TOPIC, EVENTS_TOPIC, DEAD_LETTER_TOPIC, changelog])
            # The table's store holds the states; JoinBatches sends their changelog records itself, after
            # the outputs, instead of one Faust send per write (docs/kafka.md §2).
            states = TableStates(table, config.partitions)
            batches = JoinBatches(states, producer, changelog_topic=changelog, on_persisted=states.persisted)
            taken = stream.take_events(config.batch_size, within=config.batch_wait)  # type: ignore[attr-defined]
            # `take_events` acknowledges a batch's events when the loop body ends, however it ends.
            async for events in taken:
                await batches.take(event.message for event in events)
        finally:
            await stop_producer(producer)

    return app


def run_join_worker(config: JoinConfig) -> None:
    """Run the join worker in this process until SIGINT/SIGTERM; blocks and owns the event loop."""
    log.info("join worker %s starting on %s", config.app_id, config.bootstrap_servers)
    run_worker(build_app(config))


def run_worker(app: faust.App) -> None:
    """Run a Faust app's worker in this process until SIGINT/SIGTERM; blocks and owns the event loop.

    Logging stays as the caller configured it (Faust's own set-up is not applied).
    """
    worker = faust.Worker(app, quiet=True, override_logging=False, redirect_stdouts=False)
    worker.spinner = None  # the spinner would turn the root logger to DEBUG (docs/kafka.md §2)
    worker.execute_from_commandline()
