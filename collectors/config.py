"""Settings of one node's collector."""

from __future__ import annotations

import socket

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.events import split_vmi_key


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
    node_name: str = Field(
        default_factory=socket.gethostname, min_length=1, max_length=253,
        description="Node name written into every report.",
    )
    interval: float = Field(default=10.0, gt=0, description="Seconds between the starts of two ticks.")
    agent_timeout: float = Field(default=5.0, gt=0, description="Seconds allowed for one agent call.")
    max_concurrent_agent_calls: int = Field(
        default=16, ge=1, le=1024, description="Agent calls running at the same time (over all VMIs)."
    )
    max_backoff_ticks: int = Field(
        default=16, ge=0, le=1024,
        description="Most ticks a VMI whose agent timed out is left unpolled (the back-off doubles per "
        "timed-out poll up to this, and ends with the first poll without a timeout).",
    )

    @field_validator("agent_sockets")
    @classmethod
    def _keys_are_vmi_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if split_vmi_key(key) is None:
                raise ValueError(f"agent_sockets key {key!r} is not `namespace/name`")
        return value
