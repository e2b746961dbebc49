"""The `guestinfos` resource of `guestinfo.kubevirt.io/v1alpha1`: one GuestInfo object per VMI.

A GuestInfo is the merged record as a Kubernetes object: its name and namespace are the VMI's, its
`metadata.uid` the VMI's uid, and its `status` what the guest agent and the domain say of it.
The object is stored as JSON bytes with an empty `resourceVersion`; `with_resource_version` fills in
the store's write sequence when the object is served (docs/guestinfo-api.md).

Only what changes when the guest changes is in the object: filesystem usage is not (it moves on
every poll and is served by `guestinfos/filesystemlist`), so a GuestInfo is rewritten, and watchers
are told, only when something shown here changes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.vmi import VMIRecord

GROUP = "guestinfo.kubevirt.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "GuestInfo"
LIST_KIND = "GuestInfoList"
RESOURCE = "guestinfos"
SINGULAR = "guestinfo"
SHORT_NAMES = ("gi",)
#: The subresources, each serving the KubeVirt body of the same name.
SUBRESOURCES = ("guestosinfo", "userlist", "filesystemlist")

#: The parts of `VMIRecord.observed` shown in `status.observed` (filesystem times move with usage).
SHOWN_PARTS = ("domain", "info", "os", "hostname", "timezone", "users", "interfaces")

#: Written where the resource version goes; replaced when the object is served.
_NO_VERSION = b'"resourceVersion":""'


def rfc3339(timestamp: float) -> str:
    """A metav1.Time: UTC, whole seconds, `Z`."""
    return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def guestinfo(record: VMIRecord, created_at: float) -> dict[str, Any]:
    """The GuestInfo object of `record` (without its resource version), as JSON-ready values.

    `created_at` is when the store first held this VMI (its uid): `metadata.creationTimestamp`.
    """
    status = record.status.model_dump(mode="json")
    agent = record.guest_agent_info
    shown: dict[str, Any] = {"nodeName": record.node, "agentConnected": record.agent_connected}
    if status["guestOSInfo"]:
        shown["guestOSInfo"] = status["guestOSInfo"]
    for key, value in (("hostname", agent.hostname), ("timezone", agent.timezone),
                       ("agentVersion", agent.guest_agent_version)):
        if value:
            shown[key] = value
    for key in ("interfaces", "conditions"):
        if status.get(key):
            shown[key] = status[key]
    shown["userCount"] = len(record.users)
    shown["filesystemCount"] = len(record.filesystems)
    observed = {part: rfc3339(record.observed[part]) for part in SHOWN_PARTS if part in record.observed}
    if observed:
        shown["observed"] = observed
    metadata = {
        "name": record.vmi.name,
        "namespace": record.vmi.namespace,
        "resourceVersion": "",
        "creationTimestamp": rfc3339(created_at),
    }
    if record.vmi.uid:
        metadata["uid"] = record.vmi.uid
    return {"kind": KIND, "apiVersion": API_VERSION, "metadata": metadata, "status": shown}


def encode_guestinfo(obj: dict[str, Any]) -> bytes:
    """The stored bytes of a GuestInfo (its `resourceVersion` empty)."""
    return orjson.dumps(obj)


def with_resource_version(body: bytes, resource_version: int) -> bytes:
    """The stored GuestInfo bytes with `metadata.resourceVersion` set.

    The empty version is the first `"resourceVersion":""` of the bytes: metadata comes before status,
    and inside a JSON string every `"` is escaped, so guest-written text cannot contain that sequence.
    """
    return body.replace(_NO_VERSION, b'"resourceVersion":"%d"' % resource_version, 1)


#: The fields a field selector can name, and how to read each from a GuestInfo object.
FIELD_PATHS: dict[str, tuple[str, ...]] = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
    "status.nodeName": ("status", "nodeName"),
    "status.guestOSInfo.id": ("status", "guestOSInfo", "id"),
    "status.guestOSInfo.versionId": ("status", "guestOSInfo", "versionId"),
    "status.guestOSInfo.kernelRelease": ("status", "guestOSInfo", "kernelRelease"),
    "status.hostname": ("status", "hostname"),
    "status.agentVersion": ("status", "agentVersion"),
    "status.agentConnected": ("status", "agentConnected"),
}


def selectable_fields(obj: dict[str, Any]) -> dict[str, str]:
    """Every selectable field of a GuestInfo as the text a selector compares (absent = "")."""
    fields: dict[str, str] = {}
    for field, path in FIELD_PATHS.items():
        value: Any = obj
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
        if isinstance(value, bool):
            fields[field] = "true" if value else "false"
        else:
            fields[field] = "" if value is None else str(value)
    return fields


# -- Table output (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`) -------------------------

#: (name, type, format, description, priority): priority 1 columns show with `-o wide`.
COLUMNS: tuple[tuple[str, str, str, str, int], ...] = (
    ("Name", "string", "name", "Name of the VMI.", 0),
    ("Node", "string", "", "Node the VMI runs on.", 0),
    ("Agent", "string", "", "Whether the guest agent is connected.", 0),
    ("OS", "string", "", "The guest's operating system (PRETTY_NAME, or ID and VERSION_ID).", 0),
    ("Kernel", "string", "", "The guest's kernel release.", 0),
    ("Hostname", "string", "", "The guest's hostname.", 0),
    ("Users", "integer", "", "Users logged in to the guest.", 0),
    ("Age", "string", "", "Time since guestinfo first saw this VMI.", 0),
    ("Agent-Version", "string", "", "Version of the guest agent.", 1),
    ("Filesystems", "integer", "", "Filesystems the guest agent reports.", 1),
    ("IP", "string", "", "First IP address the guest reports.", 1),
)


def column_definitions() -> list[dict[str, Any]]:
    return [
        {"name": name, "type": kind, "format": fmt, "description": description, "priority": priority}
        for name, kind, fmt, description, priority in COLUMNS
    ]


def human_age(seconds: float) -> str:
    """Kubernetes' short duration (duration.HumanDuration): 45s, 3m12s, 5h, 3d4h, 2y."""
    seconds = int(max(seconds, 0))
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    if hours < 24 * 365 * 8:
        years = days // 365
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{days // 365}y"


def _created(obj: dict[str, Any]) -> float:
    text = obj.get("metadata", {}).get("creationTimestamp")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except (TypeError, ValueError):
        return time.time()


def table_cells(obj: dict[str, Any], now: float) -> list[Any]:
    """One Table row's cells for a GuestInfo object, in `COLUMNS` order."""
    status = obj.get("status", {})
    os_info = status.get("guestOSInfo", {})
    os_name = os_info.get("prettyName") or " ".join(
        part for part in (os_info.get("id", ""), os_info.get("versionId", "")) if part
    )
    addresses = [i.get("ipAddress") for i in status.get("interfaces", []) if i.get("ipAddress")]
    return [
        obj["metadata"]["name"],
        status.get("nodeName", ""),
        "Connected" if status.get("agentConnected") else "Disconnected",
        os_name or "<unknown>",
        os_info.get("kernelRelease") or "<unknown>",
        status.get("hostname") or "<unknown>",
        status.get("userCount", 0),
        human_age(now - _created(obj)),
        status.get("agentVersion") or "<unknown>",
        status.get("filesystemCount", 0),
        addresses[0] if addresses else "<none>",
    ]


def partial_metadata(obj: dict[str, Any], api_version: str = "meta.k8s.io/v1") -> dict[str, Any]:
    """The PartialObjectMetadata of a GuestInfo (what a Table row carries by default)."""
    return {"kind": "PartialObjectMetadata", "apiVersion": api_version, "metadata": obj["metadata"]}
