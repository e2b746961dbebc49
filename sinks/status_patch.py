"""Pure computation of the VMI `.status` JSON patch (RFC 6902) for a record or a tombstone.

The pipeline owns `status.guestOSInfo`, `status.interfaces` (except each entry's
`podInterfaceName`, owned by virt-controller) and the `AgentConnected` condition. The patch is
applied to the main resource (the VMI CRD has no /status subresource) and starts with a `test` of
`/metadata/resourceVersion`, so a concurrent writer makes it fail (422) instead of being overwritten.
"""

from __future__ import annotations

from typing import Any

from schemas.kubevirt import AGENT_CONNECTED, AGENT_VERSION_NOT_SUPPORTED
from schemas.vmi import VMIRecord

JsonObject = dict[str, Any]
#: The conditions this pipeline owns (docs/upstream-behaviour.md §2); all others are left as they are.
OWNED_CONDITIONS = (AGENT_CONNECTED, AGENT_VERSION_NOT_SUPPORTED)
Patch = list[JsonObject]


def _as_list(value: Any) -> list[JsonObject]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def desired_interfaces(record: VMIRecord, current: list[JsonObject]) -> list[JsonObject]:
    """The record's interfaces, keeping `podInterfaceName` of the current entry with the same name."""
    pod_names = {
        item.get("name"): item["podInterfaceName"]
        for item in current
        if item.get("name") and item.get("podInterfaceName")
    }
    result: list[JsonObject] = []
    for iface in record.status.interfaces:
        data: JsonObject = iface.model_dump(mode="json")
        name = data.get("name")
        if name in pod_names:
            data["podInterfaceName"] = pod_names[name]
        result.append(data)
    return result


def desired_conditions(record: VMIRecord | None, current: list[JsonObject]) -> list[JsonObject]:
    """Current conditions minus the agent conditions we own, plus the record's (none for a tombstone).

    A condition already present keeps its `lastProbeTime`, so an unchanged state is no write.
    """
    existing = {c.get("type"): c for c in current if c.get("type") in OWNED_CONDITIONS}
    result = [c for c in current if c.get("type") not in OWNED_CONDITIONS]
    if record is None:
        return result
    for ours in record.status.conditions:
        if ours.type not in OWNED_CONDITIONS:
            continue
        data: JsonObject = ours.model_dump(mode="json")
        before = existing.get(ours.type)
        if before is not None and "lastProbeTime" in before:
            data["lastProbeTime"] = before["lastProbeTime"]
        result.append(data)
    return result


def _set(status: JsonObject, field: str, value: Any) -> JsonObject:
    op = "replace" if field in status else "add"
    return {"op": op, "path": f"/status/{field}", "value": value}


def _with_test(vmi: JsonObject, ops: Patch) -> Patch:
    """Guard the ops: the object must still be the version read, and the same VMI (uid), not a new
    one created under the same name since."""
    metadata = vmi.get("metadata", {})
    tests = [
        {"op": "test", "path": f"/metadata/{field}", "value": metadata[field]}
        for field in ("uid", "resourceVersion")
        if metadata.get(field) is not None
    ]
    return [*tests, *ops] if ops else ops


def _patch(vmi: JsonObject, desired: JsonObject) -> Patch:
    status = vmi.get("status")
    if not isinstance(status, dict):
        return _with_test(vmi, [{"op": "add", "path": "/status", "value": desired}])
    ops = [_set(status, field, value) for field, value in desired.items() if status.get(field) != value]
    return _with_test(vmi, ops)


def status_patch(vmi: JsonObject, record: VMIRecord | None, removed_uid: str = "") -> Patch:
    """The JSON patch bringing `vmi` to the record's status; `[]` when nothing would change.

    `record` None (tombstone) only removes our agent conditions, unless the tombstone names another
    uid (`removed_uid`): it removed an earlier VMI with this name, not this one.
    """
    status = vmi.get("status") if isinstance(vmi.get("status"), dict) else {}
    assert isinstance(status, dict)
    conditions = _as_list(status.get("conditions"))
    uid = vmi.get("metadata", {}).get("uid")
    if record is None:
        if removed_uid and uid and removed_uid != uid:
            return []
        if not any(c.get("type") in OWNED_CONDITIONS for c in conditions):
            return []
        return _patch(vmi, {"conditions": desired_conditions(None, conditions)})
    if record.vmi.uid and uid and record.vmi.uid != uid:
        return []  # the record is of an earlier VMI with this name
    desired: JsonObject = {
        "guestOSInfo": record.status.guest_os_info.model_dump(mode="json"),
        "interfaces": desired_interfaces(record, _as_list(status.get("interfaces"))),
        "conditions": desired_conditions(record, conditions),
    }
    return _patch(vmi, desired)
