"""`guestinfo run`: the whole pipeline as one process tree.

Order of start: broker (unless --bootstrap-servers: the embedded Tansu, or Apache Kafka with --engine
kafka) → topics → demo agent (with --demo) → join worker → store sink + API → guest metrics sink → status
sink (with --kube-api/--kubeconfig) → collector.
Stop (Ctrl-C, SIGTERM) goes in reverse: the collector first, the broker last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from guestinfo.api_security import security_argv, security_config, watch_history
from guestinfo.broker import EmbeddedBroker, ensure_topics, free_port
from guestinfo.config import (
    Listen,
    UsageError,
    agent_sockets,
    checked_store_url,
    launcher_options,
    parse_bootstrap_servers,
    parse_listen,
    store_url_for,
)
from guestinfo.demo import Demo
from guestinfo.engines import engine
from guestinfo.kafka import KafkaCluster
from guestinfo.supervisor import ChildSpec, Supervisor
from sinks.security import serves_tls
from sinks.serve import base_url

log = logging.getLogger(__name__)

SUBRESOURCES = "/apis/subresources.kubevirt.io/v1"


@dataclass
class Pipeline:
    state_dir: Path
    bootstrap_servers: str | None
    libvirt_uris: list[str]
    agent_sockets: dict[str, str]
    agent_socket_dir: str | None
    #: `--launcher-pods-dir` (absolute) and `--launcher-uri`, as the collector's settings of those names.
    launchers: dict[str, str]
    store_url: str | None
    api: Listen
    kube_api: str | None
    kubeconfig: str | None
    node_name: str
    interval: float | None
    poll_intervals: list[str]
    agent_timeout: float
    demo: bool
    #: The API's security flags, passed through to `serve` as given; `api_tls` says whether it serves HTTPS.
    security_args: list[str] = field(default_factory=list)
    api_tls: bool = False
    watch_history: str = "5m"
    global_args: list[str] = field(default_factory=list)
    #: Where the collector and the join worker serve /metrics (free ports on the API's host).
    metrics: dict[str, Listen] = field(default_factory=dict)
    #: Where the guest metrics sink serves the fleet's guest series (default: a free port on 127.0.0.1).
    guest_metrics: Listen | None = None
    #: The engine started when no --bootstrap-servers is given.
    broker: EmbeddedBroker | KafkaCluster | None = None

    def __post_init__(self) -> None:
        host = self.api.host
        self.metrics = {role: Listen(host=host, port=free_port(host)) for role in ("collect", "join")}
        if self.guest_metrics is None:  # guest data of every tenant, without authentication: loopback only
            self.guest_metrics = Listen(host="127.0.0.1", port=free_port("127.0.0.1"))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Pipeline:
        global_args = ["--log-format", args.log_format, "--state-dir", str(Path(args.state_dir).absolute())]
        global_args += ["-v"] * args.verbose + ["-q"] * args.quiet
        api = parse_listen(args.api_listen)
        security = security_config(args, api.host)  # refused here, before any process starts
        if args.bootstrap_servers and (args.engine != "tansu" or args.brokers != 1):
            raise UsageError("--bootstrap-servers names a Kafka cluster to use; --engine and --brokers start one here")
        return cls(
            state_dir=Path(args.state_dir).absolute(),
            bootstrap_servers=parse_bootstrap_servers(args.bootstrap_servers) if args.bootstrap_servers else None,
            broker=None if args.bootstrap_servers else engine(args.engine, brokers=args.brokers),
            libvirt_uris=list(args.libvirt_uri),
            agent_sockets=agent_sockets(args.agent_socket),
            agent_socket_dir=str(Path(args.agent_socket_dir).absolute()) if args.agent_socket_dir else None,
            launchers=launcher_options(args.launcher_pods_dir, args.launcher_uri),
            store_url=checked_store_url(args.store, Path(args.state_dir)),
            api=api,
            kube_api=args.kube_api,
            kubeconfig=args.kubeconfig,
            node_name=args.node_name,
            interval=args.interval,
            poll_intervals=list(args.poll_interval),
            agent_timeout=args.agent_timeout,
            demo=args.demo,
            security_args=security_argv(args),
            api_tls=serves_tls(security, api.host),
            watch_history=f"{watch_history(args.watch_history)}s",
            global_args=global_args,
            guest_metrics=(parse_listen(args.guest_metrics_listen, "--guest-metrics-listen")
                           if args.guest_metrics_listen else None),
        )

    def children(self, bootstrap: str) -> list[ChildSpec]:
        kafka = ["--bootstrap-servers", bootstrap]
        specs = [
            ChildSpec("join", [*self.global_args, "join", *kafka, "--metrics-listen", str(self.metrics["join"])]),
            ChildSpec(
                "serve",
                [*self.global_args, "serve", *kafka, "--store", self.store_url or store_url_for(self.state_dir),
                 "--api-listen", str(self.api), "--watch-history", self.watch_history, *self.security_args],
            ),
        ]
        specs.append(ChildSpec("metrics", [*self.global_args, "metrics", *kafka, "--listen", str(self.guest_metrics)]))
        if self.kube_api or self.kubeconfig:
            kube = ["--kube-api", self.kube_api] if self.kube_api else ["--kubeconfig", str(self.kubeconfig)]
            specs.append(ChildSpec("status", [*self.global_args, "status", *kafka, *kube]))
        if self.libvirt_uris or self.launchers:
            collect = [*self.global_args, "collect", *kafka, "--node-name", self.node_name,
                       "--agent-timeout", str(self.agent_timeout), "--metrics-listen", str(self.metrics["collect"])]
            if self.interval is not None:
                collect += ["--interval", str(self.interval)]
            for value in self.poll_intervals:
                collect += ["--poll-interval", value]
            for uri in self.libvirt_uris:
                collect += ["--libvirt-uri", uri]
            for key, path in self.agent_sockets.items():
                collect += ["--agent-socket", f"{key}={path}"]
            if self.agent_socket_dir:
                collect += ["--agent-socket-dir", self.agent_socket_dir]
            if "launcher_pods_dir" in self.launchers:
                collect += ["--launcher-pods-dir", self.launchers["launcher_pods_dir"]]
            if "launcher_uri" in self.launchers:
                collect += ["--launcher-uri", self.launchers["launcher_uri"]]
            specs.append(ChildSpec("collect", collect))
        else:
            log.warning("no --libvirt-uri nor --launcher-pods-dir: running without a collector (try --demo)")
        return specs

    async def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        async with contextlib.AsyncExitStack() as stack:
            bootstrap, replication_factor = self.bootstrap_servers, 1
            if self.broker is not None:
                await stack.enter_async_context(self.broker)
                bootstrap, replication_factor = self.broker.bootstrap_servers, self.broker.replication_factor
            assert bootstrap is not None
            await ensure_topics(bootstrap, replication_factor=replication_factor)
            if self.demo:
                demo = await stack.enter_async_context(Demo(self.state_dir))
                self.libvirt_uris.append(demo.libvirt_uri)
                self.agent_sockets[demo.vmi_key] = str(demo.agent_socket)
            supervisor = Supervisor(self.children(bootstrap))
            stack.push_async_callback(supervisor.stop)
            await supervisor.start()
            await supervisor.unless_failed(wait_for_api(self.api_url))
            self.announce(bootstrap)
            await supervisor.unless_failed(asyncio.Event().wait())

    @property
    def engine_note(self) -> str:
        if isinstance(self.broker, KafkaCluster):
            return f" (Apache Kafka, {self.broker.brokers} node(s), logs in {self.broker.data_dir})"
        return " (embedded Tansu, memory only)" if self.broker is not None else ""

    @property
    def api_url(self) -> str:
        return base_url(self.api.host, self.api.port, self.api_tls)

    def announce(self, bootstrap: str) -> None:
        base = self.api_url
        lines = [
            "guestinfo is running",
            f"  Kafka       {bootstrap}{self.engine_note}",
            f"  REST API    {base}{SUBRESOURCES}/namespaces/{{namespace}}/virtualmachineinstances/{{name}}/"
            "{guestosinfo,userlist,filesystemlist}",
        ]
        lines.append(f"  events      guestinfo tail --bootstrap-servers {bootstrap} --topic guestinfo.events.v1")
        metrics = [f"{base}/metrics (serve)"]
        metrics += [f"http://{listen}/metrics ({role})" for role, listen in self.metrics.items()]
        lines.append(f"  guest data  http://{self.guest_metrics}/metrics (kubevirt_vmi_guest_*, "
                     "kubevirt_vmi_filesystem_*)")
        lines.append(f"  metrics     {', '.join(metrics)}")
        if self.demo:
            demo_path = f"{SUBRESOURCES}/namespaces/default/virtualmachineinstances/demo/guestosinfo"
            lines.append(f"  try         curl {base}{demo_path}")
        lines.append("Press Ctrl-C to stop.")
        print("\n".join(lines), file=sys.stdout, flush=True)


async def wait_for_api(base: str, timeout: float = 60.0) -> None:
    """Wait until the API at `base` answers /healthz (its own certificate is not checked: it may be self-signed)."""
    url = f"{base}/healthz"
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2), ssl=False) as response:
                    if response.status < 500:  # it answers (401/403 when /healthz is not always allowed)
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise UsageError(f"the REST API did not come up on {base} within {timeout:.0f}s (is the port in use?)")
