"""Prometheus metrics of the collectors stage, on prometheus_client's default registry.

Names follow `guestinfo_collector_<noun>_<unit>` (counters get prometheus_client's `_total`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from collectors.errors import (
    AgentCommandError,
    AgentProtocolError,
    AgentReplyError,
    AgentTimeout,
    AgentUnavailable,
)

AGENT_ERRORS = Counter(
    "guestinfo_collector_agent_errors",
    "Failed guest-agent calls, by command and kind (timeout, unavailable, command, protocol, reply).",
    ["command", "kind"],
)
AGENT_STRAY_LINES = Counter(
    "guestinfo_collector_agent_stray_lines",
    "Lines read from an agent socket that answered no request of ours, by reason "
    "(not_json: not a JSON object; other_id; no_id; stale_sync: an earlier guest-sync's reply).",
    ["reason"],
)
AGENT_CALL_DURATION = Histogram(
    "guestinfo_collector_agent_call_duration_seconds",
    "Time of one guest-agent call (guest-sync included), successful or not, by command.",
    ["command"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REPORTS_PUBLISHED = Counter(
    "guestinfo_collector_reports_published",
    "Reports delivered to Kafka, by topic.",
    ["topic"],
)
REPORTS_UNPUBLISHED = Counter(
    "guestinfo_collector_reports_unpublished",
    "Reports that could not be delivered to Kafka, by topic (removals are retried next tick).",
    ["topic"],
)
REPORTS_TRIMMED = Counter(
    "guestinfo_collector_reports_trimmed",
    "Agent reports whose lists were cut to fit the byte budget of one report.",
)
POLLS_SKIPPED = Counter(
    "guestinfo_collector_polls_skipped",
    "Agent polls not started because the VMI's previous poll was still running.",
)
POLLS_BACKED_OFF = Counter(
    "guestinfo_collector_polls_backed_off",
    "Agent polls not started because the VMI's agent timed out in a recent poll (per-VMI back-off).",
)
VMIS_BACKED_OFF = Gauge(
    "guestinfo_collector_vmis_backed_off",
    "VMIs whose agent is in back-off after a timed-out poll.",
)
VMIS_TRACKED = Gauge(
    "guestinfo_collector_vmis_tracked",
    "KubeVirt domains seen on this node in the last tick.",
)


def error_kind(exc: BaseException) -> str:
    """The `kind` label of an agent error."""
    if isinstance(exc, AgentTimeout):
        return "timeout"
    if isinstance(exc, AgentUnavailable):
        return "unavailable"
    if isinstance(exc, AgentCommandError):
        return "command"
    if isinstance(exc, AgentReplyError):
        return "reply"
    if isinstance(exc, AgentProtocolError):
        return "protocol"
    return "other"
BUFFERED_VMIS = Gauge(
    "guestinfo_collector_buffered_vmis",
    "VMIs whose latest state waits to be published (one entry per VMI at most; removals among them).",
)
FULL_RESYNCS = Counter(
    "guestinfo_collector_full_resyncs",
    "Full states republished, by reason (periodic: one VMI's resync_interval; reconnect: every VMI, once "
    "Kafka is reachable again).",
    ["reason"],
)
REPORTS_UNCHANGED = Counter(
    "guestinfo_collector_reports_unchanged",
    "Reports not published because nothing in them changed since the last one, by kind (domain, agent).",
    ["kind"],
)
LAUNCHERS = Gauge(
    "guestinfo_collector_launchers",
    "virt-launcher pods followed on this node (with --launcher-pods-dir): one libvirt daemon each.",
)
LAUNCHERS_REACHABLE = Gauge(
    "guestinfo_collector_launchers_reachable",
    "Followed virt-launcher daemons connected: their event connection is up (without events: their last "
    "listing worked).",
)
LAST_ROUND = Gauge(
    "guestinfo_collector_last_round_timestamp_seconds",
    "When the collector's loop last finished a round (its /healthz fails when that is long ago).",
)
