"""Pure conversions of guest-agent replies (the `return` values) into the pipeline's models.

Each converter takes the decoded `return` value of one command and returns a schema value, or
raises `AgentReplyError` naming the command when the reply does not have the documented shape.
Strings longer than `MAX_STRING` are cut to it; lists longer than the schema limits are cut too
(both are logged): an over-long reply still yields its first items.

Those log lines are about tenant-written data, so they are rate-limited per guest and kind (once per
`plumbing.logs.REPEAT_AFTER`): the guest is the VMI key in `CURRENT_GUEST`, which the agent
poll sets for the task it runs in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from collectors.errors import AgentReplyError
from plumbing.logs import RateLimitedLog
from schemas.agent_commands import AGENT_COMMANDS, BY_FIELD
from schemas.events import AgentVersionInfo, GuestInterface, GuestIPAddress, GuestTimezone
from schemas.kubevirt import FileSystem, FileSystemDisk, GuestAgentCommandInfo, GuestOSInfo, GuestOSUser
from schemas.limits import MAX_STRING

log = logging.getLogger(__name__)

#: The registry's commands, by the `AgentReport` field each fills.
INFO, OS, HOST_NAME, TIMEZONE = BY_FIELD["info"], BY_FIELD["os"], BY_FIELD["hostname"], BY_FIELD["timezone"]
USERS, FILESYSTEMS, INTERFACES = BY_FIELD["users"], BY_FIELD["filesystems"], BY_FIELD["interfaces"]
FREEZE_STATUS = BY_FIELD["fs_freeze_status"]

#: The VMI whose replies are being converted (a key for the rate-limited notes; "?" when unknown).
CURRENT_GUEST: ContextVar[str] = ContextVar("guestinfo_current_guest", default="?")
_notes = RateLimitedLog(log)


def note(level: int, kind: str, message: str, *args: object) -> None:
    """Log a line about the current guest's data, at most once per guest and kind per repeat period."""
    guest = CURRENT_GUEST.get()
    _notes.note(level, (guest, kind), "guest %.300s: " + message, guest, *args)


def _clip_string(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_STRING:
        note(logging.INFO, "string", "string of %d characters cut to %d", len(value), MAX_STRING)
        return value[:MAX_STRING]
    return value


def _limit(bound: int | None) -> int:
    assert bound is not None, "a list answer's command has its bounds in schemas.agent_commands"
    return bound


def _capped(limit: int) -> Callable[[Any], Any]:
    def cap(value: Any) -> Any:
        if isinstance(value, list) and len(value) > limit:
            note(logging.WARNING, "list", "list of %d items cut to %d", len(value), limit)
            return value[:limit]
        return value

    return cap


#: A guest string: must be a JSON string, cut to MAX_STRING.
Text = Annotated[str, Field(strict=True), BeforeValidator(_clip_string)]
#: A guest integer: a JSON integer (not a bool, not a float, not a string).
Integer = Annotated[int, Field(strict=True)]
#: A guest number of seconds: finite and not negative.
Seconds = Annotated[float, Field(strict=True, ge=0.0, allow_inf_nan=False)]


class _Raw(BaseModel):
    """Base of the agent's own reply shapes: dashed names, unknown keys ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=False)


class _RawCommand(_Raw):
    name: Text
    enabled: Annotated[bool, Field(strict=True)] = False


class _RawGuestInfo(_Raw):
    version: Text = ""
    supported_commands: Annotated[list[_RawCommand], BeforeValidator(_capped(_limit(INFO.max_items)))] = []


class _RawOSInfo(_Raw):
    name: Text = ""
    kernel_release: Text = Field(default="", alias="kernel-release")
    version: Text = ""
    pretty_name: Text = Field(default="", alias="pretty-name")
    version_id: Text = Field(default="", alias="version-id")
    kernel_version: Text = Field(default="", alias="kernel-version")
    machine: Text = ""
    id: Text = ""


class _RawHostName(_Raw):
    host_name: Text = Field(alias="host-name")


class _RawTimezone(_Raw):
    zone: Text = ""
    offset: Integer


class _RawUser(_Raw):
    user: Text
    domain: Text = ""
    login_time: Seconds = Field(default=0.0, alias="login-time")


class _RawDisk(_Raw):
    serial: Text = ""
    bus_type: Text = Field(default="", alias="bus-type")


class _RawFileSystem(_Raw):
    name: Text = ""
    mountpoint: Text = ""
    type: Text = ""
    used_bytes: Integer = Field(default=0, alias="used-bytes")
    total_bytes: Integer = Field(default=0, alias="total-bytes")
    disk: Annotated[list[_RawDisk], BeforeValidator(_capped(_limit(FILESYSTEMS.max_nested)))] = []


class _RawAddress(_Raw):
    ip_address_type: Text = Field(alias="ip-address-type")
    ip_address: Text = Field(alias="ip-address")
    prefix: Integer = 0


class _RawInterface(_Raw):
    name: Text = ""
    hardware_address: Text = Field(default="", alias="hardware-address")
    ip_addresses: list[_RawAddress] = Field(default=[], alias="ip-addresses")


_USERS = TypeAdapter(Annotated[list[_RawUser], BeforeValidator(_capped(_limit(USERS.max_items)))])
_FILESYSTEMS = TypeAdapter(Annotated[list[_RawFileSystem], BeforeValidator(_capped(_limit(FILESYSTEMS.max_items)))])
_INTERFACES = TypeAdapter(Annotated[list[_RawInterface], BeforeValidator(_capped(_limit(INTERFACES.max_items)))])
_STATUS = TypeAdapter(Text)


def _reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(part) for part in error["loc"]) or "reply"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _converting(command: str, build: Callable[[], Any]) -> Any:
    try:
        return build()
    except ValidationError as exc:
        raise AgentReplyError(command, f"unexpected reply: {_reason(exc)}") from None


def guest_info(reply: Any) -> AgentVersionInfo:
    """`guest-info` → agent version and the supported commands (name, enabled)."""

    def build() -> AgentVersionInfo:
        raw = _RawGuestInfo.model_validate(reply)
        return AgentVersionInfo(
            version=raw.version,
            supported_commands=[
                GuestAgentCommandInfo(name=command.name, enabled=command.enabled)
                for command in raw.supported_commands
            ],
        )

    result: AgentVersionInfo = _converting(INFO.name, build)
    return result


def guest_os_info(reply: Any) -> GuestOSInfo:
    """`guest-get-osinfo` → the eight KubeVirt OS fields (all optional in the reply)."""

    def build() -> GuestOSInfo:
        raw = _RawOSInfo.model_validate(reply)
        return GuestOSInfo.model_validate(raw.model_dump())

    result: GuestOSInfo = _converting(OS.name, build)
    return result


def guest_host_name(reply: Any) -> str:
    """`guest-get-host-name` → the `host-name`."""
    result: str = _converting(HOST_NAME.name, lambda: _RawHostName.model_validate(reply).host_name)
    return result


def guest_timezone(reply: Any) -> GuestTimezone:
    """`guest-get-timezone` → zone (may be absent: "") and offset in seconds east of UTC."""

    def build() -> GuestTimezone:
        raw = _RawTimezone.model_validate(reply)
        return GuestTimezone(zone=raw.zone, offset=raw.offset)

    result: GuestTimezone = _converting(TIMEZONE.name, build)
    return result


def guest_users(reply: Any) -> list[GuestOSUser]:
    """`guest-get-users` → one user per (user, domain), with the earliest login, in first-seen order."""

    def build() -> list[GuestOSUser]:
        earliest: dict[tuple[str, str], float] = {}
        for raw in _USERS.validate_python(reply):
            key = (raw.user, raw.domain)
            seen = earliest.get(key)
            if seen is None or raw.login_time < seen:
                earliest[key] = raw.login_time
        return [
            GuestOSUser(user_name=user, domain=domain, login_time=login)
            for (user, domain), login in earliest.items()
        ]

    result: list[GuestOSUser] = _converting(USERS.name, build)
    return result


def guest_filesystems(reply: Any) -> list[FileSystem]:
    """`guest-get-fsinfo` → filesystems with their disks' serial and bus type; absent sizes are 0."""

    def build() -> list[FileSystem]:
        return [
            FileSystem(
                disk_name=raw.name,
                mount_point=raw.mountpoint,
                file_system_type=raw.type,
                used_bytes=raw.used_bytes,
                total_bytes=raw.total_bytes,
                disk=[FileSystemDisk(serial=disk.serial, bus_type=disk.bus_type) for disk in raw.disk],
            )
            for raw in _FILESYSTEMS.validate_python(reply)
        ]

    result: list[FileSystem] = _converting(FILESYSTEMS.name, build)
    return result


def guest_interfaces(reply: Any) -> list[GuestInterface]:
    """`guest-network-get-interfaces` → name, MAC and addresses (ipv4/ipv6 only) in agent order.

    Every interface is kept, `lo` included: this is the agent's report, filtering is the join's.
    """

    def build() -> list[GuestInterface]:
        interfaces = []
        for raw in _INTERFACES.validate_python(reply):
            addresses = [
                GuestIPAddress(address=address.ip_address, family=address.ip_address_type, prefix=address.prefix)
                for address in raw.ip_addresses
                if address.ip_address_type in ("ipv4", "ipv6")
            ]
            most = _limit(INTERFACES.max_nested)
            if len(addresses) > most:
                note(logging.WARNING, "addresses", "interface %.64s: %d addresses cut to %d", raw.name,
                     len(addresses), most)
                addresses = addresses[:most]
            interfaces.append(GuestInterface(name=raw.name, mac=raw.hardware_address, ip_addresses=addresses))
        return interfaces

    result: list[GuestInterface] = _converting(INTERFACES.name, build)
    return result


def guest_fsfreeze_status(reply: Any) -> str:
    """`guest-fsfreeze-status` → "thawed" or "frozen" (any string is passed on as is)."""
    result: str = _converting(FREEZE_STATUS.name, lambda: _STATUS.validate_python(reply))
    return result


#: The converter of each field's answer.
_CONVERTER_OF: Final[dict[str, Callable[[Any], Any]]] = {
    INFO.field: guest_info,
    OS.field: guest_os_info,
    HOST_NAME.field: guest_host_name,
    TIMEZONE.field: guest_timezone,
    USERS.field: guest_users,
    FILESYSTEMS.field: guest_filesystems,
    INTERFACES.field: guest_interfaces,
    FREEZE_STATUS.field: guest_fsfreeze_status,
}
#: The polled commands (`schemas.agent_commands`), in polling order, with the `AgentReport` field each
#: fills and its converter. A command of the registry without a converter fails here, at import.
CONVERTERS: Final[dict[str, tuple[str, Callable[[Any], Any]]]] = {
    command.name: (command.field, _CONVERTER_OF[command.field]) for command in AGENT_COMMANDS
}


def convert(command: str, reply: Any) -> Any:
    """Convert the reply of any polled command; unknown commands are an `AgentReplyError`."""
    entry = CONVERTERS.get(command)
    if entry is None:
        raise AgentReplyError(command, "no converter for this command")
    return entry[1](reply)
