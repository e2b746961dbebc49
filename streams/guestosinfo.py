"""The `guestosinfo` body and the full user and filesystem lists, from the agent's latest answers."""

from __future__ import annotations

from schemas.events import AgentReport, GuestTimezone
from schemas.kubevirt import FileSystemInfo, GuestAgentInfo
from schemas.limits import GUESTOSINFO_LIST_LIMIT


def format_timezone(timezone: GuestTimezone | None) -> str:
    """Go's `"%s, %d"` of zone and offset; `", 0"` when the agent never answered (as upstream)."""
    if timezone is None:
        return ", 0"
    return f"{timezone.zone}, {timezone.offset}"


def guest_agent_info(agent: AgentReport | None) -> GuestAgentInfo:
    """The guestosinfo body: userList and fsInfo.disks are the first 10 in agent order
    (docs/upstream-behaviour.md §4)."""
    if agent is None:
        return GuestAgentInfo(timezone=format_timezone(None))
    info = agent.info
    users = agent.users or []
    filesystems = agent.filesystems or []
    return GuestAgentInfo(
        guest_agent_version=info.version if info else "",
        supported_commands=info.supported_commands if info else [],
        hostname=agent.hostname or "",
        os=agent.os if agent.os is not None else GuestAgentInfo().os,
        timezone=format_timezone(agent.timezone),
        user_list=users[:GUESTOSINFO_LIST_LIMIT],
        fs_info=FileSystemInfo(disks=filesystems[:GUESTOSINFO_LIST_LIMIT] or None),
        fs_freeze_status=agent.fs_freeze_status or "",
    )
