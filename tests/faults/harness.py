"""What the fault tests run and watch: a three-broker Apache Kafka cluster, `guestinfo` stages as
processes of their own (killed with SIGKILL as a machine dies), guests whose data changes as fast as a
test asks, and the API's watch, where every change must arrive once and in order.

A change is a new hostname `h<i>` of a VMI, `i` counting up per VMI. The pipeline keeps each VMI's
latest state, so two changes that meet in one batch may arrive as the later one alone; what may never
happen is that the API shows a state older than one it showed, shows one twice, or misses the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from collectors.publisher import start_producer
from guestinfo.broker import ensure_topics
from guestinfo.kafka import KafkaCluster
from plumbing.kafka import topic_partitions
from schemas.codec import decode, encode
from schemas.events import AgentReport, DomainReport, VMIRef
from schemas.topics import AGENT_TOPIC, DOMAIN_TOPIC, EVENTS_TOPIC, VMI_TOPIC
from schemas.vmi import VMIRecord

GI = "/apis/guestinfo.kubevirt.io/v1alpha1"


@contextlib.asynccontextmanager
async def three_brokers() -> AsyncIterator[KafkaCluster]:
    """A KRaft cluster of three nodes with the guestinfo topics (replication 3, min.insync.replicas 2)."""
    async with KafkaCluster(3) as cluster:
        await ensure_topics(cluster.bootstrap_servers, replication_factor=cluster.replication_factor)
        yield cluster


async def leader_of(bootstrap: str, topic: str, partition: int) -> int:
    """The node that leads the partition now."""
    return (await partition_states(bootstrap, [topic]))[(topic, partition)][0]


async def partition_states(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], tuple[int, list[int]]]:
    """Each partition's leader and in-sync replicas."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {(topic["topic"], part["partition"]): (part["leader"], sorted(part["isr"]))
            for topic in described for part in topic["partitions"]}


async def until_in_sync(bootstrap: str, nodes: int, timeout: float = 90.0) -> float:
    """Seconds until every partition of the guestinfo topics has all `nodes` replicas in sync."""
    started = time.monotonic()
    topics = [DOMAIN_TOPIC, AGENT_TOPIC, VMI_TOPIC]
    while True:
        try:
            states = await partition_states(bootstrap, topics)
            if all(len(isr) == nodes for _, isr in states.values()):
                return time.monotonic() - started
        except KafkaError:
            pass
        assert time.monotonic() - started < timeout, f"replicas not in sync after {timeout:.0f}s"
        await asyncio.sleep(0.5)


class Stage:
    """One `guestinfo` stage in a process of its own, its log in a file (never a pipe nobody reads)."""

    def __init__(self, name: str, folder: Path, *argv: str) -> None:
        self.name = name
        self.argv = argv
        self.log = folder / f"{name}.log"
        folder.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "guestinfo", "--state-dir", str(folder / name), *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self, grace: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after `grace`; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    async def until_logged(self, pattern: str, timeout: float = 60.0, after: int = 0) -> re.Match[str]:
        """The first match of `pattern` in the log past character `after`."""
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.text()[after:])):
            assert self.alive(), f"{self.name} exited:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"{self.name} never logged {pattern!r}:\n{self.text()[-3000:]}"
            await asyncio.sleep(0.2)
        return found


def stop_all(*stages: Stage | None) -> str:
    """Stop every stage that was started (SIGTERM, SIGKILL after 30 s); their logs, for the test to read."""
    for stage in stages:
        if stage is not None:
            stage.stop()
    return "".join(stage.text() for stage in stages if stage is not None)


def join_worker(folder: Path, bootstrap: str, name: str = "join", app_id: str = "guestinfo-join",
                table_store: str = "memory") -> Stage:
    return Stage(name, folder, "join", "--bootstrap-servers", bootstrap, "--app-id", app_id,
                 "--table-store", table_store)


def serve(folder: Path, bootstrap: str, port: int, store: str, name: str = "serve") -> Stage:
    return Stage(name, folder, "serve", "--bootstrap-servers", bootstrap, "--store", store,
                 "--api-listen", f"127.0.0.1:{port}")


async def assigned_partitions(join: Stage, after: int = 0, timeout: float = 60.0) -> list[int]:
    """The raw partitions the worker logged as its own in its latest assignment past `after`."""
    await join.until_logged(r"ready: raw partitions \[", timeout, after)
    found = re.findall(r"ready: raw partitions \[([\d, ]*)\]", join.text()[after:])
    return [int(p) for p in found[-1].split(",") if p.strip()]


@dataclass
class Guests:
    """The VMIs of one node as its collector publishes them: a domain report once, then an agent report per
    change, with the collector's producer (acks=all, idempotent on Kafka). A send that fails is sent again,
    as the collector does, until it is delivered. Every acknowledged record is remembered (`acked`)."""

    bootstrap: str
    namespace: str
    names: list[str]
    node: str = "node-a"
    #: The last change made per VMI (its hostname is h<i>).
    changes: dict[str, int] = field(default_factory=dict)
    #: (topic, partition, offset) of every record the brokers acknowledged, with its key and hostname.
    acked: dict[tuple[str, int, int], tuple[str, str | None]] = field(default_factory=dict)
    #: The longest a send waited for its acknowledgement, in seconds.
    slowest: float = 0.0
    _producer: Any = None

    def ref(self, name: str) -> VMIRef:
        return VMIRef(namespace=self.namespace, name=name, uid=f"uid-{name}")

    async def __aenter__(self) -> Guests:
        self._producer = await start_producer(self.bootstrap)
        await asyncio.gather(*(self._send(DOMAIN_TOPIC, DomainReport(vmi=self.ref(name), node=self.node,
                                                                      observed_at=time.time(), agent_connected=True))
                               for name in self.names))
        await self.change(self.names)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._producer.stop()

    async def change(self, names: list[str]) -> None:
        """A new hostname for each VMI, delivered."""
        sends = []
        for name in names:
            self.changes[name] = self.changes.get(name, -1) + 1
            report = AgentReport(vmi=self.ref(name), node=self.node, observed_at=time.time(), connected=True,
                                 session="s1", hostname=f"h{self.changes[name]}")
            sends.append(self._send(AGENT_TOPIC, report))
        await asyncio.gather(*sends)

    async def _send(self, topic: str, report: DomainReport | AgentReport) -> None:
        started = time.monotonic()
        while True:
            try:
                sent = await self._producer.send(topic, encode(report), key=report.vmi.key.encode())
                metadata = await sent
            except KafkaError:
                await asyncio.sleep(0.2)
                continue
            break
        self.slowest = max(self.slowest, time.monotonic() - started)
        hostname = report.hostname if isinstance(report, AgentReport) else None
        self.acked[(topic, metadata.partition, metadata.offset)] = (report.vmi.key, hostname)

    async def keep_changing(self, name: str, every: float, until: asyncio.Event) -> None:
        """Change `name` every `every` seconds until `until` is set."""
        while not until.is_set():
            await self.change([name])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), every)


class ApiWatch:
    """`GET .../namespaces/NS/guestinfos?watch=1` on one serve replica, from a resourceVersion or from the
    start: each event's (type, name, change number, resourceVersion), as they come."""

    def __init__(self, port: int, namespace: str, resource_version: str | None = None) -> None:
        query = "watch=1" + (f"&resourceVersion={resource_version}" if resource_version else "")
        self.url = f"http://127.0.0.1:{port}{GI}/namespaces/{namespace}/guestinfos?{query}"
        self.events: list[tuple[str, str, int, str]] = []
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ApiWatch:
        self._task = asyncio.create_task(self._follow())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _follow(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as session, \
                session.get(self.url) as response:
            if response.status != 200:
                self.error = f"{response.status} {await response.text()}"
                return
            async for line in response.content:
                event = orjson.loads(line)
                obj = event["object"]
                if event["type"] in ("BOOKMARK", "ERROR"):
                    if event["type"] == "ERROR":
                        self.error = str(obj)
                    continue
                hostname = obj["status"].get("hostname") or "h-1"
                self.events.append((event["type"], obj["metadata"]["name"], int(hostname[1:]),
                                    obj["metadata"]["resourceVersion"]))
            self.error = self.error or "the watch ended"

    def seen(self, name: str) -> list[int]:
        """The change numbers of `name` the watch saw, in order."""
        return [change for _, event_name, change, _ in self.events if event_name == name]

    async def until_seen(self, finals: dict[str, int], timeout: float) -> float:
        """Seconds until every VMI's final change came through the watch."""
        started = time.monotonic()
        while any(not self.seen(name) or self.seen(name)[-1] != last for name, last in finals.items()):
            assert self.error is None, f"the watch failed: {self.error}"
            missing = {name: (self.seen(name)[-1:], last) for name, last in finals.items()
                       if not self.seen(name) or self.seen(name)[-1] != last}
            assert time.monotonic() - started < timeout, f"not at the API after {timeout:.0f}s: {missing}"
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    def assert_in_order_once(self) -> None:
        """No VMI's state shown twice or older than one shown before."""
        for name in {name for _, name, _, _ in self.events}:
            seen = self.seen(name)
            assert seen == sorted(set(seen)), f"{name}: changes seen at the API out of order or twice: {seen}"


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of `topic`, read from the beginning to its end now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await topic_partitions(consumer, topic)
        assert partitions, f"no topic {topic}"
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        left = {tp for tp, end in ends.items() if end > 0}
        while left:
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records.extend(batch)
            left = {tp for tp in left if await consumer.position(tp) < ends[tp]}
        return records
    finally:
        await consumer.stop()


async def assert_acked_records_kept(guests: Guests) -> None:
    """Every record the brokers acknowledged is in its topic, at the offset they gave."""
    found: dict[tuple[str, int, int], tuple[str, str | None]] = {}
    for topic in (DOMAIN_TOPIC, AGENT_TOPIC):
        for record in await read_topic(guests.bootstrap, topic):
            key = record.key.decode()
            hostname = decode(AgentReport, record.value).hostname if topic == AGENT_TOPIC else None
            found[(topic, record.partition, record.offset)] = (key, hostname)
    lost = {where: what for where, what in guests.acked.items() if found.get(where) != what}
    assert not lost, f"{len(lost)} acknowledged records are not in the topics: {sorted(lost.items())[:5]}"


async def merged_revisions(bootstrap: str, namespace: str) -> dict[str, list[int]]:
    """The revisions of each VMI of `namespace` in the merged topic, in order."""
    revisions: dict[str, list[int]] = defaultdict(list)
    for record in await read_topic(bootstrap, VMI_TOPIC):
        if record.value is not None and record.key.decode().startswith(f"{namespace}/"):
            merged = decode(VMIRecord, record.value)
            revisions[merged.vmi.name].append(merged.revision)
    return dict(revisions)


async def hostname_changes(bootstrap: str, namespace: str) -> dict[str, list[tuple[int, int]]]:
    """Each VMI's HostnameChanged events in the events topic, in order: (revision, change number)."""
    told: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for record in await read_topic(bootstrap, EVENTS_TOPIC):
        event = orjson.loads(record.value)
        if event["type"] == "HostnameChanged" and event["vmi"]["namespace"] == namespace:
            told[event["vmi"]["name"]].append((event["revision"], int(event["after"][1:])))
    return dict(told)


def first_times(items: list[Any]) -> list[Any]:
    """`items` without the ones seen before (a replay sends the same again)."""
    return list(dict.fromkeys(items))


async def assert_nothing_lost(guests: Guests, replays_allowed: bool = False) -> tuple[int, int]:
    """The join made a revision of every change acknowledged to the guests, in order: one HostnameChanged
    event each (the events topic has every revision; the merged topic a batch's last), and each VMI's
    last merged record is its last revision. Unless `replays_allowed`, nothing came twice or out of order
    (a join worker killed before it committed has its outputs sent again: the sinks drop them).
    Returns the counts of events and merged records."""
    told = await hostname_changes(guests.bootstrap, guests.namespace)
    merged = await merged_revisions(guests.bootstrap, guests.namespace)
    for name, last in guests.changes.items():
        events = told.get(name, [])
        if not replays_allowed:
            assert events == first_times(events), f"{name}: events told twice: {events}"
            assert merged[name] == sorted(set(merged[name])), f"{name}: merged revisions twice or back: {merged[name]}"
        changes = [change for _, change in first_times(events)]
        assert changes == list(range(1, last + 1)), (f"{name}: changes made 1..{last}, told {changes}; "
                                                     f"(revision, change) told: {events}; merged: {merged[name]}")
        assert max(merged[name]) == max(revision for revision, _ in events), (name, merged[name][-3:], events[-3:])
    return sum(map(len, told.values())), sum(map(len, merged.values()))
