"""The merged record's JSON, built straight from the join's decoded state: no model round trip.

The contract is `schemas.vmi.VMIRecord`: the builders here write exactly what that model writes, key
order and Go's omitempty included (`schemas.kubevirt`), so the bytes on the topic are the model's.
`tests/streams/test_join_timelines.py` holds every record of every timeline to it: decoded with the
model and encoded again, a record must come back byte for byte.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import orjson

from schemas.limits import GUESTOSINFO_LIST_LIMIT
from streams.reports import (
    AgentReport,
    AgentVersionInfo,
    FileSystem,
    GuestOSUser,
    GuestTimezone,
    VMIRef,
)

JSON = dict[str, Any]

def user(entry: GuestOSUser) -> JSON:
    out: JSON = {"userName": entry.user_name}
    if entry.domain:
        out["domain"] = entry.domain
    if entry.login_time:
        # Go writes a whole float64 without a fraction (1718000000, not 1718000000.0).
        login = entry.login_time
        out["loginTime"] = int(login) if login.is_integer() else login
    return out


def filesystem(entry: FileSystem) -> JSON:
    out: JSON = {
        "diskName": entry.disk_name, "mountPoint": entry.mount_point, "fileSystemType": entry.file_system_type,
        "usedBytes": entry.used_bytes, "totalBytes": entry.total_bytes,
    }
    if entry.disk:
        out["disk"] = [{"serial": d.serial, "busType": d.bus_type} if d.serial else {"busType": d.bus_type}
                       for d in entry.disk]
    return out


def format_timezone(timezone: GuestTimezone | None) -> str:
    """Go's `"%s, %d"` of zone and offset; `", 0"` when the agent never answered (as upstream)."""
    if timezone is None:
        return ", 0"
    return f"{timezone.zone}, {timezone.offset}"


def guest_agent_info(agent: AgentReport | None, users: list[JSON], filesystems: list[JSON]) -> JSON:
    """The guestosinfo body, given the agent's full user and filesystem lists as JSON: userList and
    fsInfo.disks are the first 10 in agent order (docs/upstream-behaviour.md §4)."""
    if agent is None:
        return {"os": {}, "timezone": format_timezone(None), "fsInfo": {"disks": None}}
    info: AgentVersionInfo | None = agent.info
    out: JSON = {}
    if info is not None and info.version:
        out["guestAgentVersion"] = info.version
    if info is not None and info.supported_commands:
        out["supportedCommands"] = msgspec.to_builtins(info.supported_commands)
    if agent.hostname:
        out["hostname"] = agent.hostname
    out["os"] = msgspec.to_builtins(agent.os) if agent.os is not None else {}
    out["timezone"] = format_timezone(agent.timezone)
    if users:
        out["userList"] = users[:GUESTOSINFO_LIST_LIMIT]
    out["fsInfo"] = {"disks": filesystems[:GUESTOSINFO_LIST_LIMIT] or None}
    if agent.fs_freeze_status:
        out["fsFreezeStatus"] = agent.fs_freeze_status
    return out


def record_content(vmi: VMIRef, node: str, agent_connected: bool, interfaces: list[JSON],
                   conditions: list[JSON], agent: AgentReport | None, observed: dict[str, float]) -> JSON:
    """The record without its bookkeeping (revision, observedAt), keys in the model's order."""
    users = [user(u) for u in agent.users or ()] if agent is not None else []
    filesystems = [filesystem(f) for f in agent.filesystems or ()] if agent is not None else []
    info = guest_agent_info(agent, users, filesystems)
    return {
        "vmi": {"namespace": vmi.namespace, "name": vmi.name, "uid": vmi.uid},
        "node": node,
        "agentConnected": agent_connected,
        "status": {"guestOSInfo": info["os"], "interfaces": interfaces, "conditions": conditions},
        "guestAgentInfo": info,
        "users": users,
        "filesystems": filesystems,
        "observed": observed,
    }


class Encoded:
    """A record's content serialised once: its digest (what it says, leaving out its revision and
    observation time) and, on demand, the record's JSON with those two in the model's places."""

    __slots__ = ("_head", "_tail", "digest")

    def __init__(self, content: JSON) -> None:
        self._head = orjson.dumps({"vmi": content["vmi"], "node": content["node"]})
        rest = {key: value for key, value in content.items() if key not in ("vmi", "node")}
        self._tail = orjson.dumps(rest)
        # The bytes of orjson.dumps(content), without building them twice.
        self.digest = hashlib.blake2b(self._head[:-1] + b"," + self._tail[1:], digest_size=16).hexdigest()

    def record(self, revision: int, observed_at: float) -> bytes:
        bookkeeping = orjson.dumps({"revision": revision, "observedAt": observed_at})
        return self._head[:-1] + b"," + bookkeeping[1:-1] + b"," + self._tail[1:]
