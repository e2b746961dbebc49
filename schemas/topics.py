"""Topic names and layout. Both raw topics and the merged topic share one partition count, so a
VMI's key lands on the same partition number everywhere (the join is co-partitioned)."""

from __future__ import annotations

from typing import Final

DOMAIN_TOPIC: Final = "guestinfo.domain.v1"
AGENT_TOPIC: Final = "guestinfo.agent.v1"
VMI_TOPIC: Final = "guestinfo.vmi.v1"
DEAD_LETTER_TOPIC: Final = "guestinfo.deadletter.v1"
#: Change events derived by the join (`schemas.vmi_events`), keyed by VMI like the others.
EVENTS_TOPIC: Final = "guestinfo.events.v1"

#: The header of a tombstone on the merged topic that names the uid of the VMI it removes (its value is
#: the uid, UTF-8; absent when the uid is unknown): a consumer that is behind can tell a tombstone of an
#: earlier VMI from the removal of the one that now has the name.
UID_HEADER: Final = "guestinfo-uid"

#: Default partition count of every guestinfo topic.
PARTITIONS: Final = 4

#: Topic configs: the merged topic is compacted (latest record per VMI, tombstones delete).
TOPIC_CONFIGS: Final[dict[str, dict[str, str]]] = {
    DOMAIN_TOPIC: {"cleanup.policy": "delete"},
    AGENT_TOPIC: {"cleanup.policy": "delete"},
    VMI_TOPIC: {"cleanup.policy": "compact"},
    DEAD_LETTER_TOPIC: {"cleanup.policy": "delete"},
    EVENTS_TOPIC: {"cleanup.policy": "delete"},
}
