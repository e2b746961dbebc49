"""Kafka clients of every stage, with the embedded broker's (Tansu's) quirks explained once here.

- **Idempotent producer where the brokers grant producer ids.** Apache Kafka does: a batch a producer
  sends again after a lost answer is written once. Tansu answers InitProducerId with an error, so on it
  producers are not idempotent (`start_producer` asks the brokers once per producer). A duplicate after
  a retry is harmless anyway: the join keeps the latest state of a key, merged records carry revisions
  and consumers drop what they have seen.
- **Fetch wait.** Tansu answers a held fetch on its own schedule within `fetch_max_wait_ms`, not when
  data arrives, so the wait adds to every record's latency: measured with one record at random times,
  500 ms gave a median delay of 59 ms (up to 0.22 s), 1,500 ms 0.28 s (up to 0.58 s), 100 ms 17 ms (up to
  37 ms). With a real Kafka the broker answers as soon as data arrives, and a shorter wait only costs a
  few more empty fetches a second while idle.
- **Short sessions.** A group join waits half the session timeout on Tansu: 6 s sessions make joins quick.
- **Compression.** aiokafka compresses gzip at level 9 in the event loop: at the join's load that was a
  sixth of its CPU. lz4 and zstd (through cramjam) cost little and shrink JSON about fourfold.

- **Metadata of every topic sent to (aiokafka on Tansu).** A producer's first metadata request names
  no topic; Tansu answers it with every topic, Apache Kafka with none. On Tansu a producer so learns
  all topics at start but tracks only those it had to look up later, and its next metadata refresh
  keeps only the tracked ones. A record already queued for an untracked topic then has no leader until
  its request times out (10 s, `NotLeaderForPartitionError`): seen when the join's first change event
  went out beside the first changelog record. `track_topics` makes a producer track every topic it will
  send to; on Kafka it changes nothing.
- **Partitions of a topic a consumer is not assigned yet (aiokafka).** A consumer's metadata holds only
  the topics it tracks, and `topics()` asks the broker without updating it: `topic_partitions` asks the
  broker for the metadata of every topic itself.

The join's Faust consumer gets the fetch wait through `streams.consumer` (Faust has no setting for it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition, errors
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.transaction import InitProducerIdRequest

log = logging.getLogger(__name__)

#: The longest a fetch is held by the broker when there is no data (aiokafka's own default is 500).
FETCH_MAX_WAIT_MS = 100
#: Session timeout of consumer groups, and their heartbeat.
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000

Compression = Literal["none", "gzip", "lz4", "zstd"]


async def start_producer(
    bootstrap_servers: str,
    *,
    client_id: str,
    max_request_size: int,
    linger_ms: int = 5,
    max_batch_size: int = 16384,
    compression: Compression = "none",
) -> AIOKafkaProducer:
    """A started producer that waits for all in-sync replicas (`acks=all`), gives a broker 10 s before a
    send fails, and is idempotent when the brokers grant producer ids (see the module). Raises
    KafkaError when the brokers cannot be reached."""
    idempotent = await grants_producer_ids(bootstrap_servers, client_id)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=max_batch_size,
        compression_type=None if compression == "none" else compression,
        enable_idempotence=idempotent,
        request_timeout_ms=10_000,
        max_request_size=max_request_size,
        client_id=client_id,
    )
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


#: Replicas of a topic a stage creates, on a cluster with at least as many brokers.
REPLICAS = 3


async def cluster_replication(bootstrap_servers: str, patience: float = 60.0) -> int:
    """The replication factor for the topics a stage creates itself (the join's changelog): `REPLICAS`, or
    as many as the cluster has brokers when it has fewer. Asks the brokers until they answer, for up to
    `patience` seconds; then raises KafkaError."""
    deadline = time.monotonic() + patience
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000)
        try:
            await admin.start()
            brokers = len((await admin.describe_cluster())["brokers"])
            return max(1, min(REPLICAS, brokers))
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for Kafka at %s: %s", bootstrap_servers, exc)
            await asyncio.sleep(1.0)
        finally:
            await admin.close()


async def stop_producer(producer: AIOKafkaProducer, deadline: float = 5.0) -> None:
    """Stop `producer`, dropping what it still holds after `deadline` seconds. aiokafka's `stop` waits
    for every pending batch, which brokers that are gone never take: an idempotent producer's stop then
    never ends, and, cancelled, leaves its sender running, to deliver the old batch whenever the broker
    is back (seen: a collector's abandoned producer wrote a state older than the one republished)."""
    try:
        async with asyncio.timeout(deadline):
            await producer.stop()
    except TimeoutError:
        # aiokafka offers no abort: its sender task and its connections are closed here.
        await producer._sender.close()
        await producer.client.close()
        log.warning("a producer's unsent records were dropped: the brokers had not taken them within %.0fs", deadline)


async def grants_producer_ids(bootstrap_servers: str, client_id: str = "guestinfo", patience: float = 15.0) -> bool:
    """Whether the brokers give an idempotent producer its id (InitProducerId without a transaction),
    asked again while they answer with a passing error (a new Kafka cluster answers "loading" for its
    first seconds) for up to `patience` seconds. Raises KafkaError when they cannot be reached."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, client_id=client_id, request_timeout_ms=10_000)
    request = InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60_000)  # type: ignore[arg-type]
    deadline = time.monotonic() + patience
    try:
        await client.bootstrap()
        while True:
            response = await client.send(client.get_random_node(), request)
            error = errors.for_code(response.error_code)
            if error is errors.NoError:
                return True
            if not error.retriable or time.monotonic() > deadline:
                log.info("the brokers at %s give no producer id (%s): producing without idempotence",
                         bootstrap_servers, error.__name__)
                return False
            await asyncio.sleep(0.2)
    finally:
        await client.close()


def make_consumer(
    bootstrap_servers: str, *topics: str, group_id: str | None, client_id: str = "guestinfo"
) -> AIOKafkaConsumer:
    """A consumer with manual commits that starts from the earliest offset when its group has none."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        client_id=client_id,
    )


async def track_topics(producer: AIOKafkaProducer, topics: list[str]) -> None:
    """Have a started producer keep the metadata of `topics` up to date (see the module)."""
    for topic in topics:
        await producer.client.add_topic(topic)


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition] | None:
    """The partitions of `topic` as the broker has them now, for a started consumer to assign; None when
    the broker has no such topic (see the module)."""
    # aiokafka offers no public way to read a topic's partitions before assigning them.
    cluster = await consumer._client.fetch_all_metadata()
    found = cluster.partitions_for_topic(topic)
    return [TopicPartition(topic, partition) for partition in sorted(found)] if found else None
