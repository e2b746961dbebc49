"""Settings of one node's collector."""

from __future__ import annotations

import socket

from pydantic import BaseModel, ConfigDict, Field, field_validator

from collectors.launchers import DEFAULT_LAUNCHER_URI
from schemas.agent_commands import AGENT_COMMANDS
from schemas.events import split_vmi_key

#: Seconds between two polls of each agent command once warmed up (`schemas.agent_commands`: upstream
#: virt-launcher's defaults, docs/upstream-behaviour.md §3).
DEFAULT_POLL_INTERVALS: dict[str, float] = {command.name: command.interval for command in AGENT_COMMANDS}


class CollectorConfig(BaseModel):
    """What a collector polls, how often, and where it publishes. Seconds are floats."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(min_length=1, description="Kafka bootstrap servers, `host:port[,...]`.")
    libvirt_uris: list[str] = Field(
        default_factory=lambda: ["qemu:///system"],
        description="libvirt connections listed every tick (e.g. `qemu:///system`, `test:///path/node.xml`).",
    )
    agent_sockets: dict[str, str] = Field(
        default_factory=dict,
        description="`namespace/name` → unix socket path: that VMI's guest agent is reached through this "
        "socket (qemu-ga protocol) instead of through libvirt.",
    )
    agent_socket_dir: str | None = Field(
        default=None,
        description="A folder of agent sockets: a VMI `namespace/name` whose `<dir>/<namespace>_<name>.sock` "
        "exists is reached through it, as with `agent_sockets` (which wins).",
    )
    launcher_pods_dir: str | None = Field(
        default=None,
        description="The kubelet's pods folder (`/var/lib/kubelet/pods`): every virt-launcher pod found there "
        "has its libvirt daemon collected, through `launcher_uri`, while the pod's folder exists "
        "(collectors/launchers.py).",
    )
    launcher_uri: str = Field(
        default=DEFAULT_LAUNCHER_URI,
        description="How to reach a launcher's daemon; `{socket}` is the path of its socket on this node.",
    )
    launcher_scan_interval: float = Field(
        default=2.0, gt=0, description="Seconds between two looks at `launcher_pods_dir` for launchers come or gone."
    )
    node_name: str = Field(
        default_factory=socket.gethostname, min_length=1, max_length=253,
        description="Node name written into every report.",
    )
    interval: float = Field(
        default=10.0, gt=0,
        description="Seconds between two listings of a libvirt URI that has no event watcher connected "
        "(`test:///` files, or while the watcher reconnects); URIs with events are listed on each event "
        "and every `relist_interval`. Agent polls follow `poll_intervals`, whatever the listing period.",
    )
    relist_interval: float = Field(
        default=60.0, gt=0,
        description="Seconds between two full listings of a libvirt URI whose events are watched (the safety "
        "net for a missed event).",
    )
    watch_events: bool = Field(
        default=True, description="Watch libvirt domain events of every URI (but `test:///` ones, whose "
        "in-process driver is private to each connection)."
    )
    poll_intervals: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_POLL_INTERVALS),
        description="Agent command → seconds between two polls of it once warmed up; commands left out keep "
        "their default. After an agent connects (and after a resume or reboot) every command is polled at "
        "once; then each waits `poll_warmup` seconds, doubling per poll up to its interval (commands whose "
        "interval is at most `poll_warmup` poll at their interval from the start).",
    )
    poll_warmup: float = Field(default=10.0, gt=0, description="First period of the warm-up (upstream 10 s).")
    jitter: float = Field(
        default=0.1, ge=0, lt=1,
        description="Each period is stretched by a random factor in [1-jitter, 1+jitter]; VMIs found at start "
        "are first polled at a random offset within `poll_warmup`, so a restart does not poll all at once.",
    )
    resync_interval: float = Field(
        default=300.0, gt=0,
        description="Seconds (jittered per VMI) between two publications of a VMI's full state; in between "
        "only what changed is published.",
    )
    agent_timeout: float = Field(default=5.0, gt=0, description="Seconds allowed for one agent call.")
    max_concurrent_agent_calls: int = Field(
        default=16, ge=1, le=1024, description="Agent calls running at the same time (over all VMIs)."
    )
    max_backoff_ticks: int = Field(
        default=16, ge=0, le=1024,
        description="Most ticks a VMI whose agent timed out is left unpolled (the back-off doubles per "
        "timed-out poll up to this, and ends with the first poll without a timeout).",
    )

    @field_validator("poll_intervals")
    @classmethod
    def _known_commands(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(DEFAULT_POLL_INTERVALS))
        if unknown:
            raise ValueError(f"poll_intervals: unknown command(s) {unknown}; known: {sorted(DEFAULT_POLL_INTERVALS)}")
        bad = sorted(command for command, seconds in value.items() if not seconds > 0)
        if bad:
            raise ValueError(f"poll_intervals: {bad} must be positive")
        return {**DEFAULT_POLL_INTERVALS, **value}

    @field_validator("launcher_uri")
    @classmethod
    def _has_socket(cls, value: str) -> str:
        if "{socket}" not in value:
            raise ValueError(f"launcher_uri {value!r} has no {{socket}} for the launcher's socket path")
        return value

    @field_validator("agent_sockets")
    @classmethod
    def _keys_are_vmi_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if split_vmi_key(key) is None:
                raise ValueError(f"agent_sockets key {key!r} is not `namespace/name`")
        return value
