"""Each sub-command: turn command-line values into a stage's config and run the stage.

This module is the only place that imports the stages; they never import each other.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guestinfo.api_security import security_config, watch_history
from guestinfo.config import (
    UsageError,
    agent_sockets,
    checked_store_url,
    launcher_options,
    parse_bootstrap_servers,
    parse_listen,
    parse_shard,
)
from guestinfo.lifecycle import run_until_signalled

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)


def serve_metrics(value: str | None, healthz: Callable[[], tuple[bool, str]] = lambda: (True, "ok"),
                  registry: CollectorRegistry | None = None) -> None:
    """Serve this process's Prometheus metrics (`registry`, or the default one) at `/metrics`, and
    `/healthz` (200, or 503 when `healthz()` says it is not healthy, with its text), from a background
    thread."""
    if value is None:
        return
    import socket
    import threading
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    import prometheus_client

    listen = parse_listen(value)
    metrics = prometheus_client.make_wsgi_app(registry or prometheus_client.REGISTRY)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") == "/healthz":
            healthy, text = healthz()
            status = "200 OK" if healthy else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{text}\n".encode()]
        return metrics(environ, start_response)

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = make_server(listen.host, listen.port, app, server_class=Server, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s/metrics, health on /healthz", listen)


#: The collector is unhealthy when its loop has not finished a round for this long (a round waits at most
#: a listing's timeout, 15 s, and an agent call's).
STUCK_SECONDS = 120.0


def collector_health() -> tuple[bool, str]:
    """The collector's `/healthz`: whether its loop goes round, how many launchers it follows and reaches,
    and how many VMIs."""
    import time

    from prometheus_client import REGISTRY

    def value(name: str) -> int:
        return int(REGISTRY.get_sample_value(name) or 0)

    last = REGISTRY.get_sample_value("guestinfo_collector_last_round_timestamp_seconds") or 0.0
    counts = (f"{value('guestinfo_collector_launchers')} launcher(s) followed, "
              f"{value('guestinfo_collector_launchers_reachable')} reachable; "
              f"{value('guestinfo_collector_vmis_tracked')} VMI(s)")
    if last and time.time() - last > STUCK_SECONDS:
        return False, f"stuck: no round finished for {time.time() - last:.0f}s; {counts}"
    return True, f"ok: {counts}"


def poll_intervals(values: list[str]) -> dict[str, float]:
    """Upstream's per-command poll intervals with the `--poll-interval COMMAND=SECONDS` overrides."""
    from collectors.config import DEFAULT_POLL_INTERVALS

    intervals = dict(DEFAULT_POLL_INTERVALS)
    for value in values:
        command, sep, seconds = value.partition("=")
        if not sep or command not in intervals:
            known = ", ".join(sorted(intervals))
            raise UsageError(f"--poll-interval {value!r}: expected COMMAND=SECONDS with COMMAND one of {known}")
        try:
            intervals[command] = float(seconds)
        except ValueError:
            raise UsageError(f"--poll-interval {value!r}: {seconds!r} is not a number of seconds") from None
        if intervals[command] <= 0:
            raise UsageError(f"--poll-interval {value!r}: seconds must be positive")
    return intervals


def collect(args: argparse.Namespace) -> int:
    from collectors import CollectorConfig, run_collector

    launchers = launcher_options(args.launcher_pods_dir, args.launcher_uri)
    if not args.libvirt_uri and not launchers:
        log.warning("no --libvirt-uri nor --launcher-pods-dir given: nothing to collect")
    schedule: dict[str, Any] = {"poll_intervals": poll_intervals(args.poll_interval)}
    if args.interval is not None:  # everything at least this often: demos and tests
        schedule = {
            "interval": args.interval,
            "poll_warmup": min(args.interval, 10.0),
            "poll_intervals": {c: min(s, args.interval) for c, s in schedule["poll_intervals"].items()},
        }
    config = CollectorConfig(
        bootstrap_servers=parse_bootstrap_servers(args.bootstrap_servers),
        libvirt_uris=args.libvirt_uri,
        agent_sockets=agent_sockets(args.agent_socket),
        agent_socket_dir=str(Path(args.agent_socket_dir).absolute()) if args.agent_socket_dir else None,
        node_name=args.node_name,
        agent_timeout=args.agent_timeout,
        **launchers,
        **schedule,
    )
    serve_metrics(args.metrics_listen, healthz=collector_health)
    asyncio.run(run_until_signalled(run_collector(config), "collector"))
    return 0


def join(args: argparse.Namespace) -> int:
    from plumbing.kafka import cluster_replication
    from streams.app import JoinConfig, run_join_worker

    serve_metrics(args.metrics_listen)
    datadir = (Path(args.state_dir) / "join").absolute()
    datadir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    bootstrap_servers = parse_bootstrap_servers(args.bootstrap_servers)
    replication = args.replication_factor or asyncio.run(cluster_replication(bootstrap_servers))
    config = JoinConfig(
        bootstrap_servers=bootstrap_servers,
        replication_factor=replication,
        app_id=args.app_id,
        datadir=datadir,
        compression=args.compression,
        table_store=args.table_store,
    )
    run_join_worker(config)
    return 0


def serve(args: argparse.Namespace) -> int:
    from sinks.security import SecurityError
    from sinks.serve import ServeConfig, run_serve

    listen = parse_listen(args.api_listen)
    state_dir = Path(args.state_dir)
    config = ServeConfig(
        bootstrap_servers=parse_bootstrap_servers(args.bootstrap_servers),
        store_url=checked_store_url(args.store, state_dir),
        listen_host=listen.host,
        listen_port=listen.port,
        security=security_config(args, listen.host),
        watch_history_seconds=watch_history(args.watch_history),
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(run_until_signalled(run_serve(config), "serve"))
    except SecurityError as exc:  # found only when starting: a kubeconfig, the cluster's CA ConfigMap
        raise UsageError(str(exc)) from None
    return 0


def status(args: argparse.Namespace) -> int:
    from sinks.consuming import FetchWatch
    from sinks.kube_client import in_cluster
    from sinks.metrics import REGISTRY
    from sinks.vmi_status import StatusConfig, run_status_sink

    if not (args.kube_api or args.kubeconfig or in_cluster()):
        raise UsageError("status needs --kube-api URL or --kubeconfig PATH (in a pod, its service account is used)")
    config = StatusConfig(
        bootstrap_servers=parse_bootstrap_servers(args.bootstrap_servers),
        kube_api=args.kube_api,
        kubeconfig=args.kubeconfig,
    )
    watch = FetchWatch("status")
    serve_metrics(args.metrics_listen, healthz=watch.health, registry=REGISTRY)
    asyncio.run(run_until_signalled(run_status_sink(config, watch), "status"))
    return 0


def broker(args: argparse.Namespace) -> int:
    from guestinfo.broker import ensure_topics
    from guestinfo.engines import engine

    chosen = engine(args.engine, brokers=args.brokers, data_dir=args.data_dir, port=args.port)

    async def serve_broker() -> None:
        async with chosen:
            await ensure_topics(chosen.bootstrap_servers, replication_factor=chosen.replication_factor)
            print(f"Kafka {chosen.bootstrap_servers}", flush=True)
            await asyncio.Event().wait()

    asyncio.run(run_until_signalled(serve_broker(), "broker"))
    return 0


def metrics(args: argparse.Namespace) -> int:
    from sinks.guest_metrics import run_guest_metrics_sink

    bootstrap = parse_bootstrap_servers(args.bootstrap_servers)
    listen = parse_listen(args.listen, "--listen")
    shard = parse_shard(args.shard)
    asyncio.run(run_until_signalled(run_guest_metrics_sink(bootstrap, listen.host, listen.port, shard), "metrics"))
    return 0


def tail(args: argparse.Namespace) -> int:
    from guestinfo.tail import Selection, run_tail

    if args.max is not None and args.max < 1:
        raise UsageError("--max must be at least 1")
    bootstrap = parse_bootstrap_servers(args.bootstrap_servers)
    selection = Selection(namespace=args.namespace, name=args.name)
    return asyncio.run(run_tail(bootstrap, args.topic, args.from_beginning, selection, args.max))


def run(args: argparse.Namespace) -> int:
    from guestinfo.pipeline import Pipeline

    asyncio.run(run_until_signalled(Pipeline.from_args(args).run(), "pipeline"))
    return 0


def simulate(args: argparse.Namespace) -> int:
    from guestinfo.lab.simulation import run_simulation

    return run_simulation(args)


def bench(args: argparse.Namespace) -> int:
    from guestinfo.lab.bench import run_bench

    return run_bench(args)
