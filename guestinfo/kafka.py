"""Apache Kafka on this machine: a KRaft cluster of N nodes on 127.0.0.1, each broker and controller at
once, with its log on disk; the engine production runs (`guestinfo broker --engine kafka`,
`guestinfo run --engine kafka`, the tests and the bench on Kafka).

The server is Apache Kafka's own jars from Maven Central, which `make setup` copies into
`.tools/kafka/libs` (setup/kafka/pom.xml); `GUESTINFO_KAFKA_LIBS` names another folder of them. Java 17
or later runs them.

A cluster lives in a folder: `cluster.json` (its id, each node's ports and directory id), and per node
`nI/server.properties`, `nI/log` (the partitions and the metadata log) and `nI/server.log`. A folder
given again is started again with its data and ports; a temporary one is removed at the stop.

With three nodes or more, topics are replicated three times and a write needs two in-sync replicas
(`min.insync.replicas`); with fewer, as many replicas as nodes. A dead broker is fenced after 3 s
(`broker.session.timeout.ms`), not Kafka's default 9 s: a produce stalls that long, on every partition
it led, before a new leader takes them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from guestinfo.broker import BrokerError, free_port
from guestinfo.lifecycle import Service

log = logging.getLogger(__name__)

#: Where `make setup` puts the server's jars (relative to this repository), unless GUESTINFO_KAFKA_LIBS.
DEFAULT_LIBS = Path(__file__).resolve().parents[1] / ".tools" / "kafka" / "libs"
ENV_LIBS = "GUESTINFO_KAFKA_LIBS"
#: Every node is a controller too: at most this many (a quorum of more gains nothing here).
MAX_NODES = 5
#: The JVM of each node (about 300 MB resident at start, up to 750 MB under load).
JVM_OPTIONS = ("-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true")

LOG4J = """\
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.statechange.name = state.change.logger
logger.statechange.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
"""


def kafka_libs() -> Path:
    """The folder of Apache Kafka's jars; a clear error when the set-up has not fetched them."""
    libs = Path(os.environ.get(ENV_LIBS) or DEFAULT_LIBS)
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"Apache Kafka's jars are not in {libs}: `make setup` fetches them with Maven "
                          f"(setup/kafka/pom.xml), or set {ENV_LIBS} to a folder of them")
    return libs


def java() -> str:
    found = shutil.which("java")
    if found is None:
        raise BrokerError("Apache Kafka needs Java 17 or later: 'java' is not on the PATH")
    return found


def kafka_uuid() -> str:
    """A cluster or directory id as Kafka writes them: 16 random bytes, URL-safe base64 without padding
    (never starting with '-', which Kafka's own tool avoids too)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


@dataclass
class Node:
    """One node's identity, as `cluster.json` keeps it."""

    node_id: int
    port: int
    controller_port: int
    directory_id: str


@dataclass
class ClusterLayout:
    cluster_id: str
    nodes: list[Node]

    @classmethod
    def new(cls, count: int, host: str, first_port: int | None) -> ClusterLayout:
        ports: list[int] = [first_port] if first_port else []
        while len(ports) < 2 * count:  # a broker and a controller port per node, all different
            port = free_port(host)
            if port not in ports:
                ports.append(port)
        nodes = [Node(i, ports[i - 1], ports[count + i - 1], kafka_uuid()) for i in range(1, count + 1)]
        return cls(kafka_uuid(), nodes)

    @classmethod
    def load(cls, path: Path) -> ClusterLayout:
        data = json.loads(path.read_text())
        return cls(data["cluster_id"], [Node(**node) for node in data["nodes"]])

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")


def replication(nodes: int) -> tuple[int, int]:
    """The replication factor and `min.insync.replicas` of a cluster of `nodes`."""
    factor = min(nodes, 3)
    return factor, max(1, factor - 1)


class KafkaCluster(Service):
    """Starts a KRaft cluster of `brokers` nodes, waits until every broker is in the metadata, stops it.

    Use as `async with KafkaCluster(3) as cluster:` or with `start()`/`stop()`."""

    def __init__(self, brokers: int = 1, data_dir: Path | None = None, *, host: str = "127.0.0.1",
                 port: int | None = None, startup_timeout: float = 120.0) -> None:
        if not 1 <= brokers <= MAX_NODES:
            raise BrokerError(f"--brokers {brokers}: Apache Kafka here runs 1 to {MAX_NODES} nodes")
        self.brokers = brokers
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.data_dir = data_dir
        self.replication_factor, self.min_insync_replicas = replication(brokers)
        self._temporary = data_dir is None
        self._layout: ClusterLayout | None = None
        #: The nodes' JVMs (plain processes, not asyncio's: a cluster may be started in one event loop and
        #: stopped in another, as a test session's fixture does).
        self._processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def bootstrap_servers(self) -> str:
        assert self._layout is not None, "the cluster is not started"
        return ",".join(f"{self.host}:{node.port}" for node in self._layout.nodes)

    async def start(self) -> None:
        if self._processes:
            return
        libs, runtime = kafka_libs(), java()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="guestinfo-kafka-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._layout = self._layout_of(self.data_dir)
            for node in self._layout.nodes:
                self._write_node(node)
            await asyncio.gather(*(self._format(runtime, libs, node) for node in self._layout.nodes))
            log.info("starting Apache Kafka: %d node(s) in %s", self.brokers, self.data_dir)
            for node in self._layout.nodes:
                self._launch(runtime, libs, node)
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        log.info("Apache Kafka ready on %s", self.bootstrap_servers)

    def _layout_of(self, folder: Path) -> ClusterLayout:
        """The cluster the folder holds, or a new one (saved there)."""
        saved = folder / "cluster.json"
        if saved.exists():
            layout = ClusterLayout.load(saved)
            if len(layout.nodes) != self.brokers:
                raise BrokerError(f"{folder} holds a cluster of {len(layout.nodes)} node(s), not {self.brokers}")
            return layout
        layout = ClusterLayout.new(self.brokers, self.host, self.port)
        layout.save(saved)
        return layout

    def _node_dir(self, node_id: int) -> Path:
        assert self.data_dir is not None
        return self.data_dir / f"n{node_id}"

    def _write_node(self, node: Node) -> None:
        assert self._layout is not None
        folder = self._node_dir(node.node_id)
        folder.mkdir(exist_ok=True)
        voters = ",".join(f"{self.host}:{other.controller_port}" for other in self._layout.nodes)
        factor, min_isr = self.replication_factor, self.min_insync_replicas
        listeners = f"PLAINTEXT://{self.host}:{node.port},CONTROLLER://{self.host}:{node.controller_port}"
        properties = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.bootstrap.servers": voters,
            "listeners": listeners,
            "advertised.listeners": listeners,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": folder / "log",
            "default.replication.factor": factor,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": factor,
            "offsets.topic.num.partitions": 10,
            "transaction.state.log.replication.factor": factor,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": factor,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": 0,
            "broker.session.timeout.ms": 3000,
            "broker.heartbeat.interval.ms": 500,
        }
        (folder / "server.properties").write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
        (folder / "log4j2.properties").write_text(LOG4J)

    async def _format(self, runtime: str, libs: Path, node: Node) -> None:
        """Format the node's log once (the metadata log's first voters: every node's controller)."""
        assert self._layout is not None
        folder = self._node_dir(node.node_id)
        if (folder / "log" / "meta.properties").exists():
            return
        voters = ",".join(f"{other.node_id}@{self.host}:{other.controller_port}:{other.directory_id}"
                          for other in self._layout.nodes)
        process = await asyncio.create_subprocess_exec(
            runtime, *self._java_options(libs, folder), "kafka.tools.StorageTool", "format",
            "-t", self._layout.cluster_id, "-c", str(folder / "server.properties"), "--initial-controllers", voters,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise BrokerError(f"formatting Kafka node {node.node_id} failed: {output.decode(errors='replace')[-2000:]}")

    def _java_options(self, libs: Path, folder: Path) -> list[str]:
        return [*JVM_OPTIONS, f"-Dlog4j2.configurationFile={folder / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={folder}", "-cp", f"{libs}/*"]

    def _launch(self, runtime: str, libs: Path, node: Node) -> None:
        folder = self._node_dir(node.node_id)
        with (folder / "console.log").open("ab") as console:  # what the JVM prints besides the log
            self._processes[node.node_id] = subprocess.Popen(
                [runtime, *self._java_options(libs, folder), "kafka.Kafka", str(folder / "server.properties")],
                stdin=subprocess.DEVNULL, stdout=console, stderr=console, start_new_session=True,
            )

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a machine that dies (the fault tests); waits until it has ended."""
        process = self._processes.pop(node_id)
        process.kill()
        process.wait()
        log.info("Kafka node %d killed", node_id)

    async def restart(self, node_id: int) -> None:
        """Start a killed or stopped node again on its log, and wait until its broker is in the metadata."""
        assert self._layout is not None, "the cluster is not started"
        if node_id in self._processes:
            raise BrokerError(f"Kafka node {node_id} is running")
        node = next(node for node in self._layout.nodes if node.node_id == node_id)
        self._launch(java(), kafka_libs(), node)
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        """Until every node's broker is in the cluster's metadata."""
        brokers = self.brokers
        deadline = time.monotonic() + self.startup_timeout
        last: object = "no answer yet"
        while time.monotonic() < deadline:
            for node_id, process in self._processes.items():
                if process.poll() is not None:
                    raise BrokerError(f"Kafka node {node_id} exited with {process.returncode}: "
                                      f"{self._log_tail(node_id)}")
            try:
                live = await self._live_brokers()
            except (KafkaError, OSError, TimeoutError) as exc:
                last = exc
            else:
                if live >= brokers:
                    return
                last = f"{live} of {brokers} brokers in the metadata"
            await asyncio.sleep(0.5)
        raise BrokerError(f"Apache Kafka was not ready within {self.startup_timeout:.0f}s: {last}")

    async def _live_brokers(self) -> int:
        """How many brokers the metadata lists (a new admin client each time: one can stay stuck on a dead
        broker)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=3000)
        async with asyncio.timeout(10):
            await admin.start()
            try:
                cluster = await admin.describe_cluster()
            finally:
                await admin.close()
        return len(cluster["brokers"])

    def _log_tail(self, node_id: int, limit: int = 2000) -> str:
        text = ""
        for name in ("console.log", "server.log"):
            path = self._node_dir(node_id) / name
            if path.exists():
                text += path.read_text(errors="replace")[-limit:]
        return text.strip()

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to every node at once (stopped one by one, the last would lose its quorum and retry for
        ever), SIGKILL to those still running after `timeout` seconds."""
        processes, self._processes = list(self._processes.values()), {}
        for process in processes:
            process.send_signal(signal.SIGTERM)  # a no-op for one that has ended
        if processes:
            await asyncio.to_thread(_wait_all, processes, timeout)
            log.info("Apache Kafka stopped")
        if self._temporary and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None


def _wait_all(processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait for every process to end; SIGKILL those still running after `timeout` seconds (blocking)."""
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("Kafka node (pid %d) did not stop within %.0fs; killing it", process.pid, timeout)
            process.kill()
            process.wait()
