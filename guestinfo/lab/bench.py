"""`guestinfo bench`: a fixed workload through the pipeline, printed as one table with an engine column: the
rows that need a broker run on a fresh embedded Tansu broker and on a fresh Apache Kafka cluster of three
brokers (replication 3), in the same run.

Rows, in the order they are measured:

1. Join throughput, on each engine. A fresh broker is preloaded with a fixed workload on the raw topics
   (domain reports, and ~1 KB agent reports whose content changes). The real join worker
   (`guestinfo join`, a separate process) consumes it; then, in the same run and on the same data, a
   plain aiokafka loop doing the same work per event (`raw_join`, also a separate process). Each
   process's events counter (`guestinfo_join_events_total`) is scraped with its CPU time from /proc a
   few times a second; the rate is taken between 10 % and 90 % of the events, so start-up, the
   first batch and the tail are not in it.
2. REST reads: a SQLite store of VMI records behind the real API (`sinks.serve.start_api`), driven
   by a separate load-generator process (`rest_load`) over keep-alive connections: open, secured,
   and a bare-aiohttp floor; then cluster-wide GuestInfo lists of the same store with field selectors.
3. End-to-end latency (on each engine) and collector CPU run the fleet simulator (`guestinfo.lab.simulation`); a run
   that cannot be made says "not measured" in its row, with the reason.

A benchmark, not a timed test: nothing here fails on a figure below target. `--size small` is the CI
smoke run. `python -m guestinfo.lab.bench raw-join|faust-ceiling|rest-load ...` are the helper processes' entry points.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import aiohttp

from guestinfo.broker import BrokerError, EmbeddedBroker, free_port
from guestinfo.engines import Broker
from guestinfo.kafka import KafkaCluster
from guestinfo.lab.rest_load import REST_CLIENT, RestResult, percentile, rest_load
from schemas.agent_commands import AGENT_COMMANDS
from schemas.topics import AGENT_TOPIC, DOMAIN_TOPIC, PARTITIONS

NAMESPACE = "bench"
#: observedAt of the first event; every later event is 1 ms later (per VMI and side, always newer).
T0 = 1_764_000_000.0
#: The steady-state window of a join run, as fractions of its events.
WINDOW = (0.1, 0.9)
SAMPLE_INTERVAL = 0.2
STARTUP_TIMEOUT = 120.0
STALL_TIMEOUT = 60.0


class MeasureError(RuntimeError):
    """A measurement could not be made; the row says why (never a traceback)."""


@dataclass(frozen=True)
class Size:
    """One workload size."""

    vmis: int
    events: int
    rest_records: int
    rest_requests: int
    rest_concurrency: int
    #: Timed GuestInfo lists per field selector.
    list_requests: int
    e2e_vmis: tuple[int, ...]
    e2e_samples: int
    collector_vmis: int
    #: The same VMIs over this many libvirt URIs (launchers), for the second collector row.
    collector_launchers: int
    collector_intervals: int
    #: Whole intervals to wait after the first reports before measuring (the collector's warm-up and jitter).
    collector_warmup: int
    #: VMIs in the join's table for the state rows (memory, restart).
    state_vmis: int
    #: VMIs in the guest metrics sink for its scrape row.
    metrics_vmis: int


SIZES = {
    "small": Size(vmis=200, events=2_000, rest_records=500, rest_requests=1_000, rest_concurrency=32,
                  list_requests=10, e2e_vmis=(200,), e2e_samples=5, collector_vmis=100, collector_launchers=10,
                  collector_intervals=1,
                  collector_warmup=0, state_vmis=1_000, metrics_vmis=500),
    "full": Size(vmis=2_000, events=50_000, rest_records=10_000, rest_requests=30_000, rest_concurrency=32,
                 list_requests=40, e2e_vmis=(1_000, 10_000), e2e_samples=40, collector_vmis=1_000,
                 collector_launchers=100, collector_intervals=3, collector_warmup=2, state_vmis=100_000,
                 metrics_vmis=10_000),
}


@dataclass
class Row:
    """One line of the table: `value` None means not measured, and `note` says why."""

    key: str
    label: str
    value: float | None = None
    shown: str = ""
    target: str = "-"
    met: bool | None = None
    ratio: str = ""
    note: str = ""
    #: Extra figures of this row for the JSON output.
    figures: dict[str, float] = field(default_factory=dict)
    #: The Kafka engine the row ran on ("" when it needs none).
    engine: str = ""


@dataclass
class Report:
    size: str
    rows: list[Row] = field(default_factory=list)
    figures: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failed: bool = False


def calibration_workload() -> int:
    """A fixed pure-Python workload (string formatting, dict updates, list sorting), the kind of work
    the pipeline's hot paths do: its time says how fast this machine runs Python."""
    counts: dict[str, int] = {}
    for i in range(200_000):
        name = f"vm-{i % 2_000:05d}/{i % 7}"
        counts[name] = counts.get(name, 0) + i
    ordered = sorted(counts.items(), key=lambda item: (item[1] % 97, item[0]))
    return sum(len(name) * value for name, value in ordered[:1_000]) + len(ordered)


def calibration_row(rounds: int = 7) -> Row:
    """The best of `rounds` timings of `calibration_workload`: figures measured on another machine
    compare with this run's once scaled by the ratio of the two calibration rows."""
    best = min(_timed(calibration_workload) for _ in range(rounds))
    return Row("calibration", "calibration: fixed pure-Python workload (1 core)", best * 1000, f"{best * 1000:.0f} ms",
               note=f"best of {rounds}; a machine twice as fast shows half this figure (guestinfo.lab.bench."
               "calibration_workload)")


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- workload


def vmi_name(index: int) -> str:
    return f"vm-{index:05d}"


def _agent_base(index: int, node: str) -> Any:
    """A realistic agent report of one VMI (~1 KB of JSON): what one collector tick sends."""
    from schemas.events import AgentReport, AgentVersionInfo, GuestInterface, GuestIPAddress, GuestTimezone, VMIRef
    from schemas.kubevirt import FileSystem, FileSystemDisk, GuestAgentCommandInfo, GuestOSInfo, GuestOSUser

    commands = [
        "guest-ping", "guest-get-time", "guest-info", "guest-shutdown", "guest-network-get-interfaces",
        "guest-get-fsinfo", "guest-get-host-name", "guest-get-users", "guest-get-timezone", "guest-get-osinfo",
        "guest-exec", "guest-exec-status", "guest-file-open", "guest-file-close",
    ]
    ip = f"10.{(index >> 8) & 255}.{index & 255}"
    return AgentReport(
        vmi=VMIRef(namespace=NAMESPACE, name=vmi_name(index), uid=f"uid-{index:05d}"),
        node=node, observed_at=T0, connected=True, session=f"s-{index}",
        info=AgentVersionInfo(
            version="8.2.0", supported_commands=[GuestAgentCommandInfo(name=c, enabled=True) for c in commands]
        ),
        os=GuestOSInfo(name="Fedora Linux", kernel_release="6.8.5-301.fc40.x86_64", version="40 (Cloud Edition)",
                       pretty_name="Fedora Linux 40 (Cloud Edition)", version_id="40", machine="x86_64", id="fedora"),
        hostname=vmi_name(index),
        timezone=GuestTimezone(zone="UTC", offset=0),
        users=[GuestOSUser(user_name="fedora", login_time=T0 - 3600)],
        filesystems=[
            FileSystem(disk_name="vda4", mount_point="/", file_system_type="btrfs", used_bytes=2_000_000_000,
                       total_bytes=5_300_000_000, disk=[FileSystemDisk(serial="disk-root", bus_type="virtio")]),
            FileSystem(disk_name="vda3", mount_point="/boot", file_system_type="ext4", used_bytes=180_000_000,
                       total_bytes=1_000_000_000, disk=[FileSystemDisk(serial="disk-root", bus_type="virtio")]),
        ],
        interfaces=[
            GuestInterface(name="eth0", mac=f"02:00:00:00:{(index >> 8) & 255:02x}:{index & 255:02x}", ip_addresses=[
                GuestIPAddress(address=f"{ip}.2", family="ipv4", prefix=24),
                GuestIPAddress(address=f"fd10::{index:x}", family="ipv6", prefix=64),
            ]),
        ],
        fs_freeze_status="thawed",
    )


def _domain_report(index: int, node: str, observed_at: float) -> Any:
    from schemas.events import DomainInterface, DomainReport, VMIRef

    return DomainReport(
        vmi=VMIRef(namespace=NAMESPACE, name=vmi_name(index), uid=f"uid-{index:05d}"),
        node=node, observed_at=observed_at, agent_connected=True,
        interfaces=[DomainInterface(name="default", mac=f"02:00:00:00:{(index >> 8) & 255:02x}:{index & 255:02x}",
                                    binding="masquerade")],
    )


def _agent_report(base: Any, observed_at: float, used_bytes: int) -> Any:
    root, boot = base.filesystems
    return base.model_copy(
        update={"observed_at": observed_at, "filesystems": [root.model_copy(update={"used_bytes": used_bytes}), boot]}
    )


def make_workload(vmis: int, events: int, seed: int = 1) -> list[tuple[str, bytes, bytes]]:
    """The fixed raw workload: (topic, key, value), in production order.

    First one domain report per VMI; then, at random VMIs: 20 % domain reports with unchanged content
    (no output), 10 % agent reports with unchanged content (no output), 70 % agent reports whose root
    filesystem usage changed (a new merged record).
    """
    from schemas.codec import encode

    rng = random.Random(seed)
    nodes = [f"node-{i % 8}" for i in range(vmis)]
    bases = [_agent_base(i, nodes[i]) for i in range(vmis)]
    used = [2_000_000_000] * vmis
    out: list[tuple[str, bytes, bytes]] = []
    for seq in range(events):
        observed_at = T0 + seq * 0.001
        index = seq if seq < vmis else rng.randrange(vmis)
        key = f"{NAMESPACE}/{vmi_name(index)}".encode()
        draw = 0.0 if seq < vmis else rng.random()
        if draw < 0.2:
            out.append((DOMAIN_TOPIC, key, encode(_domain_report(index, nodes[index], observed_at))))
            continue
        if draw >= 0.3:
            used[index] += rng.randrange(4096, 1 << 20)
        out.append((AGENT_TOPIC, key, encode(_agent_report(bases[index], observed_at, used[index]))))
    return out


async def preload(bootstrap: str, workload: list[tuple[str, bytes, bytes]]) -> None:
    """Produce the workload (batched: these are plain topics, not a table's changelog)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for topic, key, value in workload]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int = PARTITIONS,
                        replication_factor: int = 1) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=replication_factor)
                                   for n in names])
    finally:
        await admin.close()


# ------------------------------------------------------------------------------------- child processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Child:
    """A helper process whose stderr goes to a file (shown when it fails)."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self._log: IO[bytes] = tempfile.TemporaryFile()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=self._log, env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise MeasureError(f"{self.name} exited with code {code}: {self.log_tail()}")

    def log_lines(self) -> list[str]:
        self._log.seek(0)
        return self._log.read().decode(errors="replace").splitlines()

    def log_tail(self, lines: int = 5) -> str:
        return " | ".join(self.log_lines()[-lines:]) or "(no output)"

    async def stop(self, grace: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, grace)
            except subprocess.TimeoutExpired:
                progress(f"{self.name} did not stop within {grace:.0f}s; killing it")
                self.process.kill()
                await asyncio.to_thread(self.process.wait)

    def close(self) -> None:
        self._log.close()


# ------------------------------------------------------------------------------------- join measurement


@dataclass(frozen=True)
class Sample:
    at: float
    events: float
    emitted: float
    cpu: float


@dataclass(frozen=True)
class JoinResult:
    """A join run's steady-state figures."""

    events_per_s: float
    cores: float
    cpu_s_total: float
    wall_s_total: float
    emitted: int


def parse_join_metrics(text: str) -> tuple[float, float]:
    """Sum of `guestinfo_join_events_total` and of `guestinfo_join_emitted_total` over their labels."""
    events = emitted = 0.0
    for line in text.splitlines():
        if line.startswith("guestinfo_join_events_total{"):
            events += float(line.rsplit(" ", 1)[1])
        elif line.startswith("guestinfo_join_emitted_total{"):
            emitted += float(line.rsplit(" ", 1)[1])
    return events, emitted


async def scrape(session: aiohttp.ClientSession, url: str) -> tuple[float, float] | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            return parse_join_metrics(await response.text())
    except (aiohttp.ClientError, TimeoutError):
        return None


async def follow(child: Child, metrics_url: str, total: int) -> list[Sample]:
    """Sample the child's events counter and CPU until it has read `total` events."""
    samples: list[Sample] = []
    started = last_change = time.monotonic()
    last_events = -1.0
    last_shown = 0.0
    async with aiohttp.ClientSession() as session:
        while True:
            child.check_alive()
            counts = await scrape(session, metrics_url)
            now = time.monotonic()
            if counts is not None:
                samples.append(Sample(now, counts[0], counts[1], cpu_seconds(child.pid)))
                if counts[0] != last_events:
                    last_events, last_change = counts[0], now
                if counts[0] >= total:
                    return samples
            if now - last_shown >= 3.0:
                shown = f"{int(last_events):,}" if last_events >= 0 else "waiting for metrics"
                progress(f"  {child.name}: {shown} / {total:,} events read ({now - started:.0f}s)")
                last_shown = now
            if last_events <= 0 and now - started > STARTUP_TIMEOUT:
                raise MeasureError(f"{child.name} read no event within {STARTUP_TIMEOUT:.0f}s: {child.log_tail()}")
            if last_events > 0 and now - last_change > STALL_TIMEOUT:
                raise MeasureError(f"{child.name} stalled at {int(last_events):,}/{total:,} events")
            await asyncio.sleep(SAMPLE_INTERVAL)


def _interpolate(samples: list[Sample], events: float) -> tuple[float, float]:
    """(time, cpu) at which the counter passed `events`, linear between the two samples around it."""
    for before, after in itertools.pairwise(samples):
        if before.events < events <= after.events:
            share = (events - before.events) / (after.events - before.events)
            return before.at + share * (after.at - before.at), before.cpu + share * (after.cpu - before.cpu)
    raise MeasureError("too few samples to place the measurement window")


def steady_state(samples: list[Sample], total: int) -> JoinResult:
    """Rate and CPU between WINDOW[0] and WINDOW[1] of the events; totals from the first event on. The
    window starts at the first sample instead when that came later (a small workload, whose first batch
    of up to 1,000 events may be read before the first scrape), as long as half the events are left."""
    if not samples or samples[0].events > 0.5 * total:
        raise MeasureError("the first sample came after half the events (workload too small?)")
    low, high = max(WINDOW[0] * total, samples[0].events + 1), WINDOW[1] * total
    t_low, cpu_low = _interpolate(samples, low)
    t_high, cpu_high = _interpolate(samples, high)
    first = samples[0]
    t_start, cpu_start = (first.at, first.cpu) if first.events >= 1 else _interpolate(samples, 1.0)
    last = samples[-1]
    return JoinResult(
        events_per_s=(high - low) / (t_high - t_low),
        cores=(cpu_high - cpu_low) / (t_high - t_low),
        cpu_s_total=last.cpu - cpu_start,
        wall_s_total=last.at - t_start,
        emitted=int(last.emitted),
    )


async def run_join_child(child: Child, metrics_port: int, total: int) -> JoinResult:
    try:
        samples = await follow(child, f"http://127.0.0.1:{metrics_port}/metrics", total)
        return steady_state(samples, total)
    finally:
        await child.stop()
        warnings = [line for line in child.log_lines() if " WARNING " in line or " ERROR " in line]
        if warnings:
            progress(f"  {child.name} logged {len(warnings)} warnings/errors; last: {warnings[-1][:300]}")
        child.close()


async def measure_faust_join(bootstrap: str, total: int, workdir: Path) -> JoinResult:
    """The real join worker (`guestinfo join`, Tansu settings as deployed) over the preloaded topics."""
    app_id = f"bench-join-{uuid.uuid4().hex[:8]}"
    port = free_port()
    argv = [sys.executable, "-m", "guestinfo", "-q", "--state-dir", str(workdir), "join",
            "--bootstrap-servers", bootstrap, "--app-id", app_id, "--metrics-listen", f"127.0.0.1:{port}"]
    progress(f"join (Faust): starting `guestinfo join --app-id {app_id}` as its own process")
    return await run_join_child(Child("faust join worker", argv), port, total)


async def measure_raw_join(bootstrap: str, total: int, replication_factor: int = 1) -> JoinResult:
    """The same work in a plain aiokafka loop (`raw_join`), as its own process, on the same topics."""
    run = uuid.uuid4().hex[:8]
    output, changelog = f"bench.{run}.vmi", f"bench.{run}.changelog"
    await create_topics(bootstrap, [output, changelog], replication_factor=replication_factor)
    port = free_port()
    argv = [sys.executable, "-m", "guestinfo.lab.bench", "raw-join", "--bootstrap-servers", bootstrap,
            "--group", f"bench-raw-{run}", "--output-topic", output, "--changelog-topic", changelog,
            "--metrics-port", str(port)]
    progress(f"join (plain aiokafka loop): starting it as its own process, output topic {output}")
    return await run_join_child(Child("plain aiokafka join loop", argv), port, total)


#: How a Faust ceiling writes its state: not at all, through Faust's table (`table[key] = value`, one
#: Faust send per write), or the way the join writes it (the table's store, and one round of changelog
#: sends per batch on a producer of its own, `streams.batches`).
CEILING_TABLES = ("none", "faust", "batched", "faust-exactly-once")
#: The ceilings an engine can run: exactly-once needs Kafka's transactions, which Tansu lacks.
ENGINE_CEILINGS = {"tansu": CEILING_TABLES[:3], "kafka": CEILING_TABLES}


async def measure_faust_ceiling(bootstrap: str, total: int, workdir: Path, table: str,
                                replication_factor: int = 1) -> JoinResult:
    """What one Faust worker can do at most on this machine: the join's app (same settings, same
    `take_events` batches) doing no join work, writing the latest raw value per key as `table` says."""
    app_id = f"bench-ceiling-{uuid.uuid4().hex[:8]}"
    port = free_port()
    argv = [sys.executable, "-m", "guestinfo.lab.bench", "faust-ceiling", "--bootstrap-servers", bootstrap,
            "--app-id", app_id, "--datadir", str(workdir / app_id), "--metrics-port", str(port), "--table", table,
            "--replication-factor", str(replication_factor)]
    name = f"Faust ceiling, table writes: {table}"
    progress(f"{name}: starting it as its own process")
    return await run_join_child(Child(name, argv), port, total)


def ceiling_app(bootstrap: str, app_id: str, datadir: Path, table_writes: str, replication_factor: int = 1) -> Any:
    """The join worker's Faust app without the join: events are counted, the last value per key of each
    batch is written as the state (see `CEILING_TABLES`), and nothing else is sent."""
    from streams.app import TABLE_NAME, JoinConfig, faust_settings
    from streams.consumer import JoinApp
    from streams.fold import MAX_RECORD_BYTES
    from streams.metrics import EVENTS
    from streams.output import Send, deliver, start_output_producer

    config = JoinConfig(bootstrap_servers=bootstrap, app_id=app_id, datadir=datadir,
                        replication_factor=replication_factor)
    settings = faust_settings(config)
    if table_writes == "faust-exactly-once":  # Faust's transactions: its sends and offsets per commit
        settings["processing_guarantee"] = "exactly_once"
    app = JoinApp(app_id, **settings)
    raw_topics = app.topic(DOMAIN_TOPIC, AGENT_TOPIC, key_type=bytes, value_type=bytes)
    table = app.Table(TABLE_NAME, default=None, partitions=config.partitions, key_type=bytes, value_type=bytes,
                      use_partitioner=True)

    @app.agent(raw_topics, concurrency=1)
    async def ceiling(stream: Any) -> None:
        await table.changelog_topic.maybe_declare()  # as the join does: Kafka would make it with 1 partition
        producer = await start_output_producer(bootstrap, MAX_RECORD_BYTES)
        changelog = table.changelog_topic.get_topic_name()
        try:
            async for events in stream.take_events(config.batch_size, within=config.batch_wait):
                latest: dict[bytes, bytes] = {}
                for event in events:
                    EVENTS.labels(event.message.topic).inc()
                    latest[event.message.key or b""] = event.message.value
                if table_writes in ("faust", "faust-exactly-once"):
                    for key, value in latest.items():
                        table[key] = value
                elif table_writes == "batched":
                    for key, value in latest.items():
                        table.data[key] = value
                    await deliver(producer, [Send(changelog, key, value) for key, value in latest.items()])
        finally:
            await producer.stop()

    return app


# ------------------------------------------------------------------------------------ the join's state


#: The table stores a join worker may keep its states in (`guestinfo join --table-store`).
TABLE_STORES = ("memory", "rocksdb")
#: The longest a restarted worker may take to recover its table and read a new event.
RECOVERY_TIMEOUT = 600.0


def rss_bytes(pid: int) -> int:
    """Resident memory of a live process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def disk_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def state_workload(vmis: int) -> list[tuple[str, bytes, bytes]]:
    """One domain report and one agent report per VMI: a table of `vmis` full states."""
    from schemas.codec import encode

    out: list[tuple[str, bytes, bytes]] = []
    for index in range(vmis):
        node = f"node-{index % 8}"
        key = f"{NAMESPACE}/{vmi_name(index)}".encode()
        out.append((DOMAIN_TOPIC, key, encode(_domain_report(index, node, T0))))
        out.append((AGENT_TOPIC, key, encode(_agent_report(_agent_base(index, node), T0 + 1, 2_000_000_000))))
    return out


async def measure_state(vmis: int, workdir: Path) -> list[Row]:
    """Per table store: the worker's memory once it holds `vmis` states, and how long a restarted worker
    takes to recover its table and read a new event. On a broker of its own."""
    progress(f"state: {vmis:,} VMIs (a domain and an agent report each), a worker per table store")
    rows = []
    async with EmbeddedBroker(validate_records=False) as broker:
        from guestinfo.broker import ensure_topics

        bootstrap = broker.bootstrap_servers
        await ensure_topics(bootstrap)
        workload = state_workload(vmis)
        await preload(bootstrap, workload)
        for store in TABLE_STORES:
            label = f"join state @ {vmis:,} VMIs, table in {store}"
            try:
                rows.append(await _state_run(bootstrap, workload, vmis, workdir / f"state-{store}", store, label))
            except MeasureError as exc:
                rows.append(Row(f"state_{store}", label, note=f"not measured: {exc}"))
    return rows


async def _state_run(bootstrap: str, workload: list[tuple[str, bytes, bytes]], vmis: int, state_dir: Path,
                     store: str, label: str) -> Row:
    app_id = f"bench-state-{store}-{uuid.uuid4().hex[:8]}"

    def worker(port: int) -> Child:
        return Child(f"join worker ({store})", [
            sys.executable, "-m", "guestinfo", "-q", "--state-dir", str(state_dir), "join",
            "--bootstrap-servers", bootstrap, "--app-id", app_id, "--table-store", store,
            "--metrics-listen", f"127.0.0.1:{port}"])

    port = free_port()
    first = worker(port)
    try:
        samples = await follow(first, f"http://127.0.0.1:{port}/metrics", len(workload))
        await asyncio.sleep(3.0)  # the last batch's sends and table writes
        held = rss_bytes(first.pid)
    finally:
        await first.stop()
        first.close()
    fill_s = samples[-1].at - samples[0].at if len(samples) > 1 else 0.0
    disk = await asyncio.to_thread(disk_bytes, state_dir)
    port = free_port()
    started = time.monotonic()
    again = worker(port)
    try:
        _, key, value = workload[0]
        await preload(bootstrap, [(DOMAIN_TOPIC, key, value.replace(b'"observedAt":1764000000.0',
                                                                   b'"observedAt":1764000100.0'))])
        await _first_event(again, f"http://127.0.0.1:{port}/metrics", started)
        recovered_s = time.monotonic() - started
        after = rss_bytes(again.pid)
    finally:
        await again.stop()
        again.close()
    progress(f"  {store}: {held / 2**20:,.0f} MB resident with {vmis:,} states; restarted and reading again "
             f"after {recovered_s:.1f}s")
    return Row(f"state_{store}", label, recovered_s, f"{held / 2**20:,.0f} MB; restart {recovered_s:.1f} s",
               note=f"resident memory of the worker holding {vmis:,} states (filled in {fill_s:.0f} s); a restarted "
               f"worker read its first new event after {recovered_s:.1f} s "
               f"(process start and table recovery), then held {after / 2**20:,.0f} MB; {disk / 2**20:,.0f} MB on "
               "disk below its state dir",
               figures={"resident_mb": held / 2**20, "restart_s": recovered_s, "disk_mb": disk / 2**20})


async def _first_event(child: Child, metrics_url: str, started: float) -> None:
    """Wait until the worker has read an event (its table recovered: Faust holds the agent until then)."""
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - started < RECOVERY_TIMEOUT:
            child.check_alive()
            counts = await scrape(session, metrics_url)
            if counts is not None and counts[0] >= 1:
                return
            await asyncio.sleep(0.1)
    raise MeasureError(f"{child.name} read no event within {RECOVERY_TIMEOUT:.0f}s of its restart")


# -------------------------------------------------------------------------------- the plain join loop


async def raw_join(bootstrap: str, group: str, output_topic: str, changelog_topic: str,
                   batch_size: int = 1000, batch_wait_ms: int = 50) -> None:
    """The join's work without Faust: `streams.batches.JoinBatches`, the very class the Faust agent
    runs, fed by a plain aiokafka loop.

    Per `getmany` batch (as Faust's `take_events(1000, within=0.05)`): the batch through `JoinBatches`
    (fold, outputs and changed states sent and acknowledged, states kept in a dict), then the offsets
    committed. Runs until cancelled.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from plumbing.kafka import track_topics
    from schemas.topics import DEAD_LETTER_TOPIC, EVENTS_TOPIC
    from streams.batches import JoinBatches
    from streams.fold import MAX_RECORD_BYTES
    from streams.output import start_output_producer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    producer = await start_output_producer(bootstrap, MAX_RECORD_BYTES)
    try:
        partitions = consumer.partitions_for_topic(DOMAIN_TOPIC) or set(range(PARTITIONS))
        consumer.assign([TopicPartition(t, p) for t in (DOMAIN_TOPIC, AGENT_TOPIC) for p in sorted(partitions)])
        states: dict[bytes, bytes] = {}
        await track_topics(producer, [output_topic, EVENTS_TOPIC, DEAD_LETTER_TOPIC, changelog_topic])
        batches = JoinBatches(states, producer, output_topic=output_topic, changelog_topic=changelog_topic)
        while True:
            fetched = await consumer.getmany(timeout_ms=batch_wait_ms, max_records=batch_size)
            if fetched:
                await batches.take(record for records in fetched.values() for record in records)
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


# ------------------------------------------------------------------------------- broker validation

# The other rows run on brokers that do not validate records: they measure the pipeline, and compare with
# earlier runs. With validation, a full run's end-to-end row at 10,000 VMIs had 13 of 40 changes not even
# asked for within 150 s and a p99 of 1.85 s; without, run alone, 4 of 40 and 0.72 s (README). This row
# measures what validation costs.


async def measure_broker_validation(records: int) -> list[Row]:
    """What the embedded broker's schema validation costs: `records` agent reports (the join workload's)
    produced to `guestinfo.agent.v1` of a broker with validation and of one without, alternately, twice
    each; the broker's CPU per record (from /proc) and the producer's records/s, best of each."""
    from guestinfo.broker import ensure_topics
    from schemas.codec import encode
    from schemas.topics import AGENT_TOPIC

    progress(f"broker validation: {records} agent reports, with and without")
    values = [encode(_agent_report(_agent_base(index, f"node-{index % 8}"), T0 + index, 2_000_000_000))
              for index in range(records)]
    workload = [(AGENT_TOPIC, f"{NAMESPACE}/{vmi_name(index)}".encode(), value) for index, value in enumerate(values)]
    best: dict[bool, tuple[float, float]] = {}
    try:
        for validate in (True, False, True, False):
            async with EmbeddedBroker(validate_records=validate) as broker:
                await ensure_topics(broker.bootstrap_servers)
                assert broker.pid is not None
                cpu, started = cpu_seconds(broker.pid), time.perf_counter()
                await preload(broker.bootstrap_servers, workload)
                rate = records / (time.perf_counter() - started)
                per_record = (cpu_seconds(broker.pid) - cpu) / records * 1e6
            if validate not in best or rate > best[validate][0]:
                best[validate] = (rate, per_record)
    except (BrokerError, OSError) as exc:
        return [Row("broker_validation", "broker validation (agent reports)", note=f"not measured: {exc}")]
    (on_rate, on_cpu), (off_rate, off_cpu) = best[True], best[False]
    return [Row("broker_validation", "broker validation (agent reports)", on_cpu,
                f"{on_cpu:,.0f} vs {off_cpu:,.0f} µs broker CPU/record",
                ratio=f"{on_rate / off_rate:.2f} x the records/s",
                note=f"{on_rate:,.0f} vs {off_rate:,.0f} records/s from one producer; {len(values[0])} B each",
                figures={"on_us": on_cpu, "off_us": off_cpu, "on_rate": on_rate, "off_rate": off_rate})]


# ------------------------------------------------------------------------------------ guest metrics


#: Scrapes timed per format; the row shows the median.
SCRAPES = 5


async def measure_guest_metrics(vmis: int) -> list[Row]:
    """`vmis` merged records (the join's, with two filesystems and an interface each) on a fresh broker,
    read by the guest metrics sink (`sinks.guest_metrics`), scraped over HTTP as Prometheus does: the
    median time of `SCRAPES` scrapes and the body's size, in Prometheus text and in OpenMetrics."""
    from schemas.codec import encode
    from sinks.guest_metrics import GuestMetricsSink, serve_guest_metrics

    progress(f"guest metrics: {vmis} VMIs")
    label = f"guest metrics scrape @ {vmis:,} VMIs"
    try:
        async with EmbeddedBroker(validate_records=False) as broker:
            topic = "bench-guest-metrics"
            await create_topics(broker.bootstrap_servers, [topic])
            await preload(broker.bootstrap_servers, [(topic, record.vmi.key.encode(), encode(record))
                                                     for record in make_records(vmis)])
            sink = GuestMetricsSink(broker.bootstrap_servers, topic=topic)
            port = free_port()
            runner = await serve_guest_metrics(sink, "127.0.0.1", port)
            reading = asyncio.create_task(sink.run())
            try:
                await asyncio.wait_for(sink.caught_up.wait(), 300)
                if len(sink.vmis) != vmis:
                    raise MeasureError(f"the sink holds {len(sink.vmis)} of {vmis} VMIs")
                formats = {"text": "text/plain", "openmetrics": "application/openmetrics-text; version=1.0.0"}
                figures: dict[str, float] = {}
                async with aiohttp.ClientSession() as session:
                    for name, accept in formats.items():
                        times, size = [], 0
                        for _ in range(SCRAPES):
                            started = time.perf_counter()
                            async with session.get(f"http://127.0.0.1:{port}/metrics",
                                                   headers={"Accept": accept}) as response:
                                body = await response.read()
                            times.append(time.perf_counter() - started)
                            size = len(body)
                        figures[f"{name}_s"] = statistics.median(times)
                        figures[f"{name}_bytes"] = size
                        figures[f"{name}_series"] = sum(1 for line in body.splitlines()
                                                        if line and not line.startswith(b"#"))
            finally:
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
                await runner.cleanup()
    except (MeasureError, BrokerError, TimeoutError, aiohttp.ClientError) as exc:
        return [Row("guest_metrics_scrape", label, note=f"not measured: {exc}")]
    shown = (f"{figures['text_s'] * 1000:,.0f} ms, {figures['text_bytes'] / 2**20:.1f} MiB "
             f"({figures['text_series']:,.0f} series)")
    note = (f"median of {SCRAPES} scrapes over HTTP; OpenMetrics {figures['openmetrics_s'] * 1000:,.0f} ms, "
            f"{figures['openmetrics_bytes'] / 2**20:.1f} MiB")
    ratio = f"{vmis / figures['text_s']:,.0f} VMIs/s"
    return [Row("guest_metrics_scrape", label, figures["text_s"], shown, ratio=ratio, note=note, figures=figures)]


# ------------------------------------------------------------------------------------------ REST reads


def sample_record(index: int) -> Any:
    """A merged record as the join makes it (domain + agent report of one VMI), for the store."""
    from schemas.codec import decode, encode
    from schemas.vmi import VMIRecord
    from streams.fold import fold
    from streams.join import encode_state

    node = f"node-{index % 8}"
    state = fold(None, DOMAIN_TOPIC, encode(_domain_report(index, node, T0))).state
    record = fold(encode_state(state), AGENT_TOPIC,
                  encode(_agent_report(_agent_base(index, node), T0 + 1, 2_000_000_000))).record
    assert record is not None
    return decode(VMIRecord, record)


def make_records(count: int) -> list[Any]:
    """`count` records: one built by the join, copied under each VMI name (same body size)."""
    from schemas.events import VMIRef

    template = sample_record(0)
    return [
        template.model_copy(update={"vmi": VMIRef(namespace=NAMESPACE, name=vmi_name(i), uid=f"uid-{i:05d}")})
        for i in range(count)
    ]


async def measure_rest(size: Size, workdir: Path) -> RestRuns:
    """Fill a SQLite store, serve it with the real API, drive it from a separate generator process:
    the API open, then secured, then the floor (a bare aiohttp handler with the same bytes).

    Each VMI's record has its own hostname, so each body is distinct and the generator can tell that
    the body it got is the one of the VMI it asked for.
    """
    from schemas.codec import encode_kubevirt_body
    from sinks.store import open_store

    store = await open_store(f"sqlite:///{workdir}/rest.db")
    try:
        progress(f"REST: writing {size.rest_records:,} records to a SQLite store")
        records = [
            record.model_copy(update={
                "guest_agent_info": record.guest_agent_info.model_copy(update={"hostname": record.vmi.name}),
                "node": f"node-{index % 8}",
            })
            for index, record in enumerate(make_records(size.rest_records))
        ]
        for start in range(0, len(records), 1000):
            await store.write_batch(records[start:start + 1000])
        expected = workdir / "rest-expected.json"
        expected.write_text(json.dumps(
            {record.vmi.name: encode_kubevirt_body(record.guest_agent_info).decode() for record in records}
        ))
        runs = RestRuns(open=await _rest_run(store, None, expected, size, "open, plain HTTP"))
        async with bench_reviewer() as reviewer:
            security = secured_settings(workdir, reviewer)
            runs.secured = await _rest_run(store, security, expected, size,
                                           "TLS, bearer token, SubjectAccessReview (cached)")
            runs.reviews = reviewer.reviews
        runs.floor = await _floor_run(expected, size)
        runs.lists = await _list_run(store, size)
        return runs
    finally:
        await store.close()


async def _rest_run(store: Any, security: Any, expected: Path, size: Size, what: str) -> RestResult:
    """One generator run against the real API over `store`, open (`security` None) or secured."""
    from sinks.security import SecurityConfig, open_guard
    from sinks.serve import start_api

    async with open_guard(security or SecurityConfig(), "127.0.0.1") as guard:
        runner, port = await start_api(store, "127.0.0.1", 0, guard)
        try:
            url = f"{'https' if guard.tls else 'http'}://127.0.0.1:{port}"
            progress(f"REST ({what}): {size.rest_requests:,} guestosinfo GETs, concurrency "
                     f"{size.rest_concurrency}, from a separate process ({REST_CLIENT}) against {url}")
            cpu_before = time.process_time()  # this process serves the API and does nothing else meanwhile
            extra = ["--token", BENCH_TOKEN, "--cafile", str(guard.tls.cert_file)] if guard.tls else []
            result = await _run_rest_generator(url, expected, size, extra)
            return replace(result, api_cpu_s=time.process_time() - cpu_before)
        finally:
            await runner.cleanup()


async def _floor_run(expected: Path, size: Size) -> RestResult:
    """The floor: a bare aiohttp handler answering the same paths with the same bytes from a dict."""
    from aiohttp import web

    text = await asyncio.to_thread(expected.read_text)
    bodies = {name: body.encode() for name, body in json.loads(text).items()}

    async def guestosinfo(request: web.Request) -> web.Response:
        return web.Response(body=bodies[request.match_info["name"]], content_type="application/json")

    app = web.Application()
    app.router.add_get(f"/apis/subresources.kubevirt.io/v1/namespaces/{NAMESPACE}/virtualmachineinstances/"
                       "{name}/guestosinfo", guestosinfo)
    async with serving(app) as url:
        progress(f"REST (floor: a bare aiohttp handler, same bytes): {size.rest_requests:,} GETs")
        cpu_before = time.process_time()
        result = await _run_rest_generator(url, expected, size, [])
        return replace(result, api_cpu_s=time.process_time() - cpu_before)


@contextlib.asynccontextmanager
async def serving(app: Any) -> Any:
    """Serve an aiohttp `app` on a free port of 127.0.0.1; yields its base URL."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


#: The bearer token of the secured REST run; the bench's reviewer knows it as user `bench`.
BENCH_TOKEN = "guestinfo-bench-token"


class BenchReviewer:
    """A stand-in kube-apiserver for the secured REST run: knows `BENCH_TOKEN`, allows every access,
    counts the reviews it answers (with cached decisions the timed requests ask none)."""

    def __init__(self) -> None:
        self.reviews = 0
        self.url = ""

    async def review(self, request: Any) -> Any:
        from aiohttp import web

        self.reviews += 1
        body = await request.json()
        if body.get("kind") == "TokenReview":
            known = body.get("spec", {}).get("token") == BENCH_TOKEN
            status: dict[str, Any] = {"authenticated": known}
            if known:
                status["user"] = {"username": "bench", "groups": ["system:authenticated"]}
        else:
            status = {"allowed": True}
        return web.json_response({**body, "status": status})


@contextlib.asynccontextmanager
async def bench_reviewer() -> Any:
    from aiohttp import web

    reviewer = BenchReviewer()
    app = web.Application()
    app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", reviewer.review)
    app.router.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", reviewer.review)
    async with serving(app) as reviewer.url:
        yield reviewer


def secured_settings(workdir: Path, reviewer: BenchReviewer) -> Any:
    """TLS (a self-signed pair), bearer tokens and SubjectAccessReviews through the bench's reviewer,
    decisions kept for the whole run (the row measures the cached path)."""
    from sinks.security import SecurityConfig

    kubeconfig = workdir / "bench-reviewer.kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "bench", "cluster": {"server": reviewer.url}}],
        "users": [{"name": "bench", "user": {"token": "reviewer"}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
    }))
    return SecurityConfig(
        cert_dir=str(workdir / "certificates"), authentication_kubeconfig=str(kubeconfig),
        authorization_kubeconfig=str(kubeconfig), authentication_skip_lookup=True,
        authentication_token_webhook_cache_ttl=3600, authorization_webhook_cache_authorized_ttl=3600,
    )


@dataclass
class RestRuns:
    """The REST runs of one bench: the API open, the API secured, and the bare-aiohttp floor."""

    open: RestResult
    secured: RestResult | None = None
    floor: RestResult | None = None
    #: Reviews the bench's reviewer answered in the secured run (warm-up included).
    reviews: int = 0
    #: GuestInfo lists, per field selector.
    lists: list[ListResult] = field(default_factory=list)


@dataclass(frozen=True)
class ListResult:
    """Timed lists of every GuestInfo with one field selector."""

    selector: str
    items: int
    requests: int
    body_bytes: int
    p50_ms: float
    p99_ms: float
    max_ms: float


#: The lists timed: (what, fieldSelector). The records are spread over 8 nodes.
LIST_SELECTORS = (("one node of 8", "status.nodeName=node-3"), ("all but one", f"metadata.name!={vmi_name(0)}"))


async def _list_run(store: Any, size: Size) -> list[ListResult]:
    """Cluster-wide GuestInfo lists over HTTP, one after another, with each of `LIST_SELECTORS`. The
    client is in this process (a list's cost is the server's: reading the rows and writing the body)."""
    from urllib.parse import quote

    from sinks.serve import start_api

    runner, port = await start_api(store, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}/apis/guestinfo.kubevirt.io/v1alpha1/guestinfos?fieldSelector="
    results = []
    try:
        async with aiohttp.ClientSession() as session:
            for what, selector in LIST_SELECTORS:
                progress(f"REST list ({what}): {size.list_requests} lists of {size.rest_records:,} GuestInfos "
                         f"with fieldSelector {selector}")
                timings: list[float] = []
                items = body_bytes = 0
                for attempt in range(size.list_requests + 2):  # the first two are not timed
                    started = time.perf_counter()
                    async with session.get(base + quote(selector, safe="")) as response:
                        body = await response.read()
                    elapsed = time.perf_counter() - started
                    if response.status != 200:
                        raise MeasureError(f"a list answered {response.status}: {body[:200]!r}")
                    items, body_bytes = len(json.loads(body)["items"]), len(body)
                    if attempt >= 2:
                        timings.append(elapsed * 1000)
                timings.sort()
                results.append(ListResult(selector, items, len(timings), body_bytes, percentile(timings, 0.5),
                                          percentile(timings, 0.99), timings[-1]))
    finally:
        await runner.cleanup()
    return results


async def _run_rest_generator(base_url: str, expected: Path, size: Size, extra: list[str]) -> RestResult:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guestinfo.lab.bench", "rest-load", "--url", base_url, "--expected", str(expected),
        "--requests", str(size.rest_requests), "--concurrency", str(size.rest_concurrency), *extra,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        tail = " | ".join(stderr.decode(errors="replace").strip().splitlines()[-3:])
        raise MeasureError(f"load generator exited with {process.returncode}: {tail}")
    result = RestResult(**json.loads(stdout))
    if result.errors:
        raise MeasureError(f"{result.errors:,} of {result.requests:,} requests were not 200")
    if result.wrong_bodies:
        raise MeasureError(f"{result.wrong_bodies:,} of {result.requests:,} responses had the wrong body")
    return result


# ------------------------------------------------------------------ end-to-end latency, collector CPU


async def measure_e2e_latency(bootstrap: str, vmis: int, workdir: Path, samples: int,
                              target_s: float) -> list[Row]:
    """Agent reply changed → visible in the REST API, p50/p95/p99, at a steady load of `vmis` VMIs.

    The simulated fleet (`vmis` VMIs, 1000 per node, the collectors' default poll intervals, still guests) publishes to
    a join worker (`guestinfo join`) and `guestinfo serve`, all on this broker. For `samples` random VMIs,
    staggered over a few intervals: the agent's hostname is changed (`fleet.set_hostname`), the time a
    collector got the new reply is taken (`fleet.served`), and the API's guestosinfo is polled until it
    shows the new hostname. Latency = visible - served (the wait for the next tick is not in it); how
    long the collectors took to ask is reported beside it.
    """
    label = f"end-to-end latency p50/p95/p99 @ {vmis:,} VMIs"
    target = f"p99 < {target_s:g} s"
    try:
        changes, settled = await _e2e_run(bootstrap, vmis, workdir, samples)
    except (MeasureError, RuntimeError, OSError) as exc:
        return [Row("e2e", label, target=target, note=f"not measured: {exc}")]
    ordered = sorted(change.latency for change in changes if change.latency is not None)
    if not ordered:
        return [Row("e2e", label, target=target, note=f"not measured: none of {samples} changes became visible")]
    unserved = sum(1 for change in changes if change.asked_after is None)
    invisible = sum(1 for change in changes if change.asked_after is not None and change.latency is None)
    asked = sorted(change.asked_after for change in changes if change.asked_after is not None)
    p50, p95, p99 = (percentile(ordered, q) for q in (0.5, 0.95, 0.99))
    note = (f"{len(ordered)} of {samples} changes timed, served by the agent → shown by the API, from when all "
            f"{samples} sampled VMIs were in the API ({settled:.0f} s after the first: the fleet's first polls over); "
            f"asked by the collectors {percentile(asked, 0.5):.0f} s (median) / {asked[-1]:.0f} s (longest) after "
            f"the change (hostname polled every {HOSTNAME_INTERVAL:.0f} s ± 10 %)")
    if unserved:
        note += f"; {unserved} never asked for by a collector within {E2E_ASK_TIMEOUT:.0f}s"
    if invisible:
        note += f"; {invisible} served but not in the API within {E2E_SHOW_TIMEOUT:.0f}s"
    figures = {"e2e_p50_s": p50, "e2e_p95_s": p95, "e2e_p99_s": p99, "e2e_unserved": unserved,
               "e2e_invisible": invisible, "e2e_asked_max_s": asked[-1]}
    return [Row("e2e", label, p99, f"{p50:.2f} / {p95:.2f} / {p99:.2f} s", target,
                p99 < target_s and not unserved and not invisible, note=note, figures=figures)]


#: The collectors' default interval of `guest-get-host-name`.
HOSTNAME_INTERVAL = next(command.interval for command in AGENT_COMMANDS if command.name == "guest-get-host-name")
#: A change must be asked for within two hostname periods (a period is at most 1.1 x the interval: the
#: collectors' jitter); a change the collectors ask for later means they are behind their schedule.
E2E_ASK_TIMEOUT = 2.2 * HOSTNAME_INTERVAL
#: Once asked, a change must be in the API within this.
E2E_SHOW_TIMEOUT = 60.0


@dataclass(frozen=True)
class TimedChange:
    """One hostname change: seconds until a collector asked for it, and from then until the API showed
    it (None: not within the timeouts)."""

    asked_after: float | None
    latency: float | None = None


async def _e2e_run(bootstrap: str, vmis: int, workdir: Path, samples: int) -> tuple[list[TimedChange], float]:
    from guestinfo.lab.simulation import start_fleet

    api_port, join_port = free_port(), free_port()
    join = Child("e2e join worker", [sys.executable, "-m", "guestinfo", "-q", "--state-dir", str(workdir), "join",
                                     "--bootstrap-servers", bootstrap, "--app-id", f"bench-e2e-{uuid.uuid4().hex[:8]}",
                                     "--metrics-listen", f"127.0.0.1:{join_port}"])
    serve = Child("e2e serve", [sys.executable, "-m", "guestinfo", "-q", "--state-dir", str(workdir), "serve",
                                "--bootstrap-servers", bootstrap, "--store", f"sqlite:///{workdir}/e2e.db",
                                "--api-listen", f"127.0.0.1:{api_port}"])
    nodes = max(1, vmis // 1000)
    progress(f"e2e: join worker, serve, and a simulated fleet of {nodes} node(s) x {vmis // nodes:,} VMIs")
    fleet = None
    try:
        fleet = await start_fleet(bootstrap, nodes, vmis // nodes, None, workdir / "e2e-fleet", events=False,
                                  verbosity=-1)
        base = f"http://127.0.0.1:{api_port}/apis/subresources.kubevirt.io/v1/namespaces"
        rng = random.Random(2)
        keys = rng.sample(fleet.vmi_keys, min(samples, len(fleet.vmi_keys)))
        async with aiohttp.ClientSession() as session:
            try:
                await _wait_visible_any(session, base, keys[:5], join, serve)
            except MeasureError as exc:
                counts = await scrape(session, f"http://127.0.0.1:{join_port}/metrics")
                read = f"{int(counts[0]):,}" if counts else "?"
                raise MeasureError(f"{exc}; collectors had published {await fleet.reports_published():,} reports, "
                                   f"the join worker had read {read}") from exc
            started = time.monotonic()
            await _wait_all_visible(session, base, keys, join, serve)
            settled = time.monotonic() - started
            progress(f"  pipeline warm, the sampled VMIs in the API {settled:.0f}s later; timing {len(keys)} hostname "
                     f"changes over ~{len(keys) * 0.5:.0f}s")
            tasks = []
            for key in keys:
                tasks.append(asyncio.create_task(_one_change(session, base, fleet, key)))
                await asyncio.sleep(0.5)
            return list(await asyncio.gather(*tasks)), settled
    finally:
        if fleet is not None:
            await fleet.stop()
        for child in (serve, join):
            await child.stop()
            child.close()


async def _guestosinfo(session: aiohttp.ClientSession, base: str, key: str) -> tuple[int, str | None]:
    """(HTTP status, hostname) of the VMI's guestosinfo; status 0 when the API did not answer."""
    namespace, name = key.split("/", 1)
    try:
        async with session.get(f"{base}/{namespace}/virtualmachineinstances/{name}/guestosinfo") as response:
            if response.status != 200:
                return response.status, None
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, ValueError):
        return 0, None
    value = body.get("hostname", "") if isinstance(body, dict) else None
    return 200, value if isinstance(value, str) else None


async def _hostname(session: aiohttp.ClientSession, base: str, key: str) -> str | None:
    return (await _guestosinfo(session, base, key))[1]


#: The fleet's first polls (every command of every VMI at once) are over when all sampled VMIs are in the API.
FLEET_SETTLE_TIMEOUT = 300.0


async def _wait_all_visible(session: aiohttp.ClientSession, base: str, keys: list[str], *children: Child) -> None:
    """Until every one of `keys` is in the API: the changes are then timed at the fleet's steady load, not
    in the burst of its first polls."""
    deadline = time.monotonic() + FLEET_SETTLE_TIMEOUT
    missing = list(keys)
    while missing:
        missing = [key for key in missing if (await _guestosinfo(session, base, key))[0] != 200]
        for child in children:
            child.check_alive()
        if missing and time.monotonic() > deadline:
            raise MeasureError(f"{len(missing)} of {len(keys)} sampled VMIs not in the API within "
                               f"{FLEET_SETTLE_TIMEOUT:.0f}s of the first")
        await asyncio.sleep(0.5)


async def _wait_visible_any(session: aiohttp.ClientSession, base: str, keys: list[str], *children: Child) -> None:
    """Until the API serves guestosinfo of one of `keys` (the pipeline has carried a first tick through)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    statuses: dict[int, int] = {}
    while True:
        answers = [await _guestosinfo(session, base, key) for key in keys]
        if any(status == 200 for status, _ in answers):
            return
        for status, _ in answers:
            statuses[status] = statuses.get(status, 0) + 1
        for child in children:
            child.check_alive()
        if time.monotonic() > deadline:
            shown = ", ".join(f"HTTP {code or 'no answer'} x{count}" for code, count in sorted(statuses.items()))
            raise MeasureError(f"none of {len(keys)} sampled VMIs in the API within {STARTUP_TIMEOUT:.0f}s ({shown})")
        await asyncio.sleep(0.5)


async def _one_change(session: aiohttp.ClientSession, base: str, fleet: Any, key: str) -> TimedChange:
    """When a collector asked the agent for the new hostname, and how long the API then took to show it."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    changed = await fleet.set_hostname(key, name)
    served = await fleet.served(key, name, timeout=E2E_ASK_TIMEOUT)
    if served is None:
        return TimedChange(None)
    deadline = time.monotonic() + E2E_SHOW_TIMEOUT
    while time.monotonic() < deadline:
        if await _hostname(session, base, key) == name:
            return TimedChange(served - changed, time.time() - served)
        await asyncio.sleep(0.02)
    return TimedChange(served - changed)


#: The commands whose polling rate the collector row checks, by their short name: upstream polls the
#: freeze status every 5 s and the users every 10 s (the others every 2 or 5 minutes, still warming up
#: during a short measurement).
CHECKED_RATES = {"users": "guest-get-users", "freeze": "guest-fsfreeze-status"}


async def measure_collector_cpu(bootstrap: str, vmis: int, workdir: Path, intervals: int,
                                warmup: int = 0, launchers: int = 0) -> list[Row]:
    """CPU of one collector process (one simulated node of `vmis` VMIs) at its default poll intervals.

    The simulated fleet (`guestinfo.lab.simulation`) runs the real collector (no `--interval`: upstream's
    per-command intervals) against a libvirt test-driver node and simulated guest agents (their own
    process); once its first reports are published and `warmup` x 10 s have passed, the collector's CPU
    is read from /proc over `intervals` x 10 s. Reported per 1000 VMIs, as a share of one core, with
    the agent calls it made meanwhile (its metrics) against what the intervals ask for: a collector
    that polls less than asked would look cheaper than it is.
    """
    key = "collector_launchers" if launchers else "collector"
    label = (f"collector CPU per 1000 VMIs over {launchers} launchers" if launchers
             else "collector CPU per 1000 VMIs @ default intervals")
    target = "< 10% of a core"
    try:
        share, published, calls, wall = await _collector_share(bootstrap, vmis, workdir, intervals, warmup, launchers)
    except (MeasureError, RuntimeError, OSError) as exc:
        return [Row(key, label, target=target, note=f"not measured: {exc}")]
    from collectors.config import DEFAULT_POLL_INTERVALS

    per_1000 = share * 1000 / vmis
    rates = {name: calls.get(command, 0.0) / vmis / wall * 60 for name, command in CHECKED_RATES.items()}
    asked = {name: 60 / DEFAULT_POLL_INTERVALS[command] for name, command in CHECKED_RATES.items()}
    polled = ", ".join(f"{name} {rates[name]:.2f}/min per VMI ({rates[name] / asked[name]:.2f} of the "
                       f"{asked[name]:.0f} asked)" for name in CHECKED_RATES)
    spread = (f" over {launchers} libvirt connections of {vmis // launchers} VMIs each (test-driver files: no "
              "events, so each is listed every 10 s, where a real launcher is listed on its events and every 60 s)"
              if launchers else "")
    note = (f"1 collector, {vmis:,} simulated VMIs{spread}, over {wall:.0f} s after {warmup * 10} s of warm-up; "
            f"{published:,} reports published meanwhile; agent calls: {polled}")
    figures = {f"collector_{name}_polls_per_vmi_minute": rates[name] for name in CHECKED_RATES}
    figures |= {f"collector_{name}_polled_share_of_asked": rates[name] / asked[name] for name in CHECKED_RATES}
    return [Row(key, label, per_1000 * 100, f"{per_1000:.1%} of a core", target, per_1000 < 0.10, note=note,
                figures=figures)]


async def _collector_share(bootstrap: str, vmis: int, workdir: Path, intervals: int,
                           warmup: int, launchers: int = 0) -> tuple[float, int, dict[str, float], float]:
    """The collector's share of a core, the reports it published and the agent calls it made by
    command, over the measured wall time (the last figure)."""
    from guestinfo.lab.simulation import start_fleet

    interval = 10.0  # the measurement's time unit; the collector runs with its default per-command intervals
    over = f", over {launchers} libvirt URIs" if launchers else ""
    progress(f"collector: simulated node of {vmis:,} VMIs{over} at the collector's default poll intervals")
    fleet = await start_fleet(bootstrap, 1, vmis, None, workdir / f"fleet-{launchers}", events=False, verbosity=-1,
                              launchers=launchers)
    try:
        deadline = time.monotonic() + 6 * interval
        while await fleet.reports_published() < vmis:
            if time.monotonic() > deadline:
                raise MeasureError(f"the collector published under {vmis:,} reports in {6 * interval:.0f}s")
            await asyncio.sleep(0.5)
        if warmup:
            progress(f"  first reports published; warming up for {warmup} interval(s)")
            await asyncio.sleep(warmup * interval)
        (pid,) = fleet.collector_pids()
        published, calls, cpu, started = (
            await fleet.reports_published(), await fleet.agent_calls(), cpu_seconds(pid), time.monotonic())
        progress(f"  measuring {intervals} interval(s)")
        await asyncio.sleep(intervals * interval)
        cpu, wall = cpu_seconds(pid) - cpu, time.monotonic() - started
        calls_after = await fleet.agent_calls()
        made = {command: count - calls.get(command, 0.0) for command, count in calls_after.items()}
        return cpu / wall, await fleet.reports_published() - published, made, wall
    finally:
        await fleet.stop()


# ---------------------------------------------------------------------------------------------- table


def _join_rows(report: Report, faust: JoinResult | None, raw: JoinResult | None, total: int) -> None:
    ratio = faust.events_per_s / raw.events_per_s if faust and raw else None
    report.figures.update({
        "join_faust_events_per_s": faust.events_per_s if faust else None,
        "join_faust_cpu_s": faust.cpu_s_total if faust else None,
        "join_faust_cores": faust.cores if faust else None,
        "join_faust_emitted": faust.emitted if faust else None,
        "join_raw_events_per_s": raw.events_per_s if raw else None,
        "join_raw_cpu_s": raw.cpu_s_total if raw else None,
        "join_raw_cores": raw.cores if raw else None,
        "join_raw_emitted": raw.emitted if raw else None,
        "join_ratio_faust_raw": ratio,
    })
    if faust is not None:
        report.rows.append(Row(
            "join_faust", "join, Faust worker (1 process)", faust.events_per_s, f"{faust.events_per_s:,.0f} ev/s",
            "≥ 5,000 ev/s", faust.events_per_s >= 5000, f"{ratio:.2f} of plain" if ratio else "",
            f"{faust.cpu_s_total:.1f} CPU s for {total:,} events ({faust.cpu_s_total / total * 1e6:,.0f} µs/event), "
            f"{faust.cores:.2f} cores; {faust.emitted:,} records out"))
    if raw is not None:
        report.rows.append(Row(
            "join_raw", "join, plain aiokafka loop (1 process)", raw.events_per_s, f"{raw.events_per_s:,.0f} ev/s",
            "-", None, "1.00" if faust else "",
            f"{raw.cpu_s_total:.1f} CPU s for {total:,} events ({raw.cpu_s_total / total * 1e6:,.0f} µs/event), "
            f"{raw.cores:.2f} cores; {raw.emitted:,} records out"))


CEILING_ROWS = {
    "none": ("join_faust_ceiling", "Faust ceiling: take_events, no work (1 process)", ""),
    "faust": ("join_faust_ceiling_table", "Faust ceiling: + one table write per key (1 process)",
              " when it writes its state through Faust's table"),
    "batched": ("join_faust_ceiling_batched", "Faust ceiling: + the join's changelog round per batch (1 process)",
                " when it writes its state as the join does"),
    "faust-exactly-once": ("join_faust_ceiling_exactly_once",
                           "Faust ceiling: + one table write per key, exactly once (1 process)",
                           " with processing_guarantee=exactly_once (Faust's transactions, one per commit)"),
}
#: The join against the Faust ceiling that writes its state through Faust's table: at least this.
CEILING_RATIO_TARGET = 0.8


def _ceiling_rows(report: Report, ceilings: dict[str, JoinResult], faust: JoinResult | None,
                  raw: JoinResult | None, total: int) -> None:
    """What limits the Faust join: the same app with no join work, then with the state writes added;
    and the join's rate as a share of the ceiling that writes through Faust's table."""
    for table in CEILING_TABLES:
        if table not in ceilings:
            continue
        result = ceilings[table]
        key, label, how = CEILING_ROWS[table]
        report.figures[f"{key}_events_per_s"] = result.events_per_s
        ratio = f"{result.events_per_s / raw.events_per_s:.2f} of plain" if raw else ""
        if table == "faust-exactly-once" and "faust" in ceilings:
            ratio = f"{result.events_per_s / ceilings['faust'].events_per_s:.2f} of at least once"
        report.rows.append(Row(
            key, label, result.events_per_s, f"{result.events_per_s:,.0f} ev/s", "-", None, ratio,
            f"{result.cpu_s_total / total * 1e6:,.0f} µs CPU/event, {result.cores:.2f} cores: the most one Faust "
            f"worker does here{how}"))
    table_ceiling, batched = ceilings.get("faust"), ceilings.get("batched")
    label = "join, Faust worker / Faust ceiling + one table write per key"
    if faust is None or table_ceiling is None:
        report.figures["join_ratio_ceiling_table"] = None
        report.rows.append(Row("join_ratio_ceiling_table", label, target=f"≥ {CEILING_RATIO_TARGET}",
                               note="not measured: a row it needs is missing"))
        return
    share = faust.events_per_s / table_ceiling.events_per_s
    report.figures["join_ratio_ceiling_table"] = share
    note = ("the join writes its state as the row below does, not through Faust's table; "
            f"{faust.events_per_s / batched.events_per_s:.2f} of that row, the rest being the fold and the outputs"
            if batched is not None else "")
    report.rows.append(Row("join_ratio_ceiling_table", label, share, f"{share:.2f}", f"≥ {CEILING_RATIO_TARGET}",
                           share >= CEILING_RATIO_TARGET, note=note))


def _rest_rows(report: Report, rest: RestResult) -> None:
    from aiohttp import http_parser

    report.figures.update({
        "rest_requests_per_s": rest.requests_per_s, "rest_p50_ms": rest.p50_ms,
        "rest_p95_ms": rest.p95_ms, "rest_p99_ms": rest.p99_ms,
    })
    per_request_us = rest.api_cpu_s / max(1, rest.requests) * 1e6
    client_us = rest.client_cpu_s / max(1, rest.requests) * 1e6
    report.figures["rest_api_cpu_us_per_request"] = per_request_us
    report.figures["rest_client_cpu_us_per_request"] = client_us
    # aiohttp falls back to its pure-Python HTTP parser without its C extensions (or with AIOHTTP_NO_EXTENSIONS).
    parser = "C" if http_parser.HttpRequestParser.__module__ == "aiohttp._http_parser" else "pure-Python"
    report.rows.append(Row("rest_rps", "REST guestosinfo reads/s", rest.requests_per_s,
                           f"{rest.requests_per_s:,.0f} req/s", "≥ 5,000 req/s", rest.requests_per_s >= 5000,
                           note=f"{rest.requests:,} GETs, {rest.body_bytes:,} B bodies, concurrency "
                           f"{rest.concurrency}, every status and body checked; API {per_request_us:,.0f} µs "
                           f"CPU/request (aiohttp {parser} parser); generator ({REST_CLIENT}) {client_us:,.0f} µs "
                           "CPU/request on the same cores"))
    report.rows.append(Row("rest_latency", "REST guestosinfo latency p50 / p99", rest.p99_ms,
                           f"{rest.p50_ms:.1f} / {rest.p99_ms:.1f} ms", "p99 < 20 ms", rest.p99_ms < 20,
                           note=f"measured in the generator, request written to last body byte; max "
                           f"{rest.max_ms:.1f} ms"))


def format_table(report: Report) -> str:
    header = ("measure", "engine", "figure", "target", "met?", "ratio", "notes")
    lines = [
        (r.label, r.engine or "-", r.shown or "-", r.target, "-" if r.met is None else "yes" if r.met else "NO",
         r.ratio or "-", r.note)
        for r in report.rows
    ]
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header) - 1)]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)) + "  " + row[-1]

    rule = "  ".join("-" * w for w in widths) + "  " + "-" * 5
    return "\n".join([fmt(header), rule, *(fmt(line) for line in lines), "", *report.notes])


def write_json(report: Report, path: str) -> None:
    data = {
        "size": report.size,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "figures": report.figures,
        "rows": [asdict(r) for r in report.rows],
        "notes": report.notes,
    }
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- main


async def _join_phase(report: Report, size: Size, broker: Broker, workdir: Path) -> None:
    from guestinfo.broker import ensure_topics

    bootstrap, replication = broker.bootstrap_servers, broker.replication_factor
    engine = engine_name(broker)
    await ensure_topics(bootstrap, replication_factor=replication)
    progress(f"workload: {size.events:,} raw events for {size.vmis:,} VMIs")
    workload = make_workload(size.vmis, size.events)
    agent_sizes = [len(v) for t, _, v in workload if t == AGENT_TOPIC]
    progress(f"  {len(agent_sizes):,} agent reports (avg {sum(agent_sizes) // max(1, len(agent_sizes))} B), "
             f"{size.events - len(agent_sizes):,} domain reports; producing them")
    await preload(bootstrap, workload)
    report.notes.append(
        f"join workload: {size.events:,} raw events preloaded ({size.vmis:,} VMIs, 4 partitions; 70% agent reports "
        f"with changed content, avg {sum(agent_sizes) // max(1, len(agent_sizes))} B; 10% unchanged agent, 20% "
        f"unchanged domain reports). Rate over {WINDOW[0]:.0%}-{WINDOW[1]:.0%} of the events, from the process's "
        "events counter; CPU from /proc. Both join loops run each batch of up to 1,000 events through "
        "streams.batches.JoinBatches: one fold per VMI, at most one record and one changelog write per VMI and batch, "
        "sent in rounds (records and dead letters, change events when there are any, then the changelog); the "
        "Faust worker keeps its states in its table's store, the plain loop in a dict.")
    faust = raw = None
    try:
        faust = await measure_faust_join(bootstrap, size.events, workdir)
        progress(f"  Faust: {faust.events_per_s:,.0f} ev/s, {faust.cores:.2f} cores")
    except MeasureError as exc:
        report.failed = True
        report.rows.append(Row("join_faust", "join, Faust worker (1 process)", target="≥ 5,000 ev/s",
                               note=f"not measured: {exc}"))
    try:
        raw = await measure_raw_join(bootstrap, size.events, replication)
        progress(f"  plain loop: {raw.events_per_s:,.0f} ev/s, {raw.cores:.2f} cores")
    except MeasureError as exc:
        report.failed = True
        report.rows.append(Row("join_raw", "join, plain aiokafka loop (1 process)", note=f"not measured: {exc}"))
    ceilings: dict[str, JoinResult] = {}
    for table in ENGINE_CEILINGS[engine]:
        try:
            ceilings[table] = await measure_faust_ceiling(bootstrap, size.events, workdir, table, replication)
            progress(f"  Faust ceiling, table writes {table}: {ceilings[table].events_per_s:,.0f} ev/s")
        except MeasureError as exc:
            report.notes.append(f"Faust ceiling, table writes {table}: not measured: {exc}")
    _join_rows(report, faust, raw, size.events)
    _ceiling_rows(report, ceilings, faust, raw, size.events)


async def _rest_phase(report: Report, size: Size, workdir: Path) -> None:
    try:
        runs = await measure_rest(size, workdir)
    except MeasureError as exc:
        report.failed = True
        report.rows.append(Row("rest_rps", "REST guestosinfo reads/s", target="≥ 5,000 req/s",
                               note=f"not measured: {exc}"))
        return
    rest = runs.open
    progress(f"  REST: {rest.requests_per_s:,.0f} req/s, p99 {rest.p99_ms:.1f} ms")
    _rest_rows(report, rest)
    _secured_rows(report, runs)
    _list_rows(report, runs)


def _list_rows(report: Report, runs: RestRuns) -> None:
    """One row per list selector; the ratio is items per second of the list against guestosinfo reads/s."""
    for index, listed in enumerate(runs.lists):
        items_per_s = listed.items / (listed.p50_ms / 1000) if listed.p50_ms else 0.0
        report.figures.update({f"list_{index}_p99_ms": listed.p99_ms, f"list_{index}_items": listed.items})
        report.rows.append(Row(
            f"list_{index}", f"REST list, fieldSelector {listed.selector}", listed.p99_ms,
            f"{listed.items:,} items: p50 {listed.p50_ms:.0f} / p99 {listed.p99_ms:.0f} ms", "-", None,
            ratio=f"{items_per_s / runs.open.requests_per_s:.1f} x reads/s" if runs.open.requests_per_s else "",
            note=f"cluster-wide list of every GuestInfo, filtered in the store; {listed.requests} lists one after "
                 f"another, {listed.body_bytes:,} B bodies, max {listed.max_ms:.0f} ms; the ratio is objects "
                 "listed per second (at p50) to single guestosinfo reads per second",
        ))


def _secured_rows(report: Report, runs: RestRuns) -> None:
    """The secured run and the floor, each as a ratio to the open API's reads/s in this same run."""
    rest, secured, floor = runs.open, runs.secured, runs.floor
    if secured is not None:
        ratio = secured.requests_per_s / rest.requests_per_s
        report.figures.update({
            "rest_secured_requests_per_s": secured.requests_per_s, "rest_secured_p99_ms": secured.p99_ms,
            "rest_secured_ratio": ratio,
        })
        per_request_us = secured.api_cpu_s / max(1, secured.requests) * 1e6
        report.rows.append(Row(
            "rest_secured", "REST reads/s, secured (TLS + token + SAR, cached)", secured.requests_per_s,
            f"{secured.requests_per_s:,.0f} req/s, p99 {secured.p99_ms:.1f} ms", "≥ 0.8 x open", ratio >= 0.8,
            ratio=f"{ratio:.2f} x open",
            note=f"same {secured.requests:,} GETs over TLS, each with a bearer token; {runs.reviews:,} reviews "
                 f"answered in the run (all in the warm-up, which reads every VMI once); API {per_request_us:,.0f} "
                 "µs CPU/request, warm-up and TLS handshakes included",
        ))
    if floor is not None:
        ratio = rest.requests_per_s / floor.requests_per_s
        report.figures.update({"rest_floor_requests_per_s": floor.requests_per_s, "rest_open_to_floor_ratio": ratio})
        per_request_us = floor.api_cpu_s / max(1, floor.requests) * 1e6
        report.rows.append(Row(
            "rest_floor", "REST floor: a bare aiohttp handler, same bytes", floor.requests_per_s,
            f"{floor.requests_per_s:,.0f} req/s, p99 {floor.p99_ms:.1f} ms", "-", None,
            ratio=f"API open {ratio:.2f} x floor",
            note=f"dict lookup and the same body, same generator and cores; {per_request_us:,.0f} µs CPU/request: "
                 "what aiohttp alone costs, so the API's own cost shows as the ratio",
        ))


#: The engines every broker-bound row runs on, in this order: the embedded default, then production's.
ENGINES = ("tansu", "kafka")
#: Apache Kafka as production runs it: three brokers, replication 3, min.insync.replicas 2.
KAFKA_BROKERS = 3
#: The end-to-end p99 each engine is held to.
E2E_TARGET_S = {"tansu": 1.0, "kafka": 0.5}


def start_engine(name: str, workdir: Path) -> Broker:
    """A fresh engine for one phase (not started): Tansu without record validation (the join's records
    are the project's own), or Apache Kafka with `KAFKA_BROKERS` nodes."""
    if name == "kafka":
        return KafkaCluster(KAFKA_BROKERS, workdir / f"kafka-{uuid.uuid4().hex[:8]}")
    return EmbeddedBroker(validate_records=False)


def engine_label(name: str) -> str:
    return f"Kafka x{KAFKA_BROKERS}" if name == "kafka" else name


def add_engine_rows(report: Report, measured: Report, engine: str) -> None:
    """The rows, figures and notes of one engine's phase, tagged with the engine: Apache Kafka's keys
    get a `_kafka` suffix, so both engines' figures sit side by side in the JSON."""
    suffix = "_kafka" if engine == "kafka" else ""
    for row in measured.rows:
        report.rows.append(replace(row, key=row.key + suffix, engine=engine_label(engine)))
    report.figures.update({key + suffix: value for key, value in measured.figures.items()})
    report.notes += [note for note in measured.notes if note not in report.notes]
    report.failed = report.failed or measured.failed


def engine_name(broker: Broker) -> str:
    return "kafka" if isinstance(broker, KafkaCluster) else "tansu"


async def _engine_join_rows(report: Report, size: Size, broker: Broker, workdir: Path) -> None:
    """The join phase on `broker`, its rows tagged with the broker's engine."""
    measured = Report(report.size)
    await _join_phase(measured, size, broker, workdir)
    add_engine_rows(report, measured, engine_name(broker))


async def _e2e_phase(vmis: int, workdir: Path, samples: int, engine: str) -> list[Row]:
    """On a fresh engine: a new join group must not first work through the earlier rows' events."""
    from guestinfo.broker import ensure_topics

    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    progress(f"e2e at {vmis:,} VMIs on {engine_label(engine)}")
    async with start_engine(engine, workdir) as broker:
        await ensure_topics(broker.bootstrap_servers, replication_factor=broker.replication_factor)
        return await measure_e2e_latency(broker.bootstrap_servers, vmis, workdir, samples, E2E_TARGET_S[engine])


async def bench(size_name: str) -> Report:
    size = SIZES[size_name]
    report = Report(size_name)
    with tempfile.TemporaryDirectory(prefix="guestinfo-bench-") as tmp:
        workdir = Path(tmp)  # absolute: tempfile uses an absolute temporary directory
        calibration = calibration_row()
        progress(f"calibration: {calibration.shown}")
        report.figures["calibration_ms"] = calibration.value
        progress(f"size {size_name}: starting the embedded broker")
        async with EmbeddedBroker(validate_records=False) as broker:
            await _engine_join_rows(report, size, broker, workdir)
            collector = await measure_collector_cpu(broker.bootstrap_servers, size.collector_vmis, workdir,
                                                    size.collector_intervals, size.collector_warmup)
            spread = await measure_collector_cpu(broker.bootstrap_servers, size.collector_vmis, workdir,
                                                 size.collector_intervals, size.collector_warmup,
                                                 launchers=size.collector_launchers)
            if collector[0].value and spread[0].value:
                spread[0].ratio = f"{spread[0].value / collector[0].value:.2f} x one URI"
            report.rows[:0] = [calibration, *collector, *spread]
            report.figures["collector_percent_of_core_per_1000_vmis"] = collector[0].value
            report.figures["collector_launchers_percent_of_core_per_1000_vmis"] = spread[0].value
            report.figures.update(collector[0].figures)
        progress(f"join phase on Apache Kafka: starting {KAFKA_BROKERS} brokers")
        async with start_engine("kafka", workdir) as kafka:  # Tansu's ran in the broker the collector rows share
            await _engine_join_rows(report, size, kafka, workdir)
        report.figures.update({"e2e_p50_s": None, "e2e_p95_s": None, "e2e_p99_s": None})
        for vmis in size.e2e_vmis:  # the last size is the one the targets are about
            for engine in ENGINES:
                measured = Report(size_name)
                measured.rows = await _e2e_phase(vmis, workdir / f"e2e-{engine}-{vmis}", size.e2e_samples, engine)
                figures = measured.rows[0].figures
                measured.figures.update({f"e2e_{vmis}_{k[4:]}": v for k, v in figures.items()})
                measured.figures.update({"e2e_p50_s": None, "e2e_p95_s": None, "e2e_p99_s": None, **figures})
                add_engine_rows(report, measured, engine)
        await _rest_phase(report, size, workdir)
        report.rows += await measure_guest_metrics(size.metrics_vmis)
        report.rows += await measure_broker_validation(size.events)
        state = await measure_state(size.state_vmis, workdir)
        report.rows += state
        for row in state:
            report.figures.update({f"{row.key}_{name}": value for name, value in row.figures.items()})
    report.notes.append(f"machine: {os.cpu_count()} CPUs; the brokers, the measured process and any load generator "
                        "share them. Rows with an engine ran on a fresh one: the embedded Tansu broker, or Apache "
                        f"Kafka with {KAFKA_BROKERS} brokers (replication 3, min.insync.replicas 2, producers "
                        "acks=all and idempotent) on this same machine; compare rows within one run, as ratios.")
    return report


def run_bench(args: argparse.Namespace) -> int:
    """`guestinfo bench --size small|full [--json PATH]`: print the table; 1 when a row failed to measure."""
    started = time.monotonic()
    try:
        report = asyncio.run(bench(args.size))
    except BrokerError as exc:
        progress(f"cannot run: {exc}")
        return 1
    print(format_table(report), flush=True)
    if args.json_output:
        write_json(report, args.json_output)
        progress(f"figures written to {args.json_output}")
    progress(f"done in {time.monotonic() - started:.0f}s")
    return 1 if report.failed else 0


# ------------------------------------------------------------------------------- helper process mains


def _helper_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m guestinfo.lab.bench", description="guestinfo bench helpers")
    roles = parser.add_subparsers(dest="role", required=True)
    raw = roles.add_parser("raw-join", help="the plain aiokafka join loop (runs until SIGTERM)")
    raw.add_argument("--bootstrap-servers", required=True)
    raw.add_argument("--group", required=True)
    raw.add_argument("--output-topic", required=True)
    raw.add_argument("--changelog-topic", required=True)
    raw.add_argument("--metrics-port", type=int, required=True)
    ceiling = roles.add_parser("faust-ceiling", help="the join's Faust app without the join (runs until SIGTERM)")
    ceiling.add_argument("--bootstrap-servers", required=True)
    ceiling.add_argument("--app-id", required=True)
    ceiling.add_argument("--datadir", type=Path, required=True)
    ceiling.add_argument("--metrics-port", type=int, required=True)
    ceiling.add_argument("--table", choices=CEILING_TABLES, default="none",
                         help="how the latest value per key and batch is written as state")
    ceiling.add_argument("--replication-factor", type=int, default=1, help="replicas of the table's changelog")
    load = roles.add_parser("rest-load", help="REST load generator: prints its figures as JSON")
    load.add_argument("--url", required=True)
    load.add_argument("--expected", type=Path, required=True,
                      help="JSON object: VMI name -> its expected guestosinfo body")
    load.add_argument("--requests", type=int, required=True)
    load.add_argument("--concurrency", type=int, default=32)
    load.add_argument("--token", default=None, help="send this bearer token (and warm up every VMI once)")
    load.add_argument("--cafile", default=None, help="CA of an https:// URL")
    return parser


def helper_main(argv: Sequence[str] | None = None) -> int:
    args = _helper_parser().parse_args(argv)
    if args.role == "rest-load":
        expected = {name: body.encode() for name, body in json.loads(args.expected.read_text()).items()}
        try:
            result = asyncio.run(rest_load(args.url, NAMESPACE, expected, args.requests, args.concurrency,
                                           token=args.token, cafile=args.cafile))
        except OSError as exc:  # refused, reset, or a phase not answered in time
            print(f"rest-load: {exc}", file=sys.stderr, flush=True)
            return 1
        print(json.dumps(asdict(result)), flush=True)
        return 0
    import prometheus_client

    from guestinfo.lifecycle import run_until_signalled

    prometheus_client.start_http_server(args.metrics_port, addr="127.0.0.1")
    if args.role == "faust-ceiling":
        from streams.app import run_worker

        run_worker(ceiling_app(args.bootstrap_servers, args.app_id, args.datadir, args.table,
                               args.replication_factor))
        return 0
    loop = raw_join(args.bootstrap_servers, args.group, args.output_topic, args.changelog_topic)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_until_signalled(loop, "raw-join"))
    return 0


if __name__ == "__main__":
    sys.exit(helper_main())
