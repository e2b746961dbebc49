"""Raw events on `guestinfo.domain.v1` and `guestinfo.agent.v1`, keyed by `namespace/name`.

A collector sends one `DomainReport` per VMI per tick (the domain spec side, from libvirt) and one
`AgentReport` per VMI per tick (what the guest agent said). Fields of an `AgentReport` that are null
were not answered in that tick (not polled, not supported, failed): the join keeps what it had.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from schemas.kubevirt import FileSystem, GuestAgentCommandInfo, GuestOSInfo, GuestOSUser, camel_case_config
from schemas.limits import MAX_ADDRESSES, MAX_ITEMS, GuestString


class EventModel(BaseModel):
    """Base of the pipeline's own payloads: camelCase JSON, immutable, unknown keys rejected."""

    model_config = camel_case_config(extra="forbid")


class VMIRef(EventModel):
    """Identity of a VirtualMachineInstance; KubeVirt names a domain `<namespace>_<name>`."""

    namespace: str = Field(min_length=1, max_length=253)
    name: str = Field(min_length=1, max_length=253)
    uid: str = Field(default="", max_length=128)

    @property
    def key(self) -> str:
        return vmi_key(self.namespace, self.name)


def vmi_key(namespace: str, name: str) -> str:
    """The Kafka key of every topic: `namespace/name`."""
    return f"{namespace}/{name}"


def split_vmi_key(key: str) -> tuple[str, str] | None:
    """`namespace/name` → (namespace, name); None when it is not of that form."""
    namespace, sep, name = key.partition("/")
    if not sep or not namespace or not name or "/" in name:
        return None
    return namespace, name


def split_domain_name(domain_name: str) -> tuple[str, str] | None:
    """KubeVirt names a VMI's domain `<namespace>_<name>` (namespaces have no `_`); None otherwise."""
    namespace, sep, name = domain_name.partition("_")
    if not sep or not namespace or not name:
        return None
    return namespace, name


class ReportOrder(EventModel):
    """Where a report stands in its node's own order, whatever the node's wall clock says: the node's
    boot (`/proc/sys/kernel/random/boot_id`) and the time since that boot when the report was observed
    (CLOCK_BOOTTIME, in nanoseconds). Within one boot it never steps back, not even across collector
    restarts; `observedAt` may (NTP, a clock set by hand). The join orders one node's reports by it and
    keeps `observedAt` for display and for what it must judge across nodes."""

    boot: str = Field(min_length=1, max_length=64)
    uptime_ns: int = Field(ge=0, le=2**63 - 1)


class DomainInterface(EventModel):
    """A network device of the domain: `<interface>` (alias `ua-<name>`) or an SR-IOV `<hostdev>`."""

    name: str = Field(default="", max_length=253)
    mac: str = Field(default="", max_length=64)
    queue_count: int = Field(default=1, ge=1, le=1024)
    link_state: Literal["up", "down"] = "up"
    sriov: bool = False
    #: The VMI spec's binding of this interface ("masquerade", "bridge", "passt", ...), "" when unknown.
    #: Link-local guest addresses are dropped for "masquerade" (docs/upstream-behaviour.md §6).
    binding: str = Field(default="", max_length=64)


class AccessCredentialNeeds(EventModel):
    """Access credentials the VMI propagates through the guest agent (they add required commands)."""

    ssh_public_keys: bool = False
    user_password: bool = False


class DomainReport(EventModel):
    """What libvirt says of one domain. `removed` means the domain is gone from the node."""

    vmi: VMIRef
    node: str = Field(max_length=253)
    observed_at: float = Field(ge=0)
    #: The node's own order of its reports (absent from collectors before it: `observedAt` orders them).
    order: ReportOrder | None = None
    removed: bool = False
    state: Literal["running", "paused", "shutoff", "other"] = "running"
    interfaces: list[DomainInterface] = Field(default_factory=list, max_length=MAX_ITEMS)
    #: The `org.qemu.guest_agent.0` channel is connected (live XML `state="connected"`,
    #: or, for an agent reached through a direct socket, that socket answered `guest-sync`).
    agent_connected: bool = False
    access_credentials: AccessCredentialNeeds = Field(default_factory=AccessCredentialNeeds)


class GuestIPAddress(EventModel):
    address: GuestString
    family: Literal["ipv4", "ipv6"]
    prefix: int = Field(default=0, ge=0, le=128)


class GuestInterface(EventModel):
    """One interface from `guest-network-get-interfaces`."""

    name: GuestString = ""
    mac: GuestString = ""
    ip_addresses: list[GuestIPAddress] = Field(default_factory=list, max_length=MAX_ADDRESSES)


class AgentVersionInfo(EventModel):
    """`guest-info`: agent version and its command list."""

    version: GuestString = ""
    supported_commands: list[GuestAgentCommandInfo] = Field(default_factory=list, max_length=MAX_ITEMS)


class GuestTimezone(EventModel):
    zone: GuestString = ""
    offset: int = Field(default=0, ge=-86400, le=86400)


class AgentReport(EventModel):
    """What the guest agent of one VMI answered in one tick. Null fields were not answered."""

    vmi: VMIRef
    node: str = Field(max_length=253)
    observed_at: float = Field(ge=0)
    #: The order of the domain report of the tick whose agent this asked (see `DomainReport.order`).
    order: ReportOrder | None = None
    connected: bool
    #: Identifies one agent session as the collector saw it: a new value after the agent was lost
    #: and found again, or the domain was restarted or rebooted. What an earlier session said is void.
    session: str = Field(default="", max_length=64)
    info: AgentVersionInfo | None = None
    os: GuestOSInfo | None = None
    hostname: GuestString | None = None
    timezone: GuestTimezone | None = None
    users: list[GuestOSUser] | None = Field(default=None, max_length=MAX_ITEMS)
    filesystems: list[FileSystem] | None = Field(default=None, max_length=MAX_ITEMS)
    interfaces: list[GuestInterface] | None = Field(default=None, max_length=MAX_ITEMS)
    fs_freeze_status: GuestString | None = None
    #: Commands that failed in this tick, with a short reason (for logs and metrics downstream).
    errors: dict[str, GuestString] = Field(default_factory=dict, max_length=64)
