"""`guestinfo`: one entry point, one sub-command per role.

`guestinfo run` starts the whole pipeline as one process tree; the other sub-commands run one stage
each (that is what `run` starts, and what a deployment runs per node or per service).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from guestinfo.api_security import add_security_options
from guestinfo.config import ENGINES, UsageError
from guestinfo.logs import setup_logging
from schemas.topics import TOPIC_CONFIGS, VMI_TOPIC

log = logging.getLogger("guestinfo")

ENV_BOOTSTRAP = "GUESTINFO_BOOTSTRAP_SERVERS"
DEFAULT_STATE_DIR = Path(os.environ.get("GUESTINFO_STATE_DIR", ".guestinfo"))

EPILOG = """\
examples:
  guestinfo run --demo                      the demo: this machine as VMI default/demo
  guestinfo run --libvirt-uri qemu:///system --bootstrap-servers kafka-1:9092,kafka-2:9092
  guestinfo collect --launcher-pods-dir /var/lib/kubelet/pods --bootstrap-servers kafka-1:9092
                                            (one per KubeVirt node: every virt-launcher's libvirt)
  guestinfo collect --libvirt-uri qemu:///system --bootstrap-servers kafka-1:9092   (a plain libvirt host)

environment: GUESTINFO_BOOTSTRAP_SERVERS is the default of --bootstrap-servers; GUESTINFO_STATE_DIR of
--state-dir. Without --bootstrap-servers, `run` starts the embedded broker (Tansu, memory only).
"""


def _add_bootstrap(parser: argparse.ArgumentParser, required: bool) -> None:
    default = os.environ.get(ENV_BOOTSTRAP)
    parser.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        default=default,
        required=required and default is None,
        help=f"Kafka cluster to use (env {ENV_BOOTSTRAP})"
        + ("" if required else "; default: start the embedded broker on 127.0.0.1"),
    )


def _add_collector_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--libvirt-uri", metavar="URI", action="append", default=[],
        help="libvirt connection to collect domains from (repeatable), e.g. qemu:///system",
    )
    parser.add_argument(
        "--agent-socket", metavar="NAMESPACE/NAME=PATH", action="append", default=[],
        help="reach this VMI's guest agent through a unix socket instead of libvirt (repeatable)",
    )
    parser.add_argument(
        "--agent-socket-dir", metavar="DIR", default=None,
        help="reach a VMI's guest agent through DIR/NAMESPACE_NAME.sock when that socket exists",
    )
    parser.add_argument(
        "--launcher-pods-dir", metavar="DIR", default=None,
        help="collect every virt-launcher pod's own libvirt daemon found in this kubelet pods folder (on a "
        "KubeVirt node: /var/lib/kubelet/pods), following pods as they come and go",
    )
    parser.add_argument(
        "--launcher-uri", metavar="TEMPLATE", default=None,
        help="how to reach a launcher's daemon; {socket} is its socket's path on this node "
        "(default qemu+unix:///session?socket={socket}, as virt-launcher connects)",
    )
    parser.add_argument("--node-name", default=socket.gethostname(), help="name of this node (default: hostname)")
    parser.add_argument(
        "--interval", type=float, default=None, metavar="SECONDS",
        help="poll every agent command at least this often and list libvirt URIs without events this often "
        "(short, for demos and tests); default: upstream's per-command intervals and a 10 s listing",
    )
    parser.add_argument(
        "--poll-interval", metavar="COMMAND=SECONDS", action="append", default=[],
        help="seconds between two polls of one agent command, repeatable (defaults as upstream: guest-info 300, "
        "guest-get-fsinfo 300, guest-fsfreeze-status 5, guest-get-osinfo/host-name/timezone and "
        "guest-network-get-interfaces 120, guest-get-users 10)",
    )
    parser.add_argument(
        "--agent-timeout", type=float, default=5.0, metavar="SECONDS",
        help="seconds one guest-agent command may take (default 5, as libvirt)",
    )


def _add_sink_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", metavar="URL",
        help="store URL: sqlite:///ABS/PATH.db or postgresql://USER@HOST:PORT/DB (default: SQLite in --state-dir)",
    )
    parser.add_argument(
        "--api-listen", metavar="HOST:PORT", default="127.0.0.1:8080",
        help="where the REST API listens (default 127.0.0.1:8080); off loopback it needs authentication",
    )
    parser.add_argument(
        "--watch-history", metavar="DURATION", default="5m",
        help="how long GuestInfo changes are kept for watches and list paging (default 5m); a client away "
        "longer lists again",
    )
    add_security_options(parser)


def _add_kube_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--kube-api", metavar="URL", help="Kubernetes API server URL; turns the VMI status sink on")
    group.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig file; turns the VMI status sink on")


def _add_metrics_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-listen", metavar="HOST:PORT", default=None,
        help="serve Prometheus metrics at http://HOST:PORT/metrics and health at /healthz (default: off)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guestinfo",
        description="KubeVirt guest-agent information as an event-driven pipeline: node collectors -> Kafka -> "
        "per-VMI join -> store, REST API (KubeVirt subresource paths) and VMI status.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output (warnings only)")
    parser.add_argument("--log-format", choices=["text", "json"], default="text", help="log line format")
    parser.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE_DIR,
        help="folder for local state: SQLite store, Faust data, demo files (default .guestinfo)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="the whole pipeline in one process tree",
        description="Start the broker (unless --bootstrap-servers), the collector, the join worker, the store "
        "sink with the REST API, and the VMI status sink (with --kube-api or --kubeconfig). Ctrl-C stops all.",
    )
    _add_bootstrap(run, required=False)
    _add_engine(run)
    _add_collector_options(run)
    _add_sink_options(run)
    _add_kube_options(run)
    run.add_argument("--guest-metrics-listen", metavar="HOST:PORT", default=None,
                     help="where the guest metrics sink serves /metrics (default: a free port on 127.0.0.1; it "
                     "serves every tenant's guest data without authentication)")
    run.add_argument(
        "--demo", action="store_true",
        help="collect the built-in demo: a libvirt test-driver domain default_demo with this machine's MACs "
        "and a real qemu-ga as its guest agent",
    )

    collect = commands.add_parser("collect", help="node collector: libvirt + guest agents -> raw topics")
    _add_bootstrap(collect, required=True)
    _add_collector_options(collect)
    _add_metrics_option(collect)

    join = commands.add_parser("join", help="join worker (Faust): raw topics -> merged topic guestinfo.vmi.v1")
    _add_bootstrap(join, required=True)
    join.add_argument("--app-id", default="guestinfo-join", help="Faust app id (consumer group, table prefix)")
    join.add_argument("--table-store", choices=["memory", "rocksdb"], default="memory",
                      help="where the join keeps its per-VMI states: memory (rebuilt from the changelog on every "
                      "start), or RocksDB below the state dir (a restart reads only the changelog's tail)")
    join.add_argument("--replication-factor", type=int, default=None, metavar="N",
                      help="replicas of the topics the worker creates, its table's changelog (default: 3, or the "
                      "number of brokers when the cluster has fewer)")
    join.add_argument("--compression", choices=["none", "gzip", "lz4", "zstd"], default="none",
                      help="compression of the merged records and the table's changelog (default: none; lz4 and "
                      "zstd shrink the JSON about fourfold for little CPU, gzip costs the join a sixth of its CPU)")
    _add_metrics_option(join)

    serve = commands.add_parser("serve", help="store sink + REST API at the KubeVirt subresource paths")
    _add_bootstrap(serve, required=True)
    _add_sink_options(serve)

    metrics = commands.add_parser(
        "metrics", help="guest metrics sink: the fleet's guest-agent data as Prometheus series (KubeVirt's names)",
        description="Read guestinfo.vmi.v1 from its beginning into memory, follow it, and serve every VMI's "
        "guest data as Prometheus series with upstream KubeVirt's names (kubevirt_vmi_filesystem_*_bytes, "
        "kubevirt_vmi_guest_*) and our own (guestinfo_vmi_*), in Prometheus text or OpenMetrics. /healthz "
        "answers 200 once the topic is read up to where it was at the start. Scrape only this or virt-handler "
        "and KubeVirt's observability controller for those names, not both (README, Metrics).",
    )
    _add_bootstrap(metrics, required=True)
    metrics.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:9464",
                         help="where /metrics and /healthz are served (default 127.0.0.1:9464)")
    metrics.add_argument("--shard", metavar="I/N", default="0/1",
                         help="serve shard I of N: the VMIs of the partitions p with p %% N == I (default 0/1: all); "
                         "run N replicas, I = 0..N-1, and scrape them all")

    status = commands.add_parser("status", help="Kubernetes VMI status sink")
    _add_bootstrap(status, required=True)
    _add_kube_options(status)
    _add_metrics_option(status)

    simulate = commands.add_parser(
        "simulate", help="a simulated fleet: real collectors against simulated domains and guest agents",
        description="Run N simulated nodes of M VMIs each: every node is a real collector reading a libvirt "
        "test-driver node and talking QGA to simulated guest agents on unix sockets (users log in and out, "
        "filesystems fill, addresses change, guests reboot and migrate, agents disconnect), publishing to "
        "Kafka exactly as real nodes do. Shows progress until --duration ends or Ctrl-C.",
    )
    _add_bootstrap(simulate, required=False)
    simulate.add_argument("--nodes", type=int, default=2, help="simulated nodes (default 2)")
    simulate.add_argument("--vmis-per-node", type=int, default=50, help="VMIs on each node (default 50)")
    simulate.add_argument(
        "--interval", type=float, default=None, metavar="SECONDS",
        help="poll every agent command at least this often (default: upstream's per-command intervals)",
    )
    simulate.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    simulate.add_argument("--seed", type=int, default=1, help="random seed of the simulated guests")

    bench = commands.add_parser(
        "bench", help="measure the pipeline on both Kafka engines and print one table",
        description="A fixed workload through the whole pipeline; prints collector CPU per 1000 VMIs, join "
        "events/s (Faust and a plain aiokafka loop, and their ratio) and end-to-end latency p50/p95/p99, each "
        "on the embedded Tansu broker and on a 3-broker Apache Kafka cluster (the engine column), then REST "
        "reads/s with p99. Needs `make setup` (Apache Kafka's jars). --size small is the CI smoke run.",
    )
    bench.add_argument("--size", choices=["small", "full"], default="full", help="workload size (default full)")
    bench.add_argument("--json", dest="json_output", metavar="PATH", help="also write the figures as JSON here")

    tail = commands.add_parser(
        "tail", help="print a topic as JSON lines (merged records, change events, raw reports)",
        description="Print a guestinfo topic as one JSON document per line: records as they are, tombstones as "
        '{"key": ..., "deleted": true}. Starts at the end and follows, unless --from-beginning; stops after '
        "--max lines, or on Ctrl-C. What each topic holds: docs/topics.md.",
        epilog="examples:\n  guestinfo tail --bootstrap-servers 127.0.0.1:9092 --topic guestinfo.events.v1\n"
        "  guestinfo tail --bootstrap-servers 127.0.0.1:9092 --from-beginning --namespace default --name demo\n"
        "                                            (every record of one VMI the merged topic still keeps)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_bootstrap(tail, required=True)
    tail.add_argument("--topic", choices=list(TOPIC_CONFIGS), default=VMI_TOPIC,
                      help=f"the topic to print (default {VMI_TOPIC})")
    tail.add_argument("--from-beginning", action="store_true",
                      help="start at the first record the topic keeps (the merged topic is compacted: at least every "
                      "VMI's latest record)")
    tail.add_argument("--namespace", help="only VMIs of this namespace")
    tail.add_argument("--name", help="only VMIs of this name")
    tail.add_argument("--max", type=int, default=None, metavar="N", help="stop after N lines")

    broker = commands.add_parser(
        "broker", help="run a Kafka engine on this machine alone and print its address",
        description="Start a Kafka engine on 127.0.0.1, create the guestinfo topics, print `Kafka HOST:PORT[,...]` "
        "and run until SIGTERM or Ctrl-C. tansu: the embedded broker, memory only. kafka: Apache Kafka (KRaft), "
        "its log on disk, from the jars `make setup` fetched; with 3 nodes or more, topics are replicated 3 times "
        "and min.insync.replicas is 2.")
    _add_engine(broker)
    broker.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="--engine kafka: keep the cluster's logs in DIR and start from them again next time "
                        "(default: a temporary folder, removed at the stop)")
    broker.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (Kafka: the first node's; default: "
                        "a free one)")
    return parser


def _add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=ENGINES, default="tansu",
                        help="tansu: the embedded broker, memory only (default); kafka: Apache Kafka, a KRaft "
                        "cluster with its log on disk")
    parser.add_argument("--brokers", type=int, default=1, metavar="N",
                        help="--engine kafka: the cluster's nodes, each broker and controller (1 to 5; default 1)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    role = args.command
    setup_logging(args.verbose - args.quiet, args.log_format, role)
    try:
        return _dispatch(args)
    except UsageError as exc:
        parser.exit(2, f"guestinfo: error: {exc}\n")
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.verbose:
            log.exception("%s failed", role)
        else:
            log.error("%s failed: %s: %s (run with -v for details)", role, type(exc).__name__, exc)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    from guestinfo import stages  # the stages are imported only by the command that runs them

    command: Callable[[argparse.Namespace], int] = getattr(stages, args.command)
    return command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
