"""The store sink and `run_serve` through the real broker."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer

from guestinfo.engines import Broker
from plumbing.kafka import topic_partitions
from schemas.topics import VMI_TOPIC
from sinks.serve import Listening, ServeConfig, run_serve
from sinks.store import Store, open_store
from sinks.store_sink import run_store_sink
from tests.sinks.conftest import eventually, golden, produce
from tests.sinks.records import empty_record, full_record


async def committed_offsets(bootstrap_servers: str, group_id: str) -> int:
    """Sum of the group's committed offsets over the topic's partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        total = 0
        for partition in await topic_partitions(consumer, VMI_TOPIC) or []:  # a fresh consumer's own metadata
            total += await consumer.committed(partition) or 0              # may not list the topic (Kafka)
        return total
    finally:
        await consumer.stop()


async def test_sink_writes_records_deletes_tombstones_skips_garbage_and_commits(
    broker: Broker, store: Store, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    ns = f"ns-{unique}"
    await produce(
        broker.bootstrap_servers,
        [
            full_record(ns, "kept", revision=1),
            (f"{ns}/bad", b"{not json"),
            full_record(ns, "gone", revision=1),
            empty_record(ns, "kept", revision=2),
            full_record(ns, "kept", revision=1),  # a stale re-delivery: ignored
            (ns, "gone"),
            full_record(ns, "last", revision=1),
        ],
    )
    group = f"store-{unique}"
    caplog.set_level(logging.INFO, logger="sinks")
    task = asyncio.create_task(run_store_sink(broker.bootstrap_servers, group, store))

    async def last_arrived() -> bool:
        return await store.get(ns, "last") is not None

    async def committed() -> bool:  # the sink commits after the batch is written
        return await committed_offsets(broker.bootstrap_servers, group) > 0

    try:
        await eventually(last_arrived, what="the last record in the store")
        await eventually(committed, what="the sink's committed offsets")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    kept = await store.get(ns, "kept")
    assert kept is not None and kept.revision == 2
    assert await store.get(ns, "gone") is None
    assert await store.get(ns, "bad") is None
    skipped = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
    assert any(f"topic={VMI_TOPIC} partition=" in line and " offset=" in line for line in skipped), skipped
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_run_serve_serves_what_the_topic_says(
    broker: Broker, store_url: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    ns = f"ns-{unique}"
    caplog.set_level(logging.INFO, logger="sinks")
    config = ServeConfig(
        bootstrap_servers=broker.bootstrap_servers, store_url=store_url, listen_port=0, group_id=f"serve-{unique}"
    )
    ready = Listening()
    task = asyncio.create_task(run_serve(config, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        assert ready.port > 0
        assert f"API listening on http://127.0.0.1:{ready.port}" in caplog.text
        await produce(broker.bootstrap_servers, [full_record(ns, "vm1", revision=1)])
        url = f"{ready.url}/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/vm1/guestosinfo"
        async with aiohttp.ClientSession() as session:

            async def served() -> bool:
                async with session.get(url) as response:
                    return response.status == 200 and await response.read() == golden("guestosinfo-full.json")

            await eventually(served, what="the API to serve the produced record")
            await produce(broker.bootstrap_servers, [(ns, "vm1")])

            async def deleted() -> bool:
                async with session.get(url) as response:
                    return response.status == 404

            await eventually(deleted, what="the tombstone to remove the VMI")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert "store closed" in caplog.text
    # The HTTP server is gone and the store file was released cleanly.
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session, session.get(f"{ready.url}/healthz"):
            pass
    reopened = await open_store(store_url)
    try:
        assert await reopened.get(ns, "vm1") is None
    finally:
        await reopened.close()


async def test_run_serve_with_a_bad_store_url_fails_clearly(broker: Broker, tmp_path: Path) -> None:
    from sinks.store import StoreError

    config = ServeConfig(bootstrap_servers=broker.bootstrap_servers, store_url="redis://x", listen_port=0)
    with pytest.raises(StoreError, match="unsupported store URL"):
        await run_serve(config)
