"""Everything that lists guest-agent commands derives from `schemas.agent_commands.AGENT_COMMANDS`:
the report's fields, the collector's intervals, conversions and limits, the join's fields, and the
simulated guest agent."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest

from collectors.agent_replies import CONVERTERS, convert
from collectors.config import DEFAULT_POLL_INTERVALS
from guestinfo.lab.simulation import COMMANDS, GuestModel, fleet_spec
from schemas import events
from schemas.agent_commands import AGENT_COMMANDS, AgentCommand
from streams import reports
from streams.join import AGENT_FIELDS

#: AgentReport fields that are not a command's answer.
BOOKKEEPING = {"vmi", "node", "observed_at", "order", "connected", "session", "errors"}
IDS = [command.name for command in AGENT_COMMANDS]


def test_the_reports_answer_fields_are_the_registrys_with_its_json_names() -> None:
    answers = {name: field for name, field in events.AgentReport.model_fields.items() if name not in BOOKKEEPING}
    assert list(answers) == [command.field for command in AGENT_COMMANDS], "same fields, in polling order"
    for command in AGENT_COMMANDS:
        assert answers[command.field].alias == command.key
        assert answers[command.field].default is None, "an answer not given in a tick is null"
    struct_fields = {field.name: field.encode_name for field in msgspec.structs.fields(reports.AgentReport)}
    assert {command.field: struct_fields[command.field] for command in AGENT_COMMANDS} == AGENT_FIELDS


def test_the_collector_polls_and_converts_exactly_the_registrys_commands() -> None:
    assert list(DEFAULT_POLL_INTERVALS.items()) == [(command.name, command.interval) for command in AGENT_COMMANDS]
    assert [(name, field) for name, (field, _) in CONVERTERS.items()] == [(c.name, c.field) for c in AGENT_COMMANDS]
    assert AGENT_FIELDS == {command.field: command.key for command in AGENT_COMMANDS}


def simulated_guest() -> GuestModel:
    return GuestModel.create(fleet_spec(1, 1, seed=3)[0], seed=3)


@pytest.mark.parametrize("command", AGENT_COMMANDS, ids=IDS)
def test_the_simulated_agent_answers_each_command_as_the_collector_reads_it(command: AgentCommand) -> None:
    assert command.name in COMMANDS
    value = convert(command.name, simulated_guest().reply(command.name))
    report = events.AgentReport(vmi=events.VMIRef(namespace="ns", name="vm"), node="n", observed_at=1.0,
                                connected=True, **{command.field: value})
    assert getattr(report, command.field) is not None


def _grown(reply: Any, command: AgentCommand, count: int, nested: int | None) -> Any:
    """The simulated reply with its list (or its supported commands) grown to `count` distinct items,
    and each item's nested list (disks, addresses) to `nested`."""
    items = reply["supported_commands"] if isinstance(reply, dict) else reply
    first = copy.deepcopy(items[-1])
    if nested is not None:
        key = "disk" if "disk" in first else "ip-addresses"
        first[key] = [first[key][0]] * nested
    grown = [{**first, **{k: f"{first[k]}-{i}" for k in ("user", "name") if k in first}} for i in range(count)]
    if isinstance(reply, dict):
        return {**reply, "supported_commands": grown}
    return grown


LISTS = [command for command in AGENT_COMMANDS if command.max_items is not None]


@pytest.mark.parametrize("command", LISTS, ids=[command.name for command in LISTS])
def test_list_answers_are_cut_at_the_registrys_bounds_which_the_contract_accepts(command: AgentCommand) -> None:
    assert command.max_items is not None
    reply = simulated_guest().reply(command.name)
    over = None if command.max_nested is None else command.max_nested + 1
    value = convert(command.name, _grown(reply, command, command.max_items + 1, over))
    items = value.supported_commands if command.field == "info" else value
    assert len(items) == command.max_items
    if command.max_nested is not None:
        nested = items[0].disk if command.field == "filesystems" else items[0].ip_addresses
        assert len(nested) == command.max_nested
    report = events.AgentReport(vmi=events.VMIRef(namespace="ns", name="vm"), node="n", observed_at=1.0,
                                connected=True, **{command.field: value})
    assert getattr(report, command.field) is not None, "what the collector keeps, the contract takes"


def test_the_observed_keys_keep_their_order() -> None:
    """The order of the registry is the order of a record's `observed` keys, which its digest covers:
    reordering the commands would make every VMI's record look changed once (a new revision each)."""
    assert [command.key for command in AGENT_COMMANDS] == [
        "info", "os", "hostname", "timezone", "users", "filesystems", "interfaces", "fsFreezeStatus"]
