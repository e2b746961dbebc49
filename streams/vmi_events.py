"""Change events (`guestinfo.events.v1`, contract `schemas.vmi_events`) from a VMI's consecutive states.

`changes(before, after)` is called for every new revision the join emits, with the state before the
event that made it: events are a function of the revisions, never of how events were batched, so a
replay after a crash emits the same events (consumers drop duplicates by uid, revision, type and
subject), and a re-delivery, a resync or an unchanged report (no new revision) emits none.

What counts as a change:
- Only within one VMI (one uid; a uid not known yet is the same VMI, as in the join). A VMI seen for
  the first time, a new uid under the name, or a VMI back after its removal has no history: its first
  revision is a baseline. Only `AgentConnected` is told then, when the agent is already connected.
- An agent answer is compared with the last answer of the same kind the VMI's agent gave, in this
  session or an earlier one (`last_answers`; `remembered` keeps `VMIState.known` at every revision): a reboot's
  logouts are told when the new session's user list comes, however many reports without answers (the
  agent away, a first poll that has not asked everything) came in between. A kind never answered
  before for this VMI is a baseline: nothing is told.
- `GuestRebooted`: the agent answers in a new session on the node where it last answered (a domain
  listed before it ran has a session nobody answered in, which does not count). A migration changes the
  node, and is not one.
- Filesystems: each one's usage level against `USAGE_THRESHOLDS`; a level crossed is told once per
  threshold crossed. Pseudo filesystems (`is_pseudo_filesystem`) and those of zero size are left out.
  Addresses: link-local ones are left out, as in the VMI's status.

Events are built as JSON dicts in the contract's key order (`tests/streams/test_vmi_events.py` holds
them to the models byte for byte).
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
from msgspec.structs import replace

from schemas.vmi_events import USAGE_THRESHOLDS, is_pseudo_filesystem
from streams.interfaces import is_link_local_or_invalid
from streams.join import AGENT_FIELDS, VMIState, merge_agent, other_vmi
from streams.reports import AgentReport, FileSystem, GuestInterface, GuestOSInfo, GuestOSUser

JSON = dict[str, Any]


def changes(before: VMIState, after: VMIState, observed_at: float) -> list[JSON]:
    """The events of `after`'s revision (observed at `observed_at`), given the VMI's state `before` it."""
    domain = after.domain
    if domain is None:
        return []
    base = {"vmi": {"namespace": domain.vmi.namespace, "name": domain.vmi.name, "uid": domain.vmi.uid},
            "node": domain.node, "revision": after.revision, "observedAt": observed_at}
    previous = before.domain
    if previous is None or before.removed_at is not None or before.revision == 0 \
            or other_vmi(previous.vmi.uid, domain.vmi.uid):
        return [_event("AgentConnected", base)] if domain.agent_connected else []
    events: list[JSON] = []
    if domain.agent_connected != previous.agent_connected:
        events.append(_event("AgentConnected" if domain.agent_connected else "AgentDisconnected", base))
    old, new = last_answers(before), after.agent
    if old is None or new is None or not _lived(new) or other_vmi(new.vmi.uid, domain.vmi.uid):
        return events
    if new.node == old.node and new.session != old.session:
        events.append(_event("GuestRebooted", base))
    if old.os is not None and new.os is not None and old.os != new.os:
        events += _os_changed(base, msgspec.to_builtins(old.os), msgspec.to_builtins(new.os))
    if old.hostname is not None and new.hostname is not None and old.hostname != new.hostname:
        events.append(_event("HostnameChanged", base, before=old.hostname, after=new.hostname))
    if old.users is not None and new.users is not None and old.users != new.users:
        events += _users(base, old.users, new.users)
    if old.interfaces is not None and new.interfaces is not None and old.interfaces != new.interfaces:
        events += _addresses(base, old.interfaces, new.interfaces)
    if old.filesystems is not None and new.filesystems is not None and old.filesystems != new.filesystems:
        events += _filesystems(base, old.filesystems, new.filesystems)
    return events


#: The agent answers the events compare.
_COMPARED = ("os", "hostname", "users", "interfaces", "filesystems")


def last_answers(state: VMIState) -> AgentReport | None:
    """The latest answer of each kind the VMI's agent gave, in its session now or an earlier one, with
    the session and node it last answered in: `state.known` when the agent now lacks some of them (or
    has not answered), else the agent itself."""
    if state.known is not None:
        return state.known
    agent = state.agent
    return agent if agent is not None and _lived(agent) else None


def remembered(before: VMIState, after: VMIState) -> VMIState:
    """`after` with `known` as of its revision (see `last_answers`): kept only while the agent now does not
    tell everything it told before (a new session, the agent away), so a steady VMI's state carries no
    second copy of its answers. None after a removal or for another uid."""
    domain = after.domain
    if domain is None or after.removed_at is not None:
        return after if after.known is None else replace(after, known=None)
    base = last_answers(before)
    if base is not None and (before.removed_at is not None or other_vmi(base.vmi.uid, domain.vmi.uid)):
        base = None
    agent = after.agent
    if agent is None or not _lived(agent) or other_vmi(agent.vmi.uid, domain.vmi.uid):
        known = None if base is None else _trimmed(base)
    elif base is None or all(getattr(agent, name) is not None or getattr(base, name) is None for name in _COMPARED):
        known = None  # the agent tells all there is to compare with
    else:
        known = _trimmed(merge_agent(base, agent))
    return after if known == after.known else replace(after, known=known)


def _trimmed(agent: AgentReport) -> AgentReport:
    """Only what the events compare: not the agent's version, time zone, freeze status or disks."""
    if agent.info is None and agent.timezone is None and agent.fs_freeze_status is None and not agent.errors:
        return agent
    filesystems = None if agent.filesystems is None else [replace(fs, disk=[]) for fs in agent.filesystems]
    return replace(agent, info=None, timezone=None, fs_freeze_status=None, errors={}, filesystems=filesystems)


def _lived(agent: AgentReport) -> bool:
    """Whether an agent session was one: the agent answered in it (a domain seen before it ran has a
    session in which nothing ever answered)."""
    return bool(agent.session) and (agent.connected or any(getattr(agent, name) is not None for name in AGENT_FIELDS))


def _event(kind: str, base: JSON, subject: str = "", **fields: Any) -> JSON:
    return {"type": kind, **base, "subject": subject, **fields}


def _os_changed(base: JSON, old: JSON, new: JSON) -> list[JSON]:
    changed = {name: {"before": old.get(name, ""), "after": new.get(name, "")}
               for name in _OS_FIELDS if old.get(name, "") != new.get(name, "")}
    return [_event("GuestOSChanged", base, changes=changed)] if changed else []


#: `guestOSInfo`'s JSON names, in the contract's order.
_OS_FIELDS = tuple(field.encode_name for field in msgspec.structs.fields(GuestOSInfo))


def _users(base: JSON, old: list[GuestOSUser], new: list[GuestOSUser]) -> list[JSON]:
    before = {(user.domain, user.user_name) for user in old}
    after = {(user.domain, user.user_name) for user in new}
    return ([_user("UserLoggedIn", base, domain, name) for domain, name in sorted(after - before)]
            + [_user("UserLoggedOut", base, domain, name) for domain, name in sorted(before - after)])


def _user(kind: str, base: JSON, domain: str, name: str) -> JSON:
    return _event(kind, base, f"{domain}\\{name}" if domain else name, userName=name, domain=domain)


def _addresses(base: JSON, old: list[GuestInterface], new: list[GuestInterface]) -> list[JSON]:
    before, after = _address_set(old), _address_set(new)
    return ([_address("AddressAdded", base, *pair) for pair in sorted(after - before)]
            + [_address("AddressRemoved", base, *pair) for pair in sorted(before - after)])


def _address_set(interfaces: list[GuestInterface]) -> set[tuple[str, str]]:
    return {(interface.name, address.address) for interface in interfaces for address in interface.ip_addresses
            if not is_link_local_or_invalid(address.address)}


def _address(kind: str, base: JSON, interface: str, address: str) -> JSON:
    return _event(kind, base, f"{interface}/{address}", interfaceName=interface, ipAddress=address)


def _filesystems(base: JSON, old: list[FileSystem], new: list[FileSystem]) -> list[JSON]:
    levels = {fs.mount_point: _level(fs) for fs in old if _watched(fs.total_bytes, fs.file_system_type, fs.mount_point)}
    events = []
    for fs in {fs.mount_point: fs for fs in new}.values():
        was = levels.get(fs.mount_point)
        if was is None or not _watched(fs.total_bytes, fs.file_system_type, fs.mount_point):
            continue
        now = _level(fs)
        if now == was:
            continue
        crossed = (USAGE_THRESHOLDS[was:now] if now > was else tuple(reversed(USAGE_THRESHOLDS[now:was])))
        kind = "FilesystemUsageHigh" if now > was else "FilesystemUsageNormal"
        events += [_event(kind, base, f"{fs.mount_point}@{threshold}", diskName=fs.disk_name,
                          mountPoint=fs.mount_point, fileSystemType=fs.file_system_type, usedBytes=fs.used_bytes,
                          totalBytes=fs.total_bytes, threshold=threshold) for threshold in crossed]
    return events


def _watched(total_bytes: int, file_system_type: str, mount_point: str) -> bool:
    return total_bytes > 0 and not _pseudo(file_system_type, mount_point)


@functools.lru_cache(maxsize=4096)
def _pseudo(file_system_type: str, mount_point: str) -> bool:
    """`is_pseudo_filesystem`, cached (bounded): the same filesystems come back in every report."""
    return is_pseudo_filesystem(file_system_type, mount_point)


def _level(fs: FileSystem) -> int:
    """How many usage thresholds the filesystem is at or over."""
    scaled, level = fs.used_bytes * 100, 0
    for threshold in USAGE_THRESHOLDS:
        if scaled >= threshold * fs.total_bytes:
            level += 1
    return level
