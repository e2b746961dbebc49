"""Prometheus metrics of the join worker (default registry; served by `guestinfo join --metrics-listen`)."""

from __future__ import annotations

from prometheus_client import Counter

EVENTS = Counter("guestinfo_join_events_total", "Raw events read by the join, by topic.", ["topic"])
EMITTED = Counter("guestinfo_join_emitted_total", "Merged outputs sent, by kind (record, tombstone).", ["kind"])
DEAD_LETTERS = Counter(
    "guestinfo_join_dead_letters_total", "Raw events sent to the dead-letter topic, by reason kind.", ["reason"]
)
CHANGELOG_REFUSED = Counter(
    "guestinfo_join_changelog_refused_total",
    "States the table's changelog refused for good (written there without the agent's answers instead).",
)
VMI_EVENTS_SENT = Counter("guestinfo_join_change_events_total", "Change events sent to guestinfo.events.v1.")
VMI_EVENTS_REFUSED = Counter(
    "guestinfo_join_change_events_refused_total", "Change events the broker refused for good (logged, not sent)."
)
