"""Launcher discovery: a node laid out as KubeVirt's, where each virt-launcher pod runs its own libvirt
daemon. Real libvirtd daemons (test driver) put their sockets where the kubelet keeps each launcher's
`libvirt-runtime` emptyDir; the collector is given only the pods folder."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import libvirt
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import REGISTRY

from collectors import CollectorConfig, run_collector
from collectors.launchers import RUNTIME_DIR, SOCKET_NAME, SOCKET_PATH_MAX, find_launchers, short_path
from guestinfo.broker import ensure_topics
from guestinfo.engines import Broker
from guestinfo.stages import collector_health
from schemas.codec import decode
from schemas.events import DomainReport
from schemas.topics import DOMAIN_TOPIC
from tests.collectors.test_run_events import kubevirt_domain
from tests.conftest import Libvirtd

TEMPLATE = "test+unix:///default?socket={socket}"


def pod_folder(pods: Path, uid: str) -> Path:
    runtime = pods / uid / RUNTIME_DIR
    runtime.mkdir(parents=True)
    return runtime


def test_find_launchers_reads_the_kubelet_layout(tmp_path: Path) -> None:
    pods, links = tmp_path / "pods", tmp_path / "l"
    links.mkdir()
    launcher = str(uuid.uuid4())
    pod_folder(pods, launcher)
    (pods / str(uuid.uuid4()) / "volumes").mkdir(parents=True)  # a pod that is not a launcher
    (pods / "not a pod uid").mkdir()
    (pods / "stray-file").write_text("")
    found, failed = find_launchers(str(pods), TEMPLATE, str(links))
    assert failed == {}
    assert [(item.pod_uid, item.socket) for item in found.values()] == [
        (launcher, str(pods / launcher / RUNTIME_DIR / SOCKET_NAME))]
    (uri,) = found
    path = uri.removeprefix("test+unix:///default?socket=")
    assert len(path) <= SOCKET_PATH_MAX
    if len(str(pods / launcher / RUNTIME_DIR / SOCKET_NAME)) > SOCKET_PATH_MAX:  # as on a real node
        assert Path(path).parent == links and Path(path).readlink() == pods / launcher / RUNTIME_DIR / SOCKET_NAME


def test_a_socket_path_too_long_for_an_address_gets_a_short_link(tmp_path: Path) -> None:
    real = "/var/lib/kubelet/pods/0b5c8a1e-3f7d-4c2a-9e8b-1d2f3a4b5c6d/" + RUNTIME_DIR + "/" + SOCKET_NAME
    assert len(real) == 121  # what a real node has: libvirt refuses it
    link = short_path(real, str(tmp_path), "0b5c8a1e-3f7d-4c2a-9e8b-1d2f3a4b5c6d")
    assert Path(link).readlink() == Path(real) and len(link) <= SOCKET_PATH_MAX
    assert short_path(real, str(tmp_path), "0b5c8a1e-3f7d-4c2a-9e8b-1d2f3a4b5c6d") == link  # kept
    assert short_path("/run/short.sock", str(tmp_path), "x") == "/run/short.sock"
    with pytest.raises(OSError, match="too long a path"):
        short_path(real, "/" + "d" * 120, "x")


def test_a_launcher_that_cannot_be_linked_is_named_not_dropped_silently(tmp_path: Path) -> None:
    pods = Path("/tmp") / f"p{uuid.uuid4().hex[:6]}"
    try:
        uid = str(uuid.uuid4())
        pod_folder(pods, uid)
        long_links = tmp_path / ("l" * 90)  # too long a folder for a short link
        long_links.mkdir()
        found, failed = find_launchers(str(pods), TEMPLATE, str(long_links))
        assert len(str(pods / uid / RUNTIME_DIR / SOCKET_NAME)) > SOCKET_PATH_MAX  # it needs a link
        assert found == {} and "too long a path" in failed[uid]
    finally:
        shutil.rmtree(pods, ignore_errors=True)


class Launcher:
    """A virt-launcher stand-in: a libvirtd whose socket shows in the pod's libvirt-runtime folder under the
    name virt-launcher gives it, with one connection kept open (the test driver's world lives with it).

    The daemon binds in a short folder of its own and the pod folder's `virtqemud-sock` links to that
    socket: the pod folder's path is too long for the daemon to bind there (in its pod, virtqemud binds
    `/var/run/libvirt/virtqemud-sock`, which is short)."""

    def __init__(self, pods: Path, folder: Path) -> None:
        self.uid = str(uuid.uuid4())
        self.pods = pods
        daemon_dir = folder / self.uid[:8]
        daemon_dir.mkdir()
        self.short = Path(tempfile.mkdtemp(prefix="gi-", dir="/tmp"))
        self.daemon = Libvirtd(daemon_dir, run_dir=self.short)
        (pod_folder(pods, self.uid) / SOCKET_NAME).symlink_to(self.daemon.socket)
        self.conn: libvirt.virConnect | None = None

    def start(self, *domains: str) -> None:
        self.daemon.start()
        self.conn = libvirt.open(self.daemon.uri)
        for name in domains:
            self.conn.defineXML(kubevirt_domain(name)).create()

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.daemon.stop()

    def remove_pod(self) -> None:
        self.stop()
        shutil.rmtree(self.pods / self.uid)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.short, ignore_errors=True)


class DomainReports:
    def __init__(self, consumer: AIOKafkaConsumer, node: str) -> None:
        self.consumer, self.node = consumer, node
        self.seen: list[DomainReport] = []

    async def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for records in (await self.consumer.getmany(timeout_ms=100)).values():
                for record in records:
                    assert record.value is not None
                    report = decode(DomainReport, record.value)
                    if report.node == self.node:
                        self.seen.append(report)

    async def expect(self, name: str, state: str, removed: bool = False, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if any(r.vmi.name == name and r.state == state and r.removed == removed for r in self.seen):
                self.seen.clear()
                return
            await self.read(0.2)
        raise AssertionError(f"no {name} {state} removed={removed} within {within}s: {self.seen}")


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


@pytest.mark.integration
async def test_launchers_are_found_followed_and_dropped(broker: Broker, tmp_path: Path, unique: str) -> None:
    node = f"node-{unique}"
    pods = tmp_path / "var-lib-kubelet-pods"
    pods.mkdir()
    await ensure_topics(broker.bootstrap_servers)
    consumer = AIOKafkaConsumer(
        DOMAIN_TOPIC, bootstrap_servers=broker.bootstrap_servers, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    reports = DomainReports(consumer, node)
    first = Launcher(pods, tmp_path)
    second: Launcher | None = None
    config = CollectorConfig(
        bootstrap_servers=broker.bootstrap_servers, libvirt_uris=[], node_name=node, launcher_pods_dir=str(pods),
        launcher_uri=TEMPLATE, launcher_scan_interval=0.2, interval=60.0, relist_interval=60.0,
    )
    collector = asyncio.create_task(run_collector(config))
    try:
        await asyncio.to_thread(first.start, "vm-a")
        await reports.expect("vm-a", "running")
        assert gauge("guestinfo_collector_launchers") == 1

        second = Launcher(pods, tmp_path)  # a launcher pod added while the collector runs
        await asyncio.to_thread(second.start, "vm-b")
        await reports.expect("vm-b", "running")
        assert gauge("guestinfo_collector_launchers") == 2
        healthy, text = collector_health()
        assert healthy and text.startswith("ok: 2 launcher(s) followed, 2 reachable"), text

        await asyncio.to_thread(first.stop)  # its daemon away, its pod still there: not a removal
        await reports.read(3.0)
        assert not [r for r in reports.seen if r.removed], reports.seen
        assert gauge("guestinfo_collector_launchers_reachable") == 1
        await asyncio.to_thread(first.start, "vm-a2")  # back (a daemon restart loses the test driver's world)
        await reports.expect("vm-a2", "running")

        await asyncio.to_thread(second.remove_pod)  # the pod's folder goes: its VMIs are removed
        await reports.expect("vm-b", "shutoff", removed=True)
        assert gauge("guestinfo_collector_launchers") == 1
    finally:
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
        await consumer.stop()
        for launcher in (first, second):
            if launcher is not None:
                await asyncio.to_thread(launcher.close)
