"""Change events on `guestinfo.events.v1`, keyed by VMI (`namespace/name`), on the same partitions.

The join derives them from a VMI's consecutive revisions on `guestinfo.vmi.v1`: each event names the
revision that made the change, so a replay after a crash sends the same events again, and consumers
drop duplicates by (`vmi.uid`, `revision`, `type`, `subject`). `subject` names what changed within the
VMI (a user, an address, a mount point; empty for the VMI itself).

Every event carries the VMI, its node, the revision, when it was observed and its type; the fields of
each type follow. New types may come in later versions of this topic: consumers skip types they do
not know.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, get_args

from pydantic import Field, TypeAdapter

from schemas.events import EventModel, VMIRef
from schemas.limits import MAX_STRING, GuestString

#: Filesystem usage thresholds (percent of capacity): crossing one upwards is `FilesystemUsageHigh`,
#: downwards `FilesystemUsageNormal` (upstream's GuestFilesystemAlmostOutOfSpace warns at 85, is
#: critical at 95).
USAGE_THRESHOLDS: Final = (85, 95)
#: Filesystems that are full by design or not the guest's disks: no usage events (upstream's alert
#: leaves out the same, and the "System Reserved" partition of Windows by mount point).
PSEUDO_FILESYSTEM_TYPES: Final = (
    "CDFS", "iso9660", "udf", "squashfs", "cramfs", "tmpfs", "devtmpfs", "proc", "sysfs", "overlay",
    "fusectl", "selinuxfs", "securityfs", "pstore", "debugfs", "tracefs", "configfs", "binfmt_misc", "bpf",
    "devpts", "mqueue", "nsfs", "rpc_pipefs", "ramfs", "rootfs",
)
#: Types matched by prefix: `cgroup`, `cgroup2`; `fuse.*` (sshfs, gvfsd ...).
PSEUDO_FILESYSTEM_PREFIXES: Final = ("cgroup", "fuse.")
SYSTEM_RESERVED: Final = "System Reserved"


def is_pseudo_filesystem(file_system_type: str, mount_point: str) -> bool:
    """Whether a filesystem is left out of usage events and alerts."""
    return (mount_point == SYSTEM_RESERVED or file_system_type in PSEUDO_FILESYSTEM_TYPES
            or file_system_type.startswith(PSEUDO_FILESYSTEM_PREFIXES))


class VMIEventBase(EventModel):
    """What every event carries."""

    type: str
    vmi: VMIRef
    node: str = Field(max_length=253)
    #: The revision of `guestinfo.vmi.v1` that made the change.
    revision: int = Field(ge=1)
    #: When the change was observed (the revision's `observedAt`, epoch seconds).
    observed_at: float = Field(ge=0)
    #: What changed within the VMI: the user (`domain\\user` when the agent names a domain), the
    #: address (`interface/address`), the filesystem and threshold (`/var@95`); empty for the VMI itself.
    subject: str = Field(max_length=3 * MAX_STRING)


class AgentConnected(VMIEventBase):
    """The guest agent's channel connected (also the first time a VMI is seen connected)."""

    type: Literal["AgentConnected"]


class AgentDisconnected(VMIEventBase):
    type: Literal["AgentDisconnected"]


class GuestRebooted(VMIEventBase):
    """A new agent session on the node that runs the VMI (same uid): the guest rebooted, or its domain or
    its agent restarted; the agent cannot tell these apart. A migration is not one."""

    type: Literal["GuestRebooted"]


class Change(EventModel):
    before: GuestString
    after: GuestString


class GuestOSChanged(VMIEventBase):
    """Fields of `guestOSInfo` changed (an OS or kernel update): each changed field, by its JSON name."""

    type: Literal["GuestOSChanged"]
    changes: dict[str, Change] = Field(max_length=16)


class HostnameChanged(VMIEventBase):
    type: Literal["HostnameChanged"]
    before: GuestString
    after: GuestString


class UserLoggedIn(VMIEventBase):
    type: Literal["UserLoggedIn"]
    user_name: GuestString
    #: The user's domain (Windows), "" when the agent names none.
    domain: GuestString


class UserLoggedOut(VMIEventBase):
    type: Literal["UserLoggedOut"]
    user_name: GuestString
    domain: GuestString


class AddressAdded(VMIEventBase):
    """An address showed on a guest interface (as `guest-network-get-interfaces` names it)."""

    type: Literal["AddressAdded"]
    interface_name: GuestString
    ip_address: GuestString


class AddressRemoved(VMIEventBase):
    type: Literal["AddressRemoved"]
    interface_name: GuestString
    ip_address: GuestString


class FilesystemUsage(VMIEventBase):
    """A filesystem's usage crossed `threshold` percent: once per crossing, per threshold crossed."""

    disk_name: GuestString
    mount_point: GuestString
    file_system_type: GuestString
    used_bytes: int = Field(ge=0)
    total_bytes: int = Field(ge=0)
    threshold: Literal[85, 95]


class FilesystemUsageHigh(FilesystemUsage):
    type: Literal["FilesystemUsageHigh"]


class FilesystemUsageNormal(FilesystemUsage):
    type: Literal["FilesystemUsageNormal"]


VMIEvent = Annotated[
    AgentConnected | AgentDisconnected | GuestRebooted | GuestOSChanged | HostnameChanged | UserLoggedIn
    | UserLoggedOut | AddressAdded | AddressRemoved | FilesystemUsageHigh | FilesystemUsageNormal,
    Field(discriminator="type"),
]
VMI_EVENTS: Final = TypeAdapter(VMIEvent)
#: Every event type, in the order above.
EVENT_TYPES: Final = tuple(
    get_args(model.model_fields["type"].annotation)[0] for model in get_args(get_args(VMIEvent)[0])
)
