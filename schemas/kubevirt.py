"""KubeVirt API types whose JSON is byte-for-byte KubeVirt's (kubevirt-reference §1).

Go's `omitempty` drops "", 0, false, null and empty lists; a struct-valued field is never dropped.
Each model names its omitempty fields (JSON names) in `_omitempty`; everything else is always written.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from pydantic.alias_generators import to_camel

from schemas.limits import MAX_DISKS, MAX_ITEMS, GuestString


def camel_case_config(extra: Literal["ignore", "forbid"]) -> ConfigDict:
    """The model config of every JSON type here: camelCase names (either spelling accepted), immutable."""
    return ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
        extra=extra,
    )


def _is_go_empty(value: Any) -> bool:
    return value is None or value is False or value == 0 or value == "" or value == [] or value == {}


class KubeVirtModel(BaseModel):
    """Base of the KubeVirt JSON types: camelCase names, immutable, Go omitempty on output."""

    model_config = camel_case_config(extra="ignore")
    _omitempty: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = self._go_values(handler(self))
        for key in self._omitempty:
            if key in data and _is_go_empty(data[key]):
                del data[key]
        return data

    def _go_values(self, data: dict[str, Any]) -> dict[str, Any]:
        """Where Go writes a value differently from Python; the default writes it as it is."""
        return data


class GuestOSInfo(KubeVirtModel):
    """VirtualMachineInstanceGuestOSInfo: `status.guestOSInfo` and the `os` of guestosinfo."""

    _omitempty = frozenset(
        {"name", "kernelRelease", "version", "prettyName", "versionId", "kernelVersion", "machine", "id"}
    )
    name: GuestString = ""
    kernel_release: GuestString = ""
    version: GuestString = ""
    pretty_name: GuestString = ""
    version_id: GuestString = ""
    kernel_version: GuestString = ""
    machine: GuestString = ""
    id: GuestString = ""


class GuestAgentCommandInfo(KubeVirtModel):
    """One supported command: `enabled:false` is dropped by omitempty."""

    _omitempty = frozenset({"enabled"})
    name: GuestString
    enabled: bool = False


class GuestOSUser(KubeVirtModel):
    """VirtualMachineInstanceGuestOSUser; `loginTime` is float seconds since the epoch."""

    _omitempty = frozenset({"domain", "loginTime"})
    user_name: GuestString
    domain: GuestString = ""
    login_time: float = Field(default=0.0, ge=0.0, le=1e11, allow_inf_nan=False)

    def _go_values(self, data: dict[str, Any]) -> dict[str, Any]:
        # Go writes a whole float64 without a fraction (1718000000, not 1718000000.0).
        if self.login_time and self.login_time.is_integer():
            data["loginTime"] = int(self.login_time)
        return data


class FileSystemDisk(KubeVirtModel):
    """VirtualMachineInstanceFileSystemDisk: `serial` omitempty, `busType` always written."""

    _omitempty = frozenset({"serial"})
    serial: GuestString = ""
    bus_type: GuestString = ""


class FileSystem(KubeVirtModel):
    """VirtualMachineInstanceFileSystem: the five scalars are always written, `disk` is omitempty."""

    _omitempty = frozenset({"disk"})
    disk_name: GuestString = ""
    mount_point: GuestString = ""
    file_system_type: GuestString = ""
    used_bytes: int = Field(default=0, ge=0, le=2**63 - 1)
    total_bytes: int = Field(default=0, ge=0, le=2**63 - 1)
    disk: list[FileSystemDisk] = Field(default_factory=list, max_length=MAX_DISKS)


class FileSystemInfo(KubeVirtModel):
    """`fsInfo`: its `disks` has no omitempty, so an empty list is written as null."""

    disks: list[FileSystem] | None = None

    def _go_values(self, data: dict[str, Any]) -> dict[str, Any]:
        if not data.get("disks"):
            data["disks"] = None
        return data


class GuestAgentInfo(KubeVirtModel):
    """VirtualMachineInstanceGuestAgentInfo: the body of the `guestosinfo` subresource."""

    _omitempty = frozenset(
        {"guestAgentVersion", "supportedCommands", "hostname", "timezone", "userList", "fsFreezeStatus"}
    )
    guest_agent_version: GuestString = ""
    supported_commands: list[GuestAgentCommandInfo] = Field(default_factory=list, max_length=MAX_ITEMS)
    hostname: GuestString = ""
    os: GuestOSInfo = Field(default_factory=GuestOSInfo)
    timezone: str = ""
    user_list: list[GuestOSUser] = Field(default_factory=list)
    fs_info: FileSystemInfo = Field(default_factory=FileSystemInfo)
    fs_freeze_status: GuestString = ""


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

    _omitempty = frozenset(
        {
            "ipAddress",
            "mac",
            "name",
            "ipAddresses",
            "podInterfaceName",
            "interfaceName",
            "infoSource",
            "queueCount",
            "linkState",
        }
    )
    ip_address: str = ""
    mac: str = ""
    name: str = ""
    ip_addresses: list[str] = Field(default_factory=list)
    pod_interface_name: str = ""
    interface_name: str = ""
    info_source: InfoSource = ""
    queue_count: int = 0
    link_state: Literal["", "up", "down"] = ""


class VMICondition(KubeVirtModel):
    """VirtualMachineInstanceCondition. metav1.Time fields are written as null when unset."""

    _omitempty = frozenset({"reason", "message"})
    type: str
    status: Literal["True", "False", "Unknown"]
    last_probe_time: str | None = None
    last_transition_time: str | None = None
    reason: str = ""
    message: str = ""


AGENT_CONNECTED = "AgentConnected"
AGENT_VERSION_NOT_SUPPORTED = "AgentVersionNotSupported"
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"
