"""Agent conditions of the VMI (docs/upstream-behaviour.md §2).

`AgentConnected` is present-only: `status "True"`, `lastProbeTime` = when the channel was first seen
connected, no reason; removed (never "False") when the channel is not connected.

`AgentVersionNotSupported` is evaluated only while the agent is connected and only once its
`guest-info` is known (upstream evaluates an empty cache and flaps, kubevirt#8994). Once set it keeps
its wording and is not removed on disconnect; it is removed when a connected agent is supported.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from typing import Any

from schemas.kubevirt import AGENT_CONNECTED, AGENT_VERSION_NOT_SUPPORTED
from streams.reports import AccessCredentialNeeds, AgentVersionInfo

#: A VMICondition's JSON (`schemas.kubevirt.VMICondition`): metav1.Time fields are null when unset.
Condition = dict[str, Any]

REQUIRED_BASIC_COMMANDS = (
    "guest-ping",
    "guest-get-time",
    "guest-info",
    "guest-shutdown",
    "guest-network-get-interfaces",
    "guest-get-fsinfo",
    "guest-get-host-name",
    "guest-get-users",
    "guest-get-timezone",
    "guest-get-osinfo",
)
#: KubeVirt's deprecated `supportedGuestAgentVersions` default, used when no command list is known.
SUPPORTED_VERSION_PATTERNS = ("2.*", "3.*", "4.*", "5.*")

#: With SSH keys propagated through the agent: all of one of these sets.
SSH_KEY_COMMANDS = (
    ("guest-ssh-get-authorized-keys", "guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys"),
    ("guest-exec-status", "guest-exec", "guest-file-open", "guest-file-close", "guest-file-read", "guest-file-write"),
)
#: With a user password propagated through the agent.
PASSWORD_COMMANDS = ("guest-set-user-password",)

REASON_BASIC = "This guest agent doesn't support required basic commands"
REASON_PUBLIC_KEY = "This guest agent doesn't support required public key commands"
REASON_PASSWORD = "This guest agent doesn't support required password commands"


def probe_time(timestamp: float) -> str:
    """metav1.Time as Kubernetes writes it: RFC 3339, whole seconds, UTC."""
    return _rfc3339(int(timestamp))


@functools.lru_cache(maxsize=4096)
def _rfc3339(seconds: int) -> str:
    """Cached (bounded): a VMI's condition times stay the same from record to record."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def agent_connected_condition(since: float) -> Condition:
    return {"type": AGENT_CONNECTED, "status": "True", "lastProbeTime": probe_time(since), "lastTransitionTime": None}


def unsupported_reason(info: AgentVersionInfo, needs: AccessCredentialNeeds | None = None) -> str | None:
    """Why this agent is not supported, as upstream words it; None when it is supported.

    A command counts only when listed with `enabled: true` (a blocked command is missing).
    """
    if info.supported_commands:
        enabled = {c.name for c in info.supported_commands if c.enabled}
        if not enabled.issuperset(REQUIRED_BASIC_COMMANDS):
            return REASON_BASIC
        if needs is not None and needs.ssh_public_keys and not any(enabled.issuperset(s) for s in SSH_KEY_COMMANDS):
            return REASON_PUBLIC_KEY
        if needs is not None and needs.user_password and not enabled.issuperset(PASSWORD_COMMANDS):
            return REASON_PASSWORD
        return None
    # Go's regexp.MatchString finds the pattern anywhere in the version string.
    if any(re.search(pattern, info.version) for pattern in SUPPORTED_VERSION_PATTERNS):
        return None
    return f"Guest agent version '{info.version}' is not supported"


def unsupported_condition(reason: str, since: float) -> Condition:
    return {"type": AGENT_VERSION_NOT_SUPPORTED, "status": "True", "lastProbeTime": probe_time(since),
            "lastTransitionTime": None, "reason": reason}


def conditions(connected_since: float | None, unsupported: tuple[str, float] | None) -> list[Condition]:
    """The agent conditions in KubeVirt's order: AgentConnected, then AgentVersionNotSupported."""
    result: list[Condition] = []
    if connected_since is not None:
        result.append(agent_connected_condition(connected_since))
    if unsupported is not None:
        result.append(unsupported_condition(*unsupported))
    return result
