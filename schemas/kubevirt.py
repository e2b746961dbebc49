"""KubeVirt API types whose JSON is byte-for-byte KubeVirt's (docs/upstream-behaviour.md §1).

Go's `omitempty` drops "", 0, false, null and empty lists; a struct-valued field is never dropped.
A field annotated `OmitEmpty` has Go's omitempty; everything else is always written. The rule runs
per field inside pydantic's serializer (`exclude_if`), not as a model-wide wrap: records are
serialised on every join event, so this is on the hot path.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_serializer
from pydantic.alias_generators import to_camel

from schemas.limits import MAX_DISKS, MAX_ITEMS, GuestString


def camel_case_config(extra: Literal["ignore", "forbid"]) -> ConfigDict:
    """The model config of every JSON type here: camelCase names (either spelling accepted), immutable,
    finite numbers only."""
    return ConfigDict(
        # JSON has no NaN or Infinity; pydantic's parser would take them: a time that compares
        # false with everything would break the join's ordering.
        allow_inf_nan=False,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
        extra=extra,
    )


#: Go's `omitempty` on a field: left out of the JSON when empty. Go's empty values ("", 0, false, nil,
#: an empty list or map) are exactly Python's falsy ones for the scalar and list types it is put on
#: (never on a struct-valued field: Go never drops those), and `operator.not_` tests that in C.
OMIT_EMPTY = Field(exclude_if=operator.not_)
OmitEmptyString = Annotated[GuestString, OMIT_EMPTY]


class KubeVirtModel(BaseModel):
    """Base of the KubeVirt JSON types: camelCase names, immutable, Go omitempty where annotated."""

    model_config = camel_case_config(extra="ignore")


class GuestOSInfo(KubeVirtModel):
    """VirtualMachineInstanceGuestOSInfo: `status.guestOSInfo` and the `os` of guestosinfo."""

    name: OmitEmptyString = ""
    kernel_release: OmitEmptyString = ""
    version: OmitEmptyString = ""
    pretty_name: OmitEmptyString = ""
    version_id: OmitEmptyString = ""
    kernel_version: OmitEmptyString = ""
    machine: OmitEmptyString = ""
    id: OmitEmptyString = ""


class GuestAgentCommandInfo(KubeVirtModel):
    """One supported command: `enabled:false` is dropped by omitempty."""

    name: GuestString
    enabled: Annotated[bool, OMIT_EMPTY] = False


class GuestOSUser(KubeVirtModel):
    """VirtualMachineInstanceGuestOSUser; `loginTime` is float seconds since the epoch."""

    user_name: GuestString
    domain: OmitEmptyString = ""
    login_time: Annotated[float, OMIT_EMPTY] = Field(default=0.0, ge=0.0, le=1e11, allow_inf_nan=False)

    @field_serializer("login_time")
    def _go_float(self, value: float) -> float | int:
        # Go writes a whole float64 without a fraction (1718000000, not 1718000000.0).
        return int(value) if value.is_integer() else value


class FileSystemDisk(KubeVirtModel):
    """VirtualMachineInstanceFileSystemDisk: `serial` omitempty, `busType` always written."""

    serial: OmitEmptyString = ""
    bus_type: GuestString = ""


class FileSystem(KubeVirtModel):
    """VirtualMachineInstanceFileSystem: the five scalars are always written, `disk` is omitempty."""

    disk_name: GuestString = ""
    mount_point: GuestString = ""
    file_system_type: GuestString = ""
    used_bytes: int = Field(default=0, ge=0, le=2**63 - 1)
    total_bytes: int = Field(default=0, ge=0, le=2**63 - 1)
    disk: Annotated[list[FileSystemDisk], OMIT_EMPTY] = Field(default_factory=list, max_length=MAX_DISKS)


class FileSystemInfo(KubeVirtModel):
    """`fsInfo`: its `disks` has no omitempty, so an empty list is written as null."""

    disks: list[FileSystem] | None = None

    @field_serializer("disks", mode="wrap")
    def _nil_when_empty(self, value: list[FileSystem] | None, handler: SerializerFunctionWrapHandler) -> Any:
        return handler(value) if value else None


class GuestAgentInfo(KubeVirtModel):
    """VirtualMachineInstanceGuestAgentInfo: the body of the `guestosinfo` subresource."""

    guest_agent_version: OmitEmptyString = ""
    supported_commands: Annotated[list[GuestAgentCommandInfo], OMIT_EMPTY] = Field(
        default_factory=list, max_length=MAX_ITEMS
    )
    hostname: OmitEmptyString = ""
    os: GuestOSInfo = Field(default_factory=GuestOSInfo)
    timezone: Annotated[str, OMIT_EMPTY] = ""
    user_list: Annotated[list[GuestOSUser], OMIT_EMPTY] = Field(default_factory=list)
    fs_info: FileSystemInfo = Field(default_factory=FileSystemInfo)
    fs_freeze_status: OmitEmptyString = ""


class ListMeta(KubeVirtModel):
    """metav1.ListMeta as KubeVirt writes it here: always `{}`."""


class GuestOSUserList(KubeVirtModel):
    """VirtualMachineInstanceGuestOSUserList: the body of the `userlist` subresource."""

    metadata: ListMeta = Field(default_factory=ListMeta)
    items: list[GuestOSUser] = Field(default_factory=list)


class FileSystemList(KubeVirtModel):
    """VirtualMachineInstanceFileSystemList: the body of the `filesystemlist` subresource."""

    metadata: ListMeta = Field(default_factory=ListMeta)
    items: list[FileSystem] = Field(default_factory=list)


InfoSource = str  # tokens "domain", "guest-agent", "multus-status" joined by ", "


class NetworkInterface(KubeVirtModel):
    """VirtualMachineInstanceNetworkInterface (`status.interfaces[]`): every field omitempty."""

    ip_address: Annotated[str, OMIT_EMPTY] = ""
    mac: Annotated[str, OMIT_EMPTY] = ""
    name: Annotated[str, OMIT_EMPTY] = ""
    ip_addresses: Annotated[list[str], OMIT_EMPTY] = Field(default_factory=list)
    pod_interface_name: Annotated[str, OMIT_EMPTY] = ""
    interface_name: Annotated[str, OMIT_EMPTY] = ""
    info_source: Annotated[InfoSource, OMIT_EMPTY] = ""
    queue_count: Annotated[int, OMIT_EMPTY] = 0
    link_state: Annotated[Literal["", "up", "down"], OMIT_EMPTY] = ""


class VMICondition(KubeVirtModel):
    """VirtualMachineInstanceCondition. metav1.Time fields are written as null when unset."""

    type: str
    status: Literal["True", "False", "Unknown"]
    last_probe_time: str | None = None
    last_transition_time: str | None = None
    reason: Annotated[str, OMIT_EMPTY] = ""
    message: Annotated[str, OMIT_EMPTY] = ""


AGENT_CONNECTED = "AgentConnected"
AGENT_VERSION_NOT_SUPPORTED = "AgentVersionNotSupported"
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"
