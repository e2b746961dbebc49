"""`guestinfo broker --engine kafka`: Apache Kafka from the jars `make setup` fetched, as a KRaft cluster
on 127.0.0.1 that prints its address, replicates the topics across three nodes, keeps its log on disk
and stops with everything it started on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas.topics import PARTITIONS, TOPIC_CONFIGS
from tests.conftest import started_producer

pytestmark = pytest.mark.integration

ADDRESS = re.compile(r"^Kafka (127\.0\.0\.1:\d+(?:,127\.0\.0\.1:\d+)*)$", re.MULTILINE)


class BrokerCommand:
    """`guestinfo broker` as a user runs it, its output in a file."""

    def __init__(self, folder: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.output = folder / "broker.out"
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "guestinfo", "broker", *args], stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=env,
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def address(self, timeout: float = 180.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = ADDRESS.search(self.text())
            if found:
                return found[1]
            assert self.process.poll() is None, f"guestinfo broker ended:\n{self.text()[-3000:]}"
            time.sleep(0.2)
        pytest.fail(f"guestinfo broker printed no address within {timeout:.0f}s:\n{self.text()[-3000:]}")

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            pytest.fail(f"guestinfo broker did not stop within {timeout:.0f}s of SIGTERM:\n{self.text()[-3000:]}")


def running_in(folder: Path, besides: int = 0) -> list[int]:
    """The processes whose command line names `folder` (a Kafka node started there), but `besides`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != besides:
            try:
                if str(folder).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def topic_layout(bootstrap: str) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Each guestinfo topic's replica counts per partition, and each topic's min.insync.replicas."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(TOPIC_CONFIGS))
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in TOPIC_CONFIGS])
    finally:
        await admin.close()
    replicas = {topic["topic"]: [len(p["replicas"]) for p in topic["partitions"]] for topic in described}
    min_isr = {}
    for response in configs:
        for resource in response.resources:
            name, entries = resource[3], resource[4]
            min_isr[name] = next(entry[1] for entry in entries if entry[0] == "min.insync.replicas")
    return replicas, min_isr


def test_three_nodes_replicate_the_topics_and_stop_with_every_node(tmp_path: Path) -> None:
    data = tmp_path / "kafka"
    broker = BrokerCommand(tmp_path, "--engine", "kafka", "--brokers", "3", "--data-dir", str(data))
    try:
        bootstrap = broker.address()
        assert len(bootstrap.split(",")) == 3
        assert len(running_in(data, besides=broker.process.pid)) == 3, "one JVM per node"
        replicas, min_isr = asyncio.run(topic_layout(bootstrap))
        assert replicas == {name: [3] * PARTITIONS for name in TOPIC_CONFIGS}
        assert min_isr == dict.fromkeys(TOPIC_CONFIGS, "2")
    finally:
        code = broker.stop()
    assert code == 0, broker.text()[-3000:]
    assert running_in(data) == [], "a Kafka node outlived guestinfo broker"
    assert sorted(path.name for path in data.iterdir()) == ["cluster.json", "n1", "n2", "n3"]


async def produce_one(bootstrap: str, value: bytes) -> None:
    async with started_producer(bootstrap, acks="all", enable_idempotence=True) as producer:
        await producer.send_and_wait("guestinfo.events.v1", value, key=b"ns1/vm1", partition=0)


async def read_partition_zero(bootstrap: str) -> list[bytes | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition("guestinfo.events.v1", 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        batch = await consumer.getmany(partition, timeout_ms=10_000)
        return [record.value for record in batch.get(partition, [])]
    finally:
        await consumer.stop()


def test_a_data_dir_keeps_the_log_for_the_next_start(tmp_path: Path) -> None:
    data = tmp_path / "kafka"
    first = BrokerCommand(tmp_path, "--engine", "kafka", "--data-dir", str(data))
    try:
        bootstrap = first.address()
        asyncio.run(produce_one(bootstrap, b"kept"))
    finally:
        assert first.stop() == 0, first.text()[-3000:]
    again = BrokerCommand(tmp_path, "--engine", "kafka", "--data-dir", str(data))
    try:
        assert again.address() == bootstrap, "started again on its ports"
        assert asyncio.run(read_partition_zero(bootstrap)) == [b"kept"]
    finally:
        assert again.stop() == 0, again.text()[-3000:]


@pytest.mark.parametrize(("args", "message"), [
    (["--engine", "tansu", "--brokers", "3"],
     "--brokers and --data-dir are options of --engine kafka (Tansu is one node, memory only)"),
    (["--engine", "kafka", "--brokers", "9"], "--brokers 9: Apache Kafka here runs 1 to 5 nodes"),
])
def test_options_of_the_wrong_engine_are_refused(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "guestinfo", "broker", *args], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"guestinfo: error: {message}"


def test_without_the_jars_it_says_what_to_run(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "guestinfo", "broker", "--engine", "kafka"], capture_output=True, text=True,
        timeout=60, env={**os.environ, "GUESTINFO_KAFKA_LIBS": str(tmp_path)},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"Apache Kafka's jars are not in {tmp_path}: `make setup` fetches them with Maven" in result.stderr
