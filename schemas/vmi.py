"""The merged per-VMI record on the compacted topic `guestinfo.vmi.v1`.

A null value (tombstone) under a key means the VMI went away. Records carry a `revision` that grows
by one with every change the join emits for that VMI, so that consumers can drop duplicates and
stale re-deliveries (delivery is at-least-once).
"""

from __future__ import annotations

from pydantic import AliasChoices, Field

from schemas.events import EventModel, VMIRef
from schemas.kubevirt import (
    FileSystem,
    FileSystemList,
    GuestAgentInfo,
    GuestOSInfo,
    GuestOSUser,
    GuestOSUserList,
    NetworkInterface,
    VMICondition,
)


class VMIStatusFields(EventModel):
    """The parts of the VMI `.status` this pipeline owns."""

    guest_os_info: GuestOSInfo = Field(
        default_factory=GuestOSInfo,
        validation_alias=AliasChoices("guestOSInfo", "guest_os_info"),
        serialization_alias="guestOSInfo",
    )
    interfaces: list[NetworkInterface] = Field(default_factory=list)
    conditions: list[VMICondition] = Field(default_factory=list)


class VMIRecord(EventModel):
    """Everything known of one VMI, joined from its domain and its guest agent."""

    vmi: VMIRef
    node: str
    revision: int = Field(ge=1)
    observed_at: float
    agent_connected: bool
    status: VMIStatusFields
    #: The `guestosinfo` body: userList and fsInfo.disks capped at the first 10, as upstream.
    guest_agent_info: GuestAgentInfo
    #: Full lists, served by `userlist` and `filesystemlist`.
    users: list[GuestOSUser] = Field(default_factory=list)
    filesystems: list[FileSystem] = Field(default_factory=list)
    #: When each part shown was observed (epoch seconds): "domain", and per agent answer "info", "os",
    #: "hostname", "timezone", "users", "filesystems", "interfaces", "fsFreezeStatus". A re-report of
    #: an unchanged value keeps the time the value was first reported.
    observed: dict[str, float] = Field(default_factory=dict)

    def user_list(self) -> GuestOSUserList:
        return GuestOSUserList(items=self.users)

    def filesystem_list(self) -> FileSystemList:
        return FileSystemList(items=self.filesystems)
