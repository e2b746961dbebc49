"""The guest metrics sink: the fleet's guest-agent data as Prometheus series, from the merged topic.

It reads `guestinfo.vmi.v1` from the beginning (compacted: every VMI's latest record) into memory and
follows it; a tombstone removes the VMI's series. At scrape time a custom collector yields metric
families from that memory: nothing is kept per series between scrapes, and no node is asked.

The series are upstream KubeVirt's, with its names and label names (virt-handler's filesystem series,
the observability controller's guest series):

- `kubevirt_vmi_filesystem_capacity_bytes`, `kubevirt_vmi_filesystem_used_bytes`
  {namespace, name, node, disk_name, mount_point, file_system_type}
- `kubevirt_vmi_guest_os_info` {namespace, name, os_name, os_version, os_id, kernel_release, machine} = 1
- `kubevirt_vmi_guest_hostname` {namespace, name, hostname} = 1
- `kubevirt_vmi_guest_timezone` {namespace, name, timezone, offset} = 1
- `kubevirt_vmi_guest_user_count` {namespace, name}
- `kubevirt_vmi_guest_interface_info` {namespace, name, interface_name, mac, ip_address} = 1, per guest
  interface, with its first address (as upstream; link-local addresses are left out, as in the status)

and our own: `guestinfo_vmi_agent_connected` {namespace, name, node}, `guestinfo_vmi_revision`
{namespace, name}, `guestinfo_vmi_observed_age_seconds` {namespace, name, part} (seconds since each
part's current value was observed), and `guestinfo_vmi_series_capped` {namespace, name, family} where a
VMI's series were cut. A part the agent has not answered has no series, as upstream.

Bounds (guest data is the tenant's): label values are cut at `MAX_LABEL_VALUE` characters; a VMI has at
most `MAX_FILESYSTEM_SERIES` filesystems and `MAX_INTERFACE_SERIES` interfaces in series (the first ones,
in the agent's order), so one guest cannot blow up the cardinality of everyone's metrics.

Shards: `shard=(i, n)` reads only the partitions p with p % n == i; n replicas with i = 0..n-1 serve
disjoint series of the whole fleet (Prometheus scrapes them all). A VMI is named by its record's key.

The series are guest data of every tenant, served without authentication: keep the port on loopback, or
let only Prometheus reach it (a NetworkPolicy).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from plumbing.kafka import make_consumer, topic_partitions
from schemas.events import split_vmi_key
from schemas.limits import MAX_FILESYSTEM_SERIES, MAX_INTERFACE_SERIES, MAX_LABEL_VALUE
from schemas.topics import VMI_TOPIC
from sinks.consuming import FetchWatch
from sinks.metrics import GUEST_METRICS_RECORDS
from sinks.metrics import REGISTRY as SINK_REGISTRY

log = logging.getLogger(__name__)

VMI = ("namespace", "name")


@dataclass(frozen=True, slots=True)
class VMISeries:
    """What the series of one VMI say, taken from its record once (label values already cut)."""

    namespace: str
    name: str
    node: str
    revision: int
    connected: bool
    #: (disk_name, mount_point, file_system_type, capacity, used)
    filesystems: tuple[tuple[str, str, str, int, int], ...]
    #: (os_name, os_version, os_id, kernel_release, machine), or None before the agent told it.
    os: tuple[str, str, str, str, str] | None
    hostname: str | None
    #: (timezone, offset)
    timezone: tuple[str, str] | None
    user_count: int | None
    #: (interface_name, mac, ip_address)
    interfaces: tuple[tuple[str, str, str], ...]
    observed: tuple[tuple[str, float], ...]
    #: (family, series left out) where the VMI had more than its bound.
    capped: tuple[tuple[str, int], ...]


def label(value: object) -> str:
    return str(value)[:MAX_LABEL_VALUE]


def vmi_series(record: dict[str, object], namespace: str, name: str) -> VMISeries:
    """The series of one merged record (a `VMIRecord`'s JSON) of the VMI `namespace/name` (its key)."""
    status = _dict(record.get("status"))
    info = _dict(record.get("guestAgentInfo"))
    observed = {key: float(at) for key, at in _dict(record.get("observed")).items() if isinstance(at, int | float)}
    filesystems = [_dict(fs) for fs in _list(record.get("filesystems"))]
    interfaces = [_dict(i) for i in _list(status.get("interfaces")) if _dict(i).get("interfaceName")]
    os = _dict(info.get("os"))
    capped = tuple((family, count - bound) for family, count, bound in (
        ("filesystem", len(filesystems), MAX_FILESYSTEM_SERIES),
        ("interface", len(interfaces), MAX_INTERFACE_SERIES),
    ) if count > bound)
    zone, _, offset = str(info.get("timezone", ", 0")).rpartition(", ")
    return VMISeries(
        namespace=label(namespace), name=label(name), node=label(record.get("node", "")),
        revision=int(record.get("revision", 0) or 0), connected=bool(record.get("agentConnected")),  # type: ignore[call-overload]
        filesystems=_distinct(
            (label(fs.get("diskName", "")), label(fs.get("mountPoint", "")), label(fs.get("fileSystemType", "")),
             int(fs.get("totalBytes", 0) or 0), int(fs.get("usedBytes", 0) or 0))  # type: ignore[call-overload]
            for fs in filesystems[:MAX_FILESYSTEM_SERIES]
        ) if "filesystems" in observed else (),
        os=(label(os.get("name", "")), label(os.get("version", "")), label(os.get("id", "")),
            label(os.get("kernelRelease", "")), label(os.get("machine", ""))) if os else None,
        hostname=label(info["hostname"]) if info.get("hostname") else None,
        timezone=(label(zone), label(offset)) if "timezone" in observed else None,
        user_count=len(_list(record.get("users"))) if "users" in observed else None,
        interfaces=_distinct((label(i.get("interfaceName", "")), label(i.get("mac", "")), label(i.get("ipAddress", "")))
                             for i in interfaces[:MAX_INTERFACE_SERIES]),
        observed=tuple(sorted(observed.items())),
        capped=capped,
    )


def _distinct(rows: Iterable[tuple[Any, ...]], labels: int = 3) -> tuple[Any, ...]:
    """The rows whose first `labels` values (their label set) were not seen before: a series is unique
    by its labels (a filesystem mounted twice, two values the same once cut)."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for row in rows:
        if row[:labels] not in seen:
            seen.add(row[:labels])
            out.append(row)
    return tuple(out)


def _dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


class GuestSeries(Collector):
    """The custom collector: every VMI's series, made at scrape time from the sink's memory."""

    def __init__(self, vmis: dict[str, VMISeries]) -> None:
        self._vmis = vmis

    def collect(self) -> Iterator[Metric]:
        # A scrape runs beside the consume loop: a copy of the values is taken at once (atomic under
        # the GIL); each VMISeries is immutable.
        vmis = list(self._vmis.values())
        now = time.time()
        fs_labels = [*VMI, "node", "disk_name", "mount_point", "file_system_type"]
        capacity = GaugeMetricFamily("kubevirt_vmi_filesystem_capacity_bytes",
                                     "Total VM filesystem capacity in bytes.", labels=fs_labels)
        used = GaugeMetricFamily("kubevirt_vmi_filesystem_used_bytes", "Used VM filesystem capacity in bytes.",
                                 labels=fs_labels)
        os_info = GaugeMetricFamily("kubevirt_vmi_guest_os_info", "Guest OS information from the guest agent.",
                                    labels=[*VMI, "os_name", "os_version", "os_id", "kernel_release", "machine"])
        hostname = GaugeMetricFamily("kubevirt_vmi_guest_hostname", "Guest hostname from the guest agent.",
                                     labels=[*VMI, "hostname"])
        timezone = GaugeMetricFamily("kubevirt_vmi_guest_timezone", "Guest timezone from the guest agent.",
                                     labels=[*VMI, "timezone", "offset"])
        users = GaugeMetricFamily("kubevirt_vmi_guest_user_count", "Number of logged-in users in the guest.",
                                  labels=list(VMI))
        interfaces = GaugeMetricFamily("kubevirt_vmi_guest_interface_info",
                                       "Guest network interface information from the guest agent.",
                                       labels=[*VMI, "interface_name", "mac", "ip_address"])
        connected = GaugeMetricFamily("guestinfo_vmi_agent_connected",
                                      "1 while the VMI's guest agent is connected, else 0.", labels=[*VMI, "node"])
        revision = GaugeMetricFamily("guestinfo_vmi_revision", "Revision of the VMI's merged record.",
                                     labels=list(VMI))
        age = GaugeMetricFamily("guestinfo_vmi_observed_age_seconds",
                                "Seconds since each part's current value was observed.", labels=[*VMI, "part"])
        capped = GaugeMetricFamily("guestinfo_vmi_series_capped",
                                   "Series of a VMI left out over the per-VMI bound, by family.",
                                   labels=[*VMI, "family"])
        for vmi in vmis:
            ref = [vmi.namespace, vmi.name]
            for disk, mount, kind, total, taken in vmi.filesystems:
                labels = [*ref, vmi.node, disk, mount, kind]
                capacity.add_metric(labels, total)
                used.add_metric(labels, taken)
            if vmi.os is not None:
                os_info.add_metric([*ref, *vmi.os], 1)
            if vmi.hostname is not None:
                hostname.add_metric([*ref, vmi.hostname], 1)
            if vmi.timezone is not None:
                timezone.add_metric([*ref, *vmi.timezone], 1)
            if vmi.user_count is not None:
                users.add_metric(ref, vmi.user_count)
            for interface in vmi.interfaces:
                interfaces.add_metric([*ref, *interface], 1)
            connected.add_metric([*ref, vmi.node], 1 if vmi.connected else 0)
            revision.add_metric(ref, vmi.revision)
            for part, at in vmi.observed:
                age.add_metric([*ref, part], max(0.0, now - at))
            for family, count in vmi.capped:
                capped.add_metric([*ref, family], count)
        yield from (capacity, used, os_info, hostname, timezone, users, interfaces, connected, revision, age, capped)


def shard_partitions(partitions: set[int], shard: tuple[int, int]) -> list[int]:
    index, count = shard
    return sorted(p for p in partitions if p % count == index)


class GuestMetricsSink:
    """Keeps the series of the VMIs of its shard, from the merged topic (see the module)."""

    def __init__(self, bootstrap_servers: str, shard: tuple[int, int] = (0, 1), topic: str = VMI_TOPIC) -> None:
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard {index}/{count}: the index must be in 0..{count - 1}")
        self.bootstrap_servers = bootstrap_servers
        self.shard = shard
        self.topic = topic
        self.vmis: dict[str, VMISeries] = {}
        self.collector = GuestSeries(self.vmis)
        #: The topic's ends when the sink started; it is ready (healthz) once it has read up to them.
        self._start_ends: dict[TopicPartition, int] | None = None
        self.caught_up = asyncio.Event()
        self.fetches = FetchWatch("guest-metrics")

    def registry(self) -> CollectorRegistry:
        """A registry with the guest series and the sinks' own metrics, for serving."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)
        registry.register(SINK_REGISTRY)  # type: ignore[arg-type]  # a registry is a collector too
        return registry

    def health(self) -> tuple[bool, str]:
        """Caught up, and the brokers still answer (`FetchWatch`)."""
        if not self.caught_up.is_set():
            return False, "reading the merged topic from its beginning"
        if self._start_ends is not None:  # a shard without partitions has nothing to fetch, ever
            fetching, text = self.fetches.health()
            if not fetching:
                return False, text
        return True, f"ok: {len(self.vmis)} VMIs"

    async def run(self) -> None:
        consumer = make_consumer(self.bootstrap_servers, group_id=None, client_id="guestinfo-guest-metrics")
        await consumer.start()
        try:
            partitions = await self._assign(consumer)
            if not partitions:
                log.warning("guest metrics: shard %d/%d has none of the %s partitions: it serves no VMI",
                            *self.shard, self.topic)
                self.caught_up.set()
                await asyncio.Event().wait()
            await consumer.seek_to_beginning(*partitions)
            self._start_ends = await consumer.end_offsets(partitions)
            log.info("guest metrics: reading %s partitions %s from the beginning", self.topic,
                     [tp.partition for tp in partitions])
            await self._check_caught_up(consumer)
            while True:
                fetched = await consumer.getmany(timeout_ms=1000, max_records=1000)
                self.fetches.observe(consumer)
                for records in fetched.values():
                    for record in records:
                        self.apply(record)
                if not self.caught_up.is_set():
                    await self._check_caught_up(consumer)
        finally:
            await consumer.stop()

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        while True:
            found = await topic_partitions(consumer, self.topic)
            if found:
                shard = set(shard_partitions({tp.partition for tp in found}, self.shard))
                mine = [tp for tp in found if tp.partition in shard]
                consumer.assign(mine)
                return mine
            log.info("guest metrics: waiting for topic %s", self.topic)
            await asyncio.sleep(1.0)

    async def _check_caught_up(self, consumer: AIOKafkaConsumer) -> None:
        assert self._start_ends is not None
        for partition, end in self._start_ends.items():
            if await consumer.position(partition) < end:
                return
        self.caught_up.set()
        log.info("guest metrics: caught up, %d VMIs in series", len(self.vmis))

    def apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """One record of the merged topic: a newer record replaces the VMI's series, a tombstone drops them;
        a duplicate or stale revision, or a record that is not JSON, changes nothing."""
        key = (record.key or b"").decode(errors="replace")
        vmi = split_vmi_key(key)
        if vmi is None:
            GUEST_METRICS_RECORDS.labels("bad_key").inc()
            log.warning("guest metrics: skipping a record whose key is not namespace/name at %s[%d]@%d",
                        record.topic, record.partition, record.offset)
            return
        if record.value is None:
            GUEST_METRICS_RECORDS.labels("tombstone").inc()
            self.vmis.pop(key, None)
            return
        try:
            value = orjson.loads(record.value)
            series = vmi_series(value if isinstance(value, dict) else {}, *vmi)
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            GUEST_METRICS_RECORDS.labels("undecodable").inc()
            log.warning("guest metrics: skipping an undecodable record at %s[%d]@%d: %s", record.topic,
                        record.partition, record.offset, exc)
            return
        known = self.vmis.get(key)
        if known is not None and series.revision <= known.revision:
            GUEST_METRICS_RECORDS.labels("stale").inc()
            return
        GUEST_METRICS_RECORDS.labels("record").inc()
        self.vmis[key] = series


async def serve_guest_metrics(sink: GuestMetricsSink, host: str, port: int) -> web.AppRunner:
    """Serve the sink's series at `/metrics` (Prometheus text, or OpenMetrics when the scraper asks for it)
    and its readiness at `/healthz`; both answer 503 until it has read the topic up to where it was at the
    start (a scrape of a partial fleet would make VMIs look gone).
    A scrape's text is made in a thread, beside the consume loop. Returns the runner (`cleanup()` stops)."""
    registry = sink.registry()

    async def metrics(request: web.Request) -> web.Response:
        if not sink.caught_up.is_set():  # a partial fleet would look like VMIs gone to the alerts
            return web.Response(status=503, text="reading the merged topic from its beginning\n")
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.to_thread(encoder, registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(_request: web.Request) -> web.Response:
        healthy, text = sink.health()
        return web.Response(status=200 if healthy else 503, text=f"{text}\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("guest metrics served at http://%s:%d/metrics (shard %d/%d)", host, port, *sink.shard)
    return runner


async def run_guest_metrics_sink(bootstrap_servers: str, host: str, port: int, shard: tuple[int, int]) -> None:
    """`guestinfo metrics` until cancelled."""
    sink = GuestMetricsSink(bootstrap_servers, shard)
    runner = await serve_guest_metrics(sink, host, port)
    try:
        await sink.run()
    finally:
        await runner.cleanup()
