"""The guest metrics sink: upstream's series names from the merged topic, bounded, sharded, served."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry, generate_latest

from guestinfo.broker import free_port
from guestinfo.engines import Broker
from guestinfo.lab.bench import create_topics
from schemas.limits import MAX_FILESYSTEM_SERIES, MAX_LABEL_VALUE
from schemas.vmi import VMIRecord
from sinks.guest_metrics import GuestMetricsSink, GuestSeries, serve_guest_metrics, shard_partitions, vmi_series
from tests.conftest import started_producer

CASES = json.loads((Path(__file__).parent / "data" / "guest_metrics" / "series.json").read_text())


def scrape(vmis: dict[str, Any]) -> list[str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GuestSeries(vmis))
    return [line for line in generate_latest(registry).decode().splitlines() if not line.startswith("#")]


@pytest.mark.parametrize("case", CASES, ids=[case["case"] for case in CASES])
def test_series_of_a_record(case: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    record = VMIRecord.model_validate(case["record"])  # the data is a real merged record
    monkeypatch.setattr("sinks.guest_metrics.time.time", lambda: case["now"])
    series = vmi_series(json.loads(record.model_dump_json(by_alias=True)), record.vmi.namespace, record.vmi.name)
    assert sorted(scrape({"k": series})) == sorted(case["series"])


def test_one_guest_cannot_blow_up_the_cardinality() -> None:
    record = dict(CASES[0]["record"])
    record["filesystems"] = [{"diskName": f"d{i}", "mountPoint": f"/m{i}" + "x" * 1000, "fileSystemType": "xfs",
                              "usedBytes": 1, "totalBytes": 2} for i in range(MAX_FILESYSTEM_SERIES + 8)]
    lines = scrape({"k": vmi_series(record, "ns1", "vm1")})
    capacity = [line for line in lines if line.startswith("kubevirt_vmi_filesystem_capacity_bytes")]
    assert len(capacity) == MAX_FILESYSTEM_SERIES, "the first ones, in the agent's order"
    assert 'guestinfo_vmi_series_capped{family="filesystem",name="vm1",namespace="ns1"} 8.0' in lines
    assert all(len(value) <= MAX_LABEL_VALUE for line in capacity
               for value in line.split('mount_point="')[1].split('"')[:1])


def record(key: str, value: dict[str, Any] | None, offset: int = 0) -> ConsumerRecord:
    body = orjson.dumps(value) if value is not None else None
    return ConsumerRecord("t", 0, offset, 0, 0, key.encode(), body, None, 0, 0, ())


def test_a_vmi_is_named_by_its_key_and_its_series_are_unique() -> None:
    """The key names the VMI (a record's own `vmi` could say otherwise); a filesystem mounted twice, or two
    values that are the same once cut, make one series."""
    sink = GuestMetricsSink("unused:9092")
    base = CASES[0]["record"]
    twice = [{"diskName": "vda1", "mountPoint": "/" + "x" * 400 + suffix, "fileSystemType": "xfs", "usedBytes": 1,
              "totalBytes": 2} for suffix in ("a", "b")]
    sink.apply(record("ns1/vm1", {**base, "filesystems": twice}))
    sink.apply(record("ns2/other", {**base, "vmi": {"namespace": "ns1", "name": "vm1"}}))
    lines = scrape(sink.vmis)
    assert len([line for line in lines if line.startswith("kubevirt_vmi_filesystem_used_bytes")
                and 'name="vm1"' in line]) == 1
    assert any('name="other",namespace="ns2"' in line for line in lines if line.startswith("guestinfo_vmi_revision"))
    assert len(lines) == len(set(lines))


def test_newer_revisions_replace_older_ones_and_tombstones_remove() -> None:
    sink = GuestMetricsSink("unused:9092")
    base = CASES[0]["record"]
    sink.apply(record("ns1/vm1", {**base, "revision": 7}))
    sink.apply(record("ns1/vm1", {**base, "revision": 6, "node": "stale"}))
    sink.apply(record("ns1/vm1", {**base, "revision": 7, "node": "duplicate"}))
    assert sink.vmis["ns1/vm1"].node == "node-a"
    sink.apply(record("ns1/vm1", {**base, "revision": 8, "node": "node-b"}))
    assert sink.vmis["ns1/vm1"].node == "node-b"
    sink.apply(ConsumerRecord("t", 0, 9, 0, 0, b"ns1/vm1", b"{not json", None, 0, 0, ()))
    assert sink.vmis["ns1/vm1"].revision == 8, "an undecodable record changes nothing"
    sink.apply(record("no-slash", {**base, "revision": 99}))
    assert list(sink.vmis) == ["ns1/vm1"], "a record under a key that names no VMI is skipped"
    sink.apply(record("ns1/vm1", None))
    assert sink.vmis == {}
    sink.apply(record("ns1/vm1", {**base, "revision": 9}))
    assert sink.vmis["ns1/vm1"].revision == 9


@pytest.mark.parametrize(("shard", "mine"), [((0, 1), [0, 1, 2, 3]), ((0, 2), [0, 2]), ((1, 2), [1, 3]),
                                            ((2, 3), [2])])
def test_shards_split_the_partitions(shard: tuple[int, int], mine: list[int]) -> None:
    assert shard_partitions({0, 1, 2, 3}, shard) == mine


@pytest.mark.integration
async def test_a_shard_without_partitions_is_ready_and_serves_nothing(broker: Broker, unique: str) -> None:
    topic = f"two-{unique}"
    await create_topics(broker.bootstrap_servers, [topic], partitions=2)
    sink = GuestMetricsSink(broker.bootstrap_servers, (2, 3), topic=topic)
    task = asyncio.create_task(sink.run())
    try:
        await asyncio.wait_for(sink.caught_up.wait(), 15)
        assert sink.health()[0] and sink.vmis == {} and not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_shard_index_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"must be in 0\.\.1"):
        GuestMetricsSink("unused:9092", (2, 2))


@pytest.mark.integration
async def test_shards_serve_the_fleet_between_them_over_http(broker: Broker, unique: str) -> None:
    topic = f"vmi-{unique}"
    await create_topics(broker.bootstrap_servers, [topic], partitions=4)
    base = CASES[0]["record"]
    async with started_producer(broker.bootstrap_servers) as producer:
        for index in range(20):
            vmi = {"namespace": "ns", "name": f"vm-{index}", "uid": f"u-{index}"}
            await producer.send_and_wait(topic, orjson.dumps({**base, "vmi": vmi}), key=f"ns/vm-{index}".encode())
        await producer.send_and_wait(topic, None, key=b"ns/vm-0")
    sinks = [GuestMetricsSink(broker.bootstrap_servers, (index, 2), topic=topic) for index in range(2)]
    ports = [free_port() for _ in sinks]
    runners = [await serve_guest_metrics(sink, "127.0.0.1", port) for sink, port in zip(sinks, ports, strict=True)]
    tasks = [asyncio.create_task(sink.run()) for sink in sinks]
    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.wait_for(asyncio.gather(*(sink.caught_up.wait() for sink in sinks)), 30)
            names: list[str] = []
            for port in ports:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    assert response.status == 200
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                    text = await response.text()
                names += [match[1] for line in text.splitlines() if line.startswith("kubevirt_vmi_guest_hostname{")
                          if (match := re.search(r'[{,]name="([^"]+)"', line))]
                async with session.get(f"http://127.0.0.1:{port}/metrics",
                                       headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as response:
                    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
                    assert (await response.text()).rstrip().endswith("# EOF")
            assert sorted(names) == sorted(f"vm-{index}" for index in range(1, 20)), "each VMI once, vm-0 removed"
            assert all(sink.vmis for sink in sinks), "both shards hold some"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for runner in runners:
            await runner.cleanup()


@pytest.mark.integration
async def test_not_ready_until_the_topic_is_read(broker: Broker, unique: str) -> None:
    """Neither healthy nor scraped before its topic is there and read (a partial fleet would look like
    VMIs gone); a topic created after the start is found."""
    topic = f"late-{unique}"
    sink = GuestMetricsSink(broker.bootstrap_servers, topic=topic)
    port = free_port()
    runner = await serve_guest_metrics(sink, "127.0.0.1", port)
    task = asyncio.create_task(sink.run())
    try:
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as session:
            for path in ("/healthz", "/metrics"):
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    assert response.status == 503
                    assert "reading" in await response.text()
            await create_topics(broker.bootstrap_servers, [topic])
            await asyncio.wait_for(sink.caught_up.wait(), 15)
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
