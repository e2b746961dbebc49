"""The guest-agent commands the pipeline polls: the one registry.

Each command fills one field of `schemas.events.AgentReport`, is polled at its default interval
(upstream virt-launcher's: docs/upstream-behaviour.md §3), and has its limits on what the guest may
say. Everything that lists commands derives from `AGENT_COMMANDS`: the collector's poll intervals and
reply conversion, the join's fields and observation keys, the simulated guest agent. Order is polling
order, and the order of a record's `observed` keys: a change of order makes every record look changed
once. `tests/schemas/test_agent_commands.py` holds each of them, and that order, to this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic.alias_generators import to_camel

from schemas.limits import MAX_ADDRESSES, MAX_DISKS, MAX_ITEMS, MAX_STRING


@dataclass(frozen=True, slots=True)
class AgentCommand:
    """One polled guest-agent command."""

    #: The QGA command ("guest-get-users").
    name: str
    #: The `AgentReport` field its answer fills (Python name).
    field: str
    #: Seconds between two polls once warmed up.
    interval: float
    #: Most items kept from a list answer (None: not a list); longer lists are cut to their first items.
    max_items: int | None = None
    #: Most nested items kept per item (addresses per interface, disks per filesystem).
    max_nested: int | None = None
    #: Longest string kept anywhere in the answer.
    max_string: int = MAX_STRING

    @property
    def key(self) -> str:
        """Its field's name in the report's JSON and in `VMIRecord.observed` (camelCase)."""
        return to_camel(self.field)


AGENT_COMMANDS: tuple[AgentCommand, ...] = (
    AgentCommand("guest-info", "info", 300.0, max_items=MAX_ITEMS),
    AgentCommand("guest-get-osinfo", "os", 120.0),
    AgentCommand("guest-get-host-name", "hostname", 120.0),
    AgentCommand("guest-get-timezone", "timezone", 120.0),
    AgentCommand("guest-get-users", "users", 10.0, max_items=MAX_ITEMS),
    AgentCommand("guest-get-fsinfo", "filesystems", 300.0, max_items=MAX_ITEMS, max_nested=MAX_DISKS),
    AgentCommand("guest-network-get-interfaces", "interfaces", 120.0, max_items=MAX_ITEMS,
                 max_nested=MAX_ADDRESSES),
    AgentCommand("guest-fsfreeze-status", "fs_freeze_status", 5.0),
)

BY_FIELD: dict[str, AgentCommand] = {command.field: command for command in AGENT_COMMANDS}
