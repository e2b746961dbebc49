"""A simulated fleet: real collectors against simulated libvirt domains and simulated guest agents.

`guestinfo simulate` runs N nodes of M VMIs each and publishes to Kafka exactly as real nodes do:

- **Domains**: per node a libvirt test-driver node file `<state>/simulation/node-<i>/node.xml` (read by
  the collector as `test:///ABS/node.xml`) with M running KubeVirt domains `sim-<j>_vm-<i>-<k>` (uid
  metadata, one or two interfaces with MACs and `ua-` aliases, the guest-agent channel).
- **Guest agents**: one helper process (`python -m guestinfo.lab.simulation agents SPEC`), apart from the
  collectors so that their CPU is their own, serving one unix socket per VMI in
  `<state>/simulation/node-<i>/sockets/<namespace>_<name>.sock` (the collector's `agent_socket_dir`)
  and speaking QGA: `guest-sync` (id echo), `guest-ping`, `guest-info`, `guest-get-osinfo`,
  `guest-get-host-name`, `guest-get-timezone`, `guest-get-users`, `guest-get-fsinfo`,
  `guest-network-get-interfaces`, `guest-fsfreeze-status`; request ids are echoed.
  Each VMI has a seeded model: users log in and out (minutes), filesystems fill slowly, an address
  changes now and then, rare reboots (the agent closes its socket and comes back a few seconds later
  with nobody logged in), rare agent disconnects (the socket is gone for a while), rare migrations.
- **Collectors**: one real collector per node (`python -m guestinfo collect ... --agent-socket-dir`),
  with `--metrics-listen` on a free port.

What is and is not simulated: the test driver loads a node file once per connection and offers no
channel state, so a file's domains never change while a collector reads it. With guest events (the
default of `guestinfo simulate`) every node is therefore a kubelet pods folder of simulated virt-launcher
pods (`<state>/simulation/node-<i>/pods/<pod>/volumes/kubernetes.io~empty-dir/libvirt-runtime/`), each
holding a test-driver file where the launcher's libvirt socket would be; the collector finds them with
`--launcher-pods-dir` and reaches them with `--launcher-uri test://{socket}`, as it follows real launchers.
A migration is then what it is in KubeVirt, without restarting a collector: a pod of the VMI's own
appears on the target node, its agent's socket moves there, and on the source the VMI's pod is replaced
by one without it and removed a few seconds later (`POD_HANDOVER`), so the source reports it gone. Without
events (the bench's steady fleets) each node is one node file (or `launchers` files) listed as it is. Domain
ids, paused domains, libvirt agent transports and live channel states are not simulated.

Reusable pieces (for `guestinfo bench`):

- `fleet = await start_fleet(bootstrap, nodes, vmis_per_node, interval, state_dir, seed, events=True)`;
  `await fleet.stop()` (collectors first, then the agents).
- `fleet.agents_pids()`, `fleet.collector_pids()` (to read CPU from /proc), `fleet.vmi_keys`,
  `fleet.nodes` (`SimNode`: name, node file, socket dir, metrics port), `fleet.stats()` (the agents'
  counters: requests served, events by kind), `await fleet.reports_published()` (sum over collectors).
- `await fleet.set_hostname(key, name) -> float`: from now on the VMI's agent answers `guest-get-host-name`
  with `name`; returns the wall time of the change. `await fleet.served(key, name, timeout) -> float | None`:
  the wall time the agent first served that name to a collector. Both go through the control socket of
  the agents process serving the VMI, `<state>/simulation/control-<group>.sock` (one JSON line per
  request and reply:
  `{"op": "set_hostname", "vmi": KEY, "value": NAME}` → `{"at": T}`;
  `{"op": "served", "vmi": KEY, "value": NAME}` → `{"at": T | null}`; `{"op": "stats"}` → counters).
  With `events=False` the models stay still (no logins, reboots ...), for steady measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collectors.launchers import RUNTIME_DIR, SOCKET_NAME
from guestinfo.domains import kubevirt_domain_xml
from guestinfo.lab.agent import Delivery, command_not_found, returning, serve, sync_reply
from schemas.agent_commands import AGENT_COMMANDS

log = logging.getLogger(__name__)

SIM_DIR = "simulation"
#: The VMIs one agents process serves at most (each holds two file descriptors: its listening socket and
#: the collector's connection; the usual per-process limit is 20,000). Nodes are grouped into processes;
#: a simulated migration stays within its group.
VMIS_PER_AGENTS_PROCESS = 4000
#: Per-second chances of the rare events of one VMI.
REBOOT_RATE = 1 / 3600
DISCONNECT_RATE = 1 / 3600
MIGRATION_RATE = 1 / 7200
ADDRESS_RATE = 1 / 900
LOGIN_RATE = 1 / 240
LOGOUT_RATE = 1 / 300
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "root")
OSES = (
    {"id": "fedora", "name": "Fedora Linux", "pretty-name": "Fedora Linux 40 (Server Edition)",
     "version": "40 (Server Edition)", "version-id": "40", "kernel-release": "6.8.5-301.fc40.x86_64",
     "kernel-version": "#1 SMP PREEMPT_DYNAMIC", "machine": "x86_64"},
    {"id": "ubuntu", "name": "Ubuntu", "pretty-name": "Ubuntu 24.04 LTS", "version": "24.04 LTS (Noble Numbat)",
     "version-id": "24.04", "kernel-release": "6.8.0-31-generic", "kernel-version": "#31-Ubuntu SMP",
     "machine": "x86_64"},
    {"id": "rhel", "name": "Red Hat Enterprise Linux", "pretty-name": "Red Hat Enterprise Linux 9.4 (Plow)",
     "version": "9.4 (Plow)", "version-id": "9.4", "kernel-release": "5.14.0-427.el9.x86_64",
     "kernel-version": "#1 SMP PREEMPT_DYNAMIC", "machine": "x86_64"},
)
#: What a simulated agent answers: the protocol's two, and every polled command (`schemas.agent_commands`).
COMMANDS = ("guest-sync", "guest-ping", *(command.name for command in AGENT_COMMANDS))


# --- the fleet's layout --------------------------------------------------------------------------------


def vmi_identity(node: int, index: int) -> tuple[str, str]:
    """(namespace, name) of VMI `index` homed on node `node`."""
    return f"sim-{index % 3}", f"vm-{node}-{index}"


def node_dir(root: Path, node: int) -> Path:
    return root / f"node-{node}"


@dataclass
class VMISpec:
    """One simulated VMI: identity, MACs, the node it runs on."""

    namespace: str
    name: str
    uid: str
    macs: list[str]
    node: int
    #: The simulated virt-launcher pod whose libvirt lists it (with migrations; "" otherwise).
    pod: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def fleet_spec(nodes: int, vmis_per_node: int, seed: int) -> list[VMISpec]:
    rng = random.Random(seed)
    specs = []
    for node in range(nodes):
        for index in range(vmis_per_node):
            namespace, name = vmi_identity(node, index)
            count = 1 if rng.random() < 0.7 else 2
            macs = [f"02:{node % 256:02x}:{index // 256 % 256:02x}:{index % 256:02x}:{i:02x}:01" for i in range(count)]
            specs.append(VMISpec(namespace, name, str(uuid.UUID(int=rng.getrandbits(128), version=4)), macs, node))
    return specs


def write_test_node(path: Path, specs: Iterable[VMISpec]) -> None:
    """A libvirt test-driver file with the domains of `specs`, written atomically (a collector may be
    opening it)."""
    body = "".join(kubevirt_domain_xml(s.namespace, s.name, s.uid, s.macs) for s in specs)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"<node>{body}\n</node>\n")
    tmp.replace(path)


def write_node_file(root: Path, node: int, specs: list[VMISpec]) -> Path:
    """Write node `node`'s test-driver file with the domains of the VMIs running there."""
    path = node_dir(root, node) / "node.xml"
    write_test_node(path, (spec for spec in specs if spec.node == node))
    return path


def write_launcher_files(root: Path, node: int, specs: list[VMISpec], launchers: int) -> list[Path]:
    """Node `node`'s VMIs split round-robin over `launchers` test-driver files (none when 0)."""
    mine = [spec for spec in specs if spec.node == node]
    paths = []
    for number in range(launchers):
        path = node_dir(root, node) / f"launcher-{number:03}.xml"
        write_test_node(path, mine[number::launchers])
        paths.append(path)
    return paths


#: VMIs per simulated launcher pod at the start (a migrated VMI gets a pod of its own on its new node).
POD_VMIS = 10
#: How the collector reaches a simulated launcher's libvirt: its "socket" is a test-driver file.
POD_URI = "test://{socket}"
#: Seconds a pod that lost a VMI to a migration is left in place after its successor pod (the rest of
#: its VMIs) is written: the collector finds the successor (launcher scan 2 s) and lists it first (a
#: failed first listing is tried again after 2 s), so those VMIs are never reported gone; the migrated
#: VMI is reported gone from the source then. A collector stalled for longer would see both at once.
POD_HANDOVER = 10.0


def pods_dir(root: Path, node: int) -> Path:
    """Node `node`'s kubelet pods folder (the collector's `--launcher-pods-dir`)."""
    return node_dir(root, node) / "pods"


def write_pod(root: Path, node: int, pod: str, specs: list[VMISpec]) -> None:
    """A launcher pod on node `node` whose libvirt lists the domains of `specs`: a test-driver file where
    a virt-launcher's daemon socket would be."""
    path = pods_dir(root, node) / pod / RUNTIME_DIR / SOCKET_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    write_test_node(path, specs)


def remove_pod(root: Path, node: int, pod: str) -> None:
    """The pod is gone (its folder, as the kubelet removes it): its VMIs are gone from the node."""
    shutil.rmtree(pods_dir(root, node) / pod, ignore_errors=True)


def place_in_pods(root: Path, node: int, specs: list[VMISpec]) -> None:
    """Node `node`'s VMIs in pods of `POD_VMIS`."""
    mine = [spec for spec in specs if spec.node == node]
    for start in range(0, len(mine), POD_VMIS):
        pod = f"pod-{node}-{start // POD_VMIS}"
        for spec in mine[start:start + POD_VMIS]:
            spec.pod = pod
        write_pod(root, node, pod, mine[start:start + POD_VMIS])


#: The niceness of the simulated nodes' processes (collectors, guest agents). On a cluster they run on
#: machines of their own; here ten of them share the cores with the pipeline under test, and at the
#: same priority they left the join a tenth of a core (10 x 1,000 VMIs on 2 cores): it fell minutes
#: behind. Their CPU time is counted the same (the bench's collector rows read it from /proc).
SIMULATED_NODE_NICENESS = 10


def _simulated_node_priority() -> None:
    """In the child before it runs: lower its CPU priority (`SIMULATED_NODE_NICENESS`)."""
    os.nice(SIMULATED_NODE_NICENESS)


# --- the simulated guest agents (the helper process) ---------------------------------------------------


@dataclass
class GuestModel:
    """What one guest's agent says, and how it changes over time."""

    spec: VMISpec
    rng: random.Random
    hostname: str
    os: dict[str, str]
    boot: float
    users: dict[str, float] = field(default_factory=dict)
    fs_used: list[int] = field(default_factory=list)
    fs_total: list[int] = field(default_factory=list)
    ip_suffix: int = 10
    #: Wall time the socket comes back (rebooting or disconnected), or 0.
    away_until: float = 0.0
    served_hostnames: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(cls, spec: VMISpec, seed: int) -> GuestModel:
        rng = random.Random(f"{seed}/{spec.key}")
        now = time.time()
        model = cls(spec=spec, rng=rng, hostname=spec.name, os=rng.choice(OSES), boot=now - rng.uniform(60, 86400))
        model.fs_total = [rng.choice((10, 20, 40)) * 2**30, rng.choice((50, 100, 200)) * 2**30]
        model.fs_used = [int(total * rng.uniform(0.1, 0.6)) for total in model.fs_total]
        model.ip_suffix = rng.randrange(2, 250)
        for user in rng.sample(USERS, rng.randrange(0, 3)):
            model.users[user] = now - rng.uniform(0, 3600)
        return model

    def reply(self, command: str) -> Any:
        if command == "guest-info":
            return {"version": "8.2.2", "supported_commands": [
                {"name": name, "enabled": True, "success-response": True} for name in COMMANDS]}
        if command == "guest-get-osinfo":
            return self.os
        if command == "guest-get-host-name":
            self.served_hostnames.setdefault(self.hostname, time.time())
            return {"host-name": self.hostname}
        if command == "guest-get-timezone":
            return {"zone": "UTC", "offset": 0}
        if command == "guest-get-users":
            return [{"user": user, "login-time": at} for user, at in self.users.items()]
        if command == "guest-get-fsinfo":
            return [
                {"name": f"vda{i + 1}" if i == 0 else "vdb", "mountpoint": "/" if i == 0 else "/data",
                 "type": "xfs", "used-bytes": used, "total-bytes": total,
                 "disk": [{"serial": f"{self.spec.name}-{i}", "bus-type": "virtio"}]}
                for i, (used, total) in enumerate(zip(self.fs_used, self.fs_total, strict=True))
            ]
        if command == "guest-network-get-interfaces":
            interfaces: list[dict[str, Any]] = [{"name": "lo", "hardware-address": "00:00:00:00:00:00",
                                                "ip-addresses": [{"ip-address-type": "ipv4",
                                                                  "ip-address": "127.0.0.1", "prefix": 8}]}]
            for i, mac in enumerate(self.spec.macs):
                interfaces.append({"name": f"eth{i}", "hardware-address": mac, "ip-addresses": [
                    {"ip-address-type": "ipv4", "ip-address": f"10.{self.spec.node % 250}.{i}.{self.ip_suffix}",
                     "prefix": 16},
                    {"ip-address-type": "ipv6", "ip-address": f"fd00::{self.spec.node:x}:{i}:{self.ip_suffix:x}",
                     "prefix": 64}]})
            return interfaces
        if command == "guest-fsfreeze-status":
            return "thawed"
        if command == "guest-ping":
            return {}
        raise KeyError(command)

    def step(self, dt: float, events: dict[str, int]) -> str | None:
        """Advance by `dt` seconds; returns "reboot", "disconnect" or "migrate" when one happens."""
        now, rng = time.time(), self.rng
        for user in USERS:
            if user in self.users:
                if rng.random() < LOGOUT_RATE * dt:
                    del self.users[user]
                    events["logouts"] += 1
            elif rng.random() < LOGIN_RATE * dt / len(USERS):
                self.users[user] = now
                events["logins"] += 1
        for i, total in enumerate(self.fs_total):
            self.fs_used[i] = min(total, self.fs_used[i] + int(rng.uniform(0, 64 * 1024) * dt))
        if rng.random() < ADDRESS_RATE * dt:
            self.ip_suffix = rng.randrange(2, 250)
            events["address_changes"] += 1
        if rng.random() < REBOOT_RATE * dt:
            return "reboot"
        if rng.random() < DISCONNECT_RATE * dt:
            return "disconnect"
        if rng.random() < MIGRATION_RATE * dt:
            return "migrate"
        return None


class AgentServer:
    """Serves every VMI's simulated agent on its socket; steps the models; a control socket."""

    def __init__(self, root: Path, nodes: list[int], specs: list[VMISpec], seed: int, events: bool,
                 control: str) -> None:
        self.root = root
        #: The nodes of this process's group: its VMIs run on them and migrate among them.
        self.nodes = nodes
        self.control_socket = control
        self.specs = specs
        self.models = {spec.key: GuestModel.create(spec, seed) for spec in specs}
        self.events_on = events
        self.rng = random.Random(seed)
        self.servers: dict[str, asyncio.Server] = {}
        self.writers: dict[str, set[asyncio.StreamWriter]] = {spec.key: set() for spec in specs}
        self.requests = 0
        self.events: dict[str, int] = dict.fromkeys(
            ("logins", "logouts", "address_changes", "reboots", "disconnects", "migrations"), 0
        )
        #: Migrations so far (names the pods they make).
        self.moves = 0

    def socket_path(self, spec: VMISpec) -> Path:
        return node_dir(self.root, spec.node) / "sockets" / f"{spec.namespace}_{spec.name}.sock"

    async def open(self, spec: VMISpec) -> None:
        path = self.socket_path(spec)
        path.unlink(missing_ok=True)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self.serve(spec.key, reader, writer)

        self.servers[spec.key] = await asyncio.start_unix_server(handle, path=str(path))

    async def close(self, spec: VMISpec) -> None:
        server = self.servers.pop(spec.key, None)
        if server is not None:
            server.close()
        for writer in list(self.writers[spec.key]):
            writer.close()
        self.socket_path(spec).unlink(missing_ok=True)

    async def serve(self, key: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers[key].add(writer)
        try:
            await serve(reader, writer, lambda request: self.answer(key, request))
        finally:
            self.writers[key].discard(writer)

    def answer(self, key: str, request: dict[str, Any]) -> Delivery | None:
        """What the VMI's guest answers: as a healthy agent does, from its model."""
        command = request.get("execute")
        if not isinstance(command, str):
            return None
        self.requests += 1
        if command == "guest-sync":
            return Delivery([sync_reply(request)])
        try:
            return Delivery([returning(request, self.models[key].reply(command))])
        except KeyError:
            return Delivery([command_not_found(request)])

    async def migrate(self, spec: VMISpec) -> None:
        """Move a VMI to another node as KubeVirt does, no collector restarted: a launcher pod of its own
        appears on the target, and on the source its pod is replaced by one without it (the rest of its
        VMIs), the old pod removed `POD_HANDOVER` seconds later. Its agent's socket moves with it; until
        the old pod goes, the source's path leads there too (the source collector still lists the VMI)."""
        source, source_pod, source_socket = spec.node, spec.pod, self.socket_path(spec)
        await self.close(spec)
        self.moves += 1
        spec.node = self.rng.choice([n for n in self.nodes if n != source])
        spec.pod = f"moved-{self.moves}-{spec.name}"
        write_pod(self.root, spec.node, spec.pod, [spec])
        await self.open(spec)
        with contextlib.suppress(OSError):
            source_socket.symlink_to(self.socket_path(spec))
        rest = [other for other in self.specs if other.pod == source_pod]
        if rest:
            successor = f"{source_pod.split('-r')[0]}-r{self.moves}"  # a pod uid: letters, digits, dashes
            for other in rest:
                other.pod = successor
            write_pod(self.root, source, successor, rest)
        asyncio.get_running_loop().call_later(POD_HANDOVER, self._handed_over, source, source_pod, source_socket)
        print(json.dumps({"migrate": {"vmi": spec.key, "from": source, "to": spec.node}}), flush=True)

    def _handed_over(self, node: int, pod: str, link: Path) -> None:
        remove_pod(self.root, node, pod)
        if link.is_symlink():
            link.unlink()

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                request = json.loads(line)
                answer: dict[str, Any]
                model = self.models.get(request.get("vmi", ""))
                if request.get("op") == "stats":
                    answer = self.stats()
                elif model is None:
                    answer = {"error": "no such VMI"}
                elif request["op"] == "set_hostname":
                    model.hostname = str(request["value"])
                    model.served_hostnames.pop(model.hostname, None)
                    answer = {"at": time.time()}
                elif request["op"] == "served":
                    answer = {"at": model.served_hostnames.get(str(request["value"]))}
                else:
                    answer = {"error": "unknown op"}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError, KeyError):
            pass
        finally:
            writer.close()

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "events": dict(self.events), "vmis": len(self.specs),
                "up": len(self.servers)}

    async def run(self) -> None:
        for node in self.nodes:
            (node_dir(self.root, node) / "sockets").mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            await self.open(spec)
        control_path = self.root / self.control_socket
        control_path.unlink(missing_ok=True)
        control = await asyncio.start_unix_server(self.control, path=str(control_path))
        print(json.dumps({"ready": True}), flush=True)
        last = time.monotonic()
        try:
            while True:
                await asyncio.sleep(1.0)
                now = time.monotonic()
                dt, last = now - last, now
                await self.step(dt)
                print(json.dumps({"stats": self.stats()}), flush=True)
        finally:
            control.close()
            for spec in self.specs:
                await self.close(spec)

    async def step(self, dt: float) -> None:
        wall = time.time()
        for spec in self.specs:
            model = self.models[spec.key]
            if model.away_until:
                if wall >= model.away_until:
                    model.away_until = 0.0
                    await self.open(spec)
                continue
            if not self.events_on:
                continue
            event = model.step(dt, self.events)
            if event == "reboot":
                self.events["reboots"] += 1
                await self.close(spec)
                model.users.clear()
                model.boot = wall
                model.away_until = wall + self.rng.uniform(2, 6)
            elif event == "disconnect":
                self.events["disconnects"] += 1
                await self.close(spec)
                model.away_until = wall + self.rng.uniform(10, 40)
            elif event == "migrate" and len(self.nodes) > 1:
                self.events["migrations"] += 1
                await self.migrate(spec)


def _agents_main(spec_file: str) -> int:
    data = json.loads(Path(spec_file).read_text())
    specs = [VMISpec(**item) for item in data["vmis"]]
    server = AgentServer(Path(data["root"]), [int(n) for n in data["nodes"]], specs, int(data["seed"]),
                         bool(data["events"]), str(data["control"]))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await server.run()

    asyncio.run(main())
    return 0


# --- the fleet (the parent's side) ---------------------------------------------------------------------


@dataclass
class SimNode:
    index: int
    name: str
    node_file: Path
    socket_dir: Path
    metrics_port: int
    #: With launchers: the node's VMIs split over these test-driver files, one libvirt URI each (as
    #: virt-launcher pods each have a libvirt of their own); the collector lists every one.
    launcher_files: list[Path] = field(default_factory=list)
    #: With migrations: the node's kubelet pods folder of simulated launcher pods, found by the collector.
    pods_dir: Path | None = None
    process: asyncio.subprocess.Process | None = None


@dataclass
class Fleet:
    """A running simulated fleet: the agents' helper process and one collector process per node."""

    root: Path
    bootstrap: str
    #: Poll every agent command at least this often (None: upstream's per-command intervals).
    interval: float | None
    nodes: list[SimNode]
    vmi_keys: list[str]
    #: The agents processes, each with the name of its control socket.
    agents: list[tuple[asyncio.subprocess.Process, str]]
    #: The control socket serving each VMI.
    control_of: dict[str, str]
    verbosity: int = 0
    _stats: dict[int, dict[str, Any]] = field(default_factory=dict)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    def agents_pids(self) -> list[int]:
        return [process.pid for process, _ in self.agents]

    def collector_pids(self) -> list[int]:
        return [node.process.pid for node in self.nodes if node.process is not None]

    def stats(self) -> dict[str, Any]:
        """The agents' last counters, summed over their processes: requests (served), events (by kind),
        vmis, up (sockets open)."""
        total: dict[str, Any] = {"requests": 0, "vmis": 0, "up": 0, "events": {}}
        for stats in self._stats.values():
            for name in ("requests", "vmis", "up"):
                total[name] += stats.get(name, 0)
            for kind, count in stats.get("events", {}).items():
                total["events"][kind] = total["events"].get(kind, 0) + count
        return total

    async def start_collector(self, node: SimNode) -> None:
        log_args = ["-v"] * max(self.verbosity, 0) + ["-q"] * max(-self.verbosity, 0)
        if node.pods_dir is not None:
            libvirt = ["--launcher-pods-dir", str(node.pods_dir), "--launcher-uri", POD_URI]
        else:
            uris = [f"test://{path}" for path in node.launcher_files or [node.node_file]]
            libvirt = [arg for uri in uris for arg in ("--libvirt-uri", uri)]
        argv = [sys.executable, "-m", "guestinfo", *log_args, "collect", "--bootstrap-servers", self.bootstrap,
                *libvirt, "--agent-socket-dir", str(node.socket_dir), "--node-name", node.name,
                "--metrics-listen", f"127.0.0.1:{node.metrics_port}"]
        if self.interval is not None:
            argv += ["--interval", str(self.interval)]
        node.process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                            preexec_fn=_simulated_node_priority)

    async def stop_collector(self, node: SimNode) -> None:
        from guestinfo.supervisor import terminate

        process, node.process = node.process, None
        if process is not None:
            await terminate(process, node.name, grace=10.0)

    async def _read_agents(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "stats" in message:
                self._stats[process.pid] = message["stats"]
            elif "migrate" in message:
                move = message["migrate"]
                log.info("simulated migration of %s: node %s → %s", move["vmi"], move["from"], move["to"])

    async def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        socket = self.control_of.get(str(request.get("vmi", "")))
        if socket is None:
            return {"error": "no such VMI"}
        reader, writer = await asyncio.open_unix_connection(str(self.root / socket))
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            answer: dict[str, Any] = json.loads(await reader.readline())
            return answer
        finally:
            writer.close()

    async def set_hostname(self, key: str, name: str) -> float:
        """The VMI's agent answers `guest-get-host-name` with `name` from now on; the wall time of the change."""
        answer = await self._control({"op": "set_hostname", "vmi": key, "value": name})
        if "at" not in answer:
            raise ValueError(f"cannot change the hostname of {key}: {answer.get('error', answer)}")
        return float(answer["at"])

    async def served(self, key: str, name: str, timeout: float = 30.0) -> float | None:
        """The wall time the VMI's agent first served hostname `name`, waiting up to `timeout` seconds."""
        end = time.monotonic() + timeout
        while True:
            at = (await self._control({"op": "served", "vmi": key, "value": name})).get("at")
            if at is not None or time.monotonic() >= end:
                return None if at is None else float(at)
            await asyncio.sleep(0.05)

    async def reports_published(self) -> int:
        """Reports the collectors delivered to Kafka (both raw topics), from their metrics endpoints."""
        counts = await asyncio.gather(*(asyncio.to_thread(_published, node.metrics_port) for node in self.nodes))
        return sum(counts)

    async def agent_calls(self) -> dict[str, float]:
        """Agent calls the collectors made so far, by command (summed over nodes), from their metrics."""
        totals: dict[str, float] = {}
        for calls in await asyncio.gather(*(asyncio.to_thread(_agent_calls, node.metrics_port) for node in self.nodes)):
            for command, count in calls.items():
                totals[command] = totals.get(command, 0.0) + count
        return totals

    async def stop(self) -> None:
        """Collectors first, then the agents."""
        from guestinfo.supervisor import terminate

        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        await asyncio.gather(*(self.stop_collector(node) for node in self.nodes))
        await asyncio.gather(*(terminate(process, f"simulated agents ({socket})", grace=10.0)
                               for process, socket in self.agents))


def _metrics(port: int) -> str:
    """A collector's Prometheus text ("" while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1.0) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def _published(port: int) -> int:
    total = 0.0
    for line in _metrics(port).splitlines():
        if line.startswith("guestinfo_collector_reports_published_total"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


_CALLS = re.compile(r'^guestinfo_collector_agent_call_duration_seconds_count\{command="([^"]+)"\} (\S+)$')


def _agent_calls(port: int) -> dict[str, float]:
    calls: dict[str, float] = {}
    for line in _metrics(port).splitlines():
        match = _CALLS.match(line)
        if match:
            calls[match[1]] = float(match[2])
    return calls


async def start_fleet(
    bootstrap: str,
    nodes: int,
    vmis_per_node: int,
    interval: float | None,
    state_dir: Path,
    seed: int = 1,
    *,
    events: bool = True,
    verbosity: int = 0,
    launchers: int = 0,
) -> Fleet:
    """Write the node files, start the agents' process and one collector per node; see the module doc.
    With `launchers`, each node's VMIs are split over that many libvirt URIs (without `events`: a
    migration rewrites the one node file)."""
    from guestinfo.broker import free_port

    if launchers and events:
        raise ValueError("launchers need events=False: a simulated migration rewrites the node file")

    root = (Path(state_dir) / SIM_DIR).absolute()
    root.mkdir(parents=True, exist_ok=True)
    specs = fleet_spec(nodes, vmis_per_node, seed)
    sim_nodes = []
    for index in range(nodes):
        folder = node_dir(root, index)
        (folder / "sockets").mkdir(parents=True, exist_ok=True)
        if events:
            place_in_pods(root, index, specs)
        sim_nodes.append(SimNode(index=index, name=f"sim-node-{index}", node_file=write_node_file(root, index, specs),
                                 socket_dir=folder / "sockets", metrics_port=free_port(),
                                 launcher_files=write_launcher_files(root, index, specs, launchers),
                                 pods_dir=pods_dir(root, index) if events else None))
    group_size = max(1, VMIS_PER_AGENTS_PROCESS // vmis_per_node)
    groups = [list(range(start, min(start + group_size, nodes))) for start in range(0, nodes, group_size)]
    agents: list[tuple[asyncio.subprocess.Process, str]] = []
    control_of: dict[str, str] = {}
    try:
        for number, group in enumerate(groups):
            control = f"control-{number}.sock"
            members = [spec for spec in specs if spec.node in group]
            control_of.update(dict.fromkeys((spec.key for spec in members), control))
            agents.append((await _start_agents(root, number, group, members, seed, events, control), control))
    except BaseException:
        for process, _ in agents:
            process.kill()
            await process.wait()
        raise
    fleet = Fleet(root=root, bootstrap=bootstrap, interval=interval, nodes=sim_nodes,
                  vmi_keys=[spec.key for spec in specs], agents=agents, control_of=control_of, verbosity=verbosity)
    fleet._readers = [asyncio.create_task(fleet._read_agents(process)) for process, _ in agents]
    try:
        for node in sim_nodes:
            await fleet.start_collector(node)
    except BaseException:
        await fleet.stop()  # the agents processes and the collectors started so far
        raise
    log.info("simulated fleet: %d node(s) x %d VMI(s); agents pids %s, collectors %s", nodes, vmis_per_node,
             fleet.agents_pids(), fleet.collector_pids())
    return fleet


async def _start_agents(root: Path, number: int, nodes: list[int], specs: list[VMISpec], seed: int, events: bool,
                        control: str) -> asyncio.subprocess.Process:
    """One agents process for the VMIs of `nodes`; returns once it serves them all."""
    spec_file = root / f"spec-{number}.json"
    spec_file.write_text(json.dumps({"root": str(root), "nodes": nodes, "seed": seed + number, "events": events,
                                     "control": control, "vmis": [vars(spec) for spec in specs]}))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guestinfo.lab.simulation", "agents", str(spec_file), preexec_fn=_simulated_node_priority,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, limit=2**20,
    )
    assert process.stdout is not None
    try:
        first = await asyncio.wait_for(process.stdout.readline(), timeout=60.0)
    except TimeoutError:
        first = b""
    if b"ready" not in first:
        process.kill()
        await process.wait()
        raise RuntimeError(f"the simulated agents of nodes {nodes} did not start")
    return process


# --- `guestinfo simulate` ------------------------------------------------------------------------------


def _progress(started: float, fleet: Fleet, published: int, last: tuple[float, int]) -> str:
    stats = fleet.stats()
    now = time.monotonic()
    requests = int(stats.get("requests", 0))
    rate = (requests - last[1]) / max(now - last[0], 1e-6)
    events = stats.get("events", {})
    shown = ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in events.items())
    return (f"[{now - started:6.0f}s] nodes {len(fleet.nodes)}, VMIs {len(fleet.vmi_keys)} "
            f"({stats.get('up', 0)} agents up), agent requests {rate:7.1f}/s, reports published {published}; "
            f"{shown}")


async def simulate(args: argparse.Namespace) -> None:
    from guestinfo.broker import EmbeddedBroker, ensure_topics

    if args.nodes < 1 or args.vmis_per_node < 1 or (args.interval is not None and args.interval <= 0):
        from guestinfo.config import UsageError

        raise UsageError("--nodes and --vmis-per-node must be at least 1, --interval positive")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    broker: EmbeddedBroker | None = None
    bootstrap = args.bootstrap_servers
    if bootstrap is None:
        # A fleet's load, not a demo: the broker does not validate records (docs/topics.md: what it costs).
        broker = EmbeddedBroker(validate_records=False)
        await broker.start()
        bootstrap = broker.bootstrap_servers
    fleet: Fleet | None = None
    try:
        await ensure_topics(bootstrap)
        verbosity = getattr(args, "verbose", 0) - getattr(args, "quiet", 0)
        fleet = await start_fleet(bootstrap, args.nodes, args.vmis_per_node, args.interval, Path(args.state_dir),
                                  args.seed, verbosity=verbosity)
        started = time.monotonic()
        last = (started, 0)
        tty = sys.stderr.isatty()
        show = verbosity >= 0
        while not stop.is_set():
            if args.duration is not None and time.monotonic() - started >= args.duration:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if show:
                line = _progress(started, fleet, await fleet.reports_published(), last)
                sys.stderr.write(("\r\x1b[K" + line) if tty else line + "\n")
                sys.stderr.flush()
            last = (time.monotonic(), int(fleet.stats().get("requests", 0)))
        if show and tty:
            sys.stderr.write("\n")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if fleet is not None:
            await fleet.stop()
        if broker is not None:
            await broker.stop()


def run_simulation(args: argparse.Namespace) -> int:
    """`guestinfo simulate`: run the fleet until --duration ends, Ctrl-C or SIGTERM; 0 on a clean stop."""
    asyncio.run(simulate(args))
    return 0


if __name__ == "__main__":
    role, argument = sys.argv[1], sys.argv[2]
    if role == "agents":
        sys.exit(_agents_main(argument))
    sys.exit(f"unknown role {role!r}")
