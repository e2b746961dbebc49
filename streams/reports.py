"""The raw reports as the join decodes them: msgspec Structs, the hot path's form of `schemas.events`.

The contract of the raw topics is `schemas.events` (pydantic): the collector validates and bounds every
report with it when it builds one. The join decodes each report again, as hostile input, into these
Structs: the same JSON names, the same bounds (`schemas.limits`), unknown keys refused, in a few µs
instead of pydantic's ~60 µs per report. Being strict, they are if anything stricter than the models:
a number where a string belongs is refused, not converted, and only the camelCase names are read (the
models also took the snake_case ones, which no collector writes). `tests/streams/test_reports.py` holds them
to the models field by field, and to the models' decisions on valid and hostile documents.

Between decode and the merged record's JSON the join works on these directly: no model round trips.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from schemas.events import vmi_key
from schemas.limits import MAX_ADDRESSES, MAX_DISKS, MAX_ITEMS, MAX_STRING

GuestText = Annotated[str, Meta(max_length=MAX_STRING)]
Name = Annotated[str, Meta(max_length=253)]
#: Epoch seconds; JSON has no NaN or Infinity, and msgspec refuses numbers out of a float's range.
Time = Annotated[float, Meta(ge=0)]


class Report(Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """Base of the decoded report types: camelCase JSON names, immutable, unknown keys refused."""


class GuestPart(Struct, frozen=True, rename="camel"):
    """Base of the KubeVirt guest types inside an agent report: unknown keys ignored, as the models do."""


class VMIRef(Report, frozen=True):
    namespace: Annotated[str, Meta(min_length=1, max_length=253)]
    name: Annotated[str, Meta(min_length=1, max_length=253)]
    uid: Annotated[str, Meta(max_length=128)] = ""

    @property
    def key(self) -> str:
        return vmi_key(self.namespace, self.name)


class ReportOrder(Report, frozen=True):
    boot: Annotated[str, Meta(min_length=1, max_length=64)]
    uptime_ns: Annotated[int, Meta(ge=0, le=2**63 - 1)]


class DomainInterface(Report, frozen=True):
    name: Name = ""
    mac: Annotated[str, Meta(max_length=64)] = ""
    queue_count: Annotated[int, Meta(ge=1, le=1024)] = 1
    link_state: Literal["up", "down"] = "up"
    sriov: bool = False
    binding: Annotated[str, Meta(max_length=64)] = ""


class AccessCredentialNeeds(Report, frozen=True):
    ssh_public_keys: bool = False
    user_password: bool = False


class DomainReport(Report, frozen=True):
    vmi: VMIRef
    node: Name
    observed_at: Time
    order: ReportOrder | None = None
    removed: bool = False
    state: Literal["running", "paused", "shutoff", "other"] = "running"
    interfaces: Annotated[list[DomainInterface], Meta(max_length=MAX_ITEMS)] = []
    agent_connected: bool = False
    access_credentials: AccessCredentialNeeds = AccessCredentialNeeds()


class GuestOSInfo(GuestPart, frozen=True, omit_defaults=True):
    """Every field is Go omitempty: `msgspec.to_builtins` writes the KubeVirt JSON."""

    name: GuestText = ""
    kernel_release: GuestText = ""
    version: GuestText = ""
    pretty_name: GuestText = ""
    version_id: GuestText = ""
    kernel_version: GuestText = ""
    machine: GuestText = ""
    id: GuestText = ""


class GuestAgentCommandInfo(GuestPart, frozen=True, omit_defaults=True):
    """`enabled: false` is dropped, as Go's omitempty does: `msgspec.to_builtins` writes the KubeVirt JSON."""

    name: GuestText
    enabled: bool = False


class GuestOSUser(GuestPart, frozen=True):
    user_name: GuestText
    domain: GuestText = ""
    login_time: Annotated[float, Meta(ge=0.0, le=1e11)] = 0.0


class FileSystemDisk(GuestPart, frozen=True):
    serial: GuestText = ""
    bus_type: GuestText = ""


class FileSystem(GuestPart, frozen=True):
    disk_name: GuestText = ""
    mount_point: GuestText = ""
    file_system_type: GuestText = ""
    used_bytes: Annotated[int, Meta(ge=0, le=2**63 - 1)] = 0
    total_bytes: Annotated[int, Meta(ge=0, le=2**63 - 1)] = 0
    disk: Annotated[list[FileSystemDisk], Meta(max_length=MAX_DISKS)] = []


class GuestIPAddress(Report, frozen=True):
    address: GuestText
    family: Literal["ipv4", "ipv6"]
    prefix: Annotated[int, Meta(ge=0, le=128)] = 0


class GuestInterface(Report, frozen=True):
    name: GuestText = ""
    mac: GuestText = ""
    ip_addresses: Annotated[list[GuestIPAddress], Meta(max_length=MAX_ADDRESSES)] = []


class AgentVersionInfo(Report, frozen=True):
    version: GuestText = ""
    supported_commands: Annotated[list[GuestAgentCommandInfo], Meta(max_length=MAX_ITEMS)] = []


class GuestTimezone(Report, frozen=True):
    zone: GuestText = ""
    offset: Annotated[int, Meta(ge=-86400, le=86400)] = 0


class AgentReport(Report, frozen=True, kw_only=True):
    vmi: VMIRef
    node: Name
    observed_at: Time
    order: ReportOrder | None = None
    connected: bool
    session: Annotated[str, Meta(max_length=64)] = ""
    info: AgentVersionInfo | None = None
    os: GuestOSInfo | None = None
    hostname: GuestText | None = None
    timezone: GuestTimezone | None = None
    users: Annotated[list[GuestOSUser], Meta(max_length=MAX_ITEMS)] | None = None
    filesystems: Annotated[list[FileSystem], Meta(max_length=MAX_ITEMS)] | None = None
    interfaces: Annotated[list[GuestInterface], Meta(max_length=MAX_ITEMS)] | None = None
    fs_freeze_status: GuestText | None = None
    errors: Annotated[dict[str, GuestText], Meta(max_length=64)] = {}


DOMAIN_REPORTS = msgspec.json.Decoder(DomainReport)
AGENT_REPORTS = msgspec.json.Decoder(AgentReport)
