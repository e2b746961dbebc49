"""Shared fixtures: real components, started per session or per test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from guestinfo.broker import EmbeddedBroker
from guestinfo.engines import Broker, engine
from guestinfo.kafka import KafkaCluster
from tests.postgres import PostgresServer

#: The Kafka engines every broker test runs on: the embedded Tansu, and Apache Kafka (one node here; the
#: fault tests start clusters of three of their own).
ENGINE_NAMES = ("tansu", "kafka")


def engine_of(broker: Broker) -> str:
    return "kafka" if isinstance(broker, KafkaCluster) else "tansu"


def _started(service: Broker) -> Iterator[Broker]:
    asyncio.run(service.start())
    try:
        yield service
    finally:
        asyncio.run(service.stop())


def restartable(engine_name: str, port: int, folder: Path) -> Broker:
    """A broker of the engine, not started, that a test may stop and start again as a new instance: on
    `port` (Tansu, which comes back empty) or keeping its log and ports in `folder` (Apache Kafka)."""
    return engine(engine_name, port=port, data_dir=folder if engine_name == "kafka" else None)


@pytest.fixture(params=ENGINE_NAMES)
def engine_name(request: pytest.FixtureRequest) -> str:
    """Each engine's name, for a test that starts its own (`guestinfo run --engine NAME`)."""
    return str(request.param)


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[Broker]:
    """One Apache Kafka node for the test session (topics are named per test)."""
    yield from _started(KafkaCluster(1))


@pytest.fixture(scope="session")
def tansu_broker() -> Iterator[Broker]:
    """One real Tansu broker for the test session, validating records against the topics' schemas."""
    yield from _started(EmbeddedBroker())


@pytest.fixture(scope="session", params=ENGINE_NAMES)
def broker(request: pytest.FixtureRequest) -> Broker:
    """A broker of each engine, shared by the session (topics are named per test)."""
    return request.getfixturevalue("tansu_broker" if request.param == "tansu" else "kafka_cluster")


@pytest.fixture(scope="session")
def lenient_tansu_broker() -> Iterator[Broker]:
    yield from _started(EmbeddedBroker(validate_records=False))


@pytest.fixture(scope="session", params=ENGINE_NAMES)
def lenient_broker(request: pytest.FixtureRequest) -> Broker:
    """A broker that takes any record, as Kafka clusters without schema validation do: for the tests of
    what the pipeline does with records that break a contract (the embedded broker with validation
    refuses them; Apache Kafka validates nothing)."""
    return request.getfixturevalue("lenient_tansu_broker" if request.param == "tansu" else "kafka_cluster")


@contextlib.asynccontextmanager
async def started_producer(bootstrap_servers: str, **options: Any) -> AsyncIterator[AIOKafkaProducer]:
    """A real aiokafka producer (with `options`) for the block, stopped on leaving it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, **options)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic names, group ids and VMI names."""
    return uuid.uuid4().hex[:8]


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; waits for the process either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class QemuGA:
    """A real qemu-ga in unix-listen mode on a fixed socket path; a test may stop and start it again."""

    def __init__(self, state: Path) -> None:
        self.binary = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"
        self.state = state
        self.socket = state / "qga.sock"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not Path(self.binary).exists():
            pytest.fail("qemu-ga is not installed (Debian package qemu-guest-agent; `make setup` installs it)")
        self.socket.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            [self.binary, "-m", "unix-listen", "-p", str(self.socket), "-t", str(self.state),
             "-f", str(self.state / "pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("qemu-ga did not create its socket")
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def qemu_ga(tmp_path: Path) -> Iterator[Path]:
    """A real qemu-ga in unix-listen mode; yields its socket path."""
    state = tmp_path / "qga"
    state.mkdir()
    agent = QemuGA(state)
    agent.start()
    try:
        yield agent.socket
    finally:
        agent.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database on a PostgreSQL server of the test session's own (`tests/postgres.py`), or on the one
    `GUESTINFO_TEST_POSTGRES` names; these tests fail, never skip, without it."""
    existing = os.environ.get("GUESTINFO_TEST_POSTGRES")
    if existing:
        yield existing
        return
    server = PostgresServer()  # its folder only: `stop` removes it whatever `start` did
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


class Libvirtd:
    """A real libvirtd hosting only the test driver, on a private socket: every connection to
    `test+unix:///default?socket=...` shares one world and sees its lifecycle events (LIBVIRT_DRIVER_DIR points
    at an empty folder, so the QEMU driver, which needs a libvirt-qemu user, is not loaded). That world lasts while
    a connection to it is open: a test that defines domains keeps its connection."""

    def __init__(self, folder: Path, run_dir: Path | None = None) -> None:
        self.folder = folder
        self.run_dir = run_dir or folder / "run"
        self.socket = self.run_dir / "libvirt-sock"
        self.uri = f"test+unix:///default?socket={self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("libvirtd") or "/usr/sbin/libvirtd"
        if not Path(binary).exists():
            pytest.fail("libvirtd is not installed (Debian package libvirt-daemon; `make setup` installs it)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.folder / "no-drivers").mkdir(exist_ok=True)
        config = self.folder / "libvirtd.conf"
        config.write_text(
            f'unix_sock_dir = "{self.run_dir}"\nunix_sock_group = "root"\nunix_sock_rw_perms = "0770"\n'
            'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
        )
        env = {**os.environ, "LIBVIRT_DRIVER_DIR": str(self.folder / "no-drivers")}
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [binary, "-f", str(config), "--pid-file", str(self.folder / "libvirtd.pid")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("libvirtd did not create its socket")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process, grace=10.0)


@pytest.fixture
def libvirtd(tmp_path: Path) -> Iterator[Libvirtd]:
    daemon = Libvirtd(tmp_path / "libvirtd")
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
