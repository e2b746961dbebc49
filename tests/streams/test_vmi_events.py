"""Change events derived by the join, as timelines: raw reports with the events expected after each.

Each file under data/events/ is one rule: `steps` of `{"domain"|"agent": report, "events": [...]}`.
Reports name only what matters: `vmi` defaults to ns1/vm1 with uid u-1, `node` to node-a, and an agent
report is `connected` in session `s1` unless it says otherwise. Each expected event lists the fields it
must have (objects matched key by key); the events of a step come in the order listed.

Every timeline is also played in one batch and in batches of two, and played again from its start (a
replay after a crash): the events must be the same each time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.codec import encode
from schemas.events import AgentReport, DomainReport
from schemas.topics import AGENT_TOPIC, DOMAIN_TOPIC, EVENTS_TOPIC
from schemas.vmi_events import EVENT_TYPES, VMI_EVENTS
from streams.fold import fold_batch
from tests.schemas.topic_contracts import assert_valid

CASES = sorted((Path(__file__).parent / "data" / "events").glob("*.json"))
KEY = b"ns1/vm1"


@dataclass
class Message:
    topic: str
    value: bytes
    key: bytes = KEY
    partition: int = 0
    offset: int = 0


def message(step: dict[str, Any]) -> Message:
    if "domain" in step:
        report: dict[str, Any] = {"vmi": {"namespace": "ns1", "name": "vm1", "uid": "u-1"}, "node": "node-a",
                                  **step["domain"]}
        return Message(DOMAIN_TOPIC, encode(DomainReport.model_validate(report)))
    report = {"vmi": {"namespace": "ns1", "name": "vm1", "uid": "u-1"}, "node": "node-a", "connected": True,
              "session": "s1", **step["agent"]}
    return Message(AGENT_TOPIC, encode(AgentReport.model_validate(report)))


def play(messages: list[Message], batch: int) -> tuple[list[list[bytes]], bytes | None]:
    """The events of each batch of `batch` messages, folded in order; and the last state."""
    stored: bytes | None = None
    out = []
    for start in range(0, len(messages), batch):
        folded = fold_batch(stored, KEY, messages[start:start + batch])
        assert not folded.refused, folded.refused
        stored = folded.state if folded.state is not None else stored
        out.append(folded.events)
    return out, stored


def assert_contains(actual: Any, expected: Any, path: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{path}.{key} is missing in {actual!r}"
            assert_contains(actual[key], value, f"{path}.{key}")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
def test_events(case: Path) -> None:
    data = json.loads(case.read_text())
    messages = [message(step) for step in data["steps"]]
    per_step, last_state = play(messages, 1)
    for number, (step, events) in enumerate(zip(data["steps"], per_step, strict=True), 1):
        where = f"{data['rule']} — step {number}"
        decoded = [orjson.loads(event) for event in events]
        assert [event["type"] for event in decoded] == [event["type"] for event in step["events"]], where
        for event, expected, raw in zip(decoded, step["events"], events, strict=True):
            assert_contains(event, expected, where)
            model = VMI_EVENTS.validate_json(raw)
            assert VMI_EVENTS.dump_json(model) == raw, "the bytes sent are the contract model's, byte for byte"
            assert_valid(EVENTS_TOPIC, raw)
    everything = [event for events in per_step for event in events]
    for batch in (2, len(messages)):
        batched, state = play(messages, batch)
        assert [event for events in batched for event in events] == everything, f"in batches of {batch}"
        assert state == last_state
    again, _ = play(messages, 1)
    assert again == per_step, "a replay from the start tells the same events"
    redelivered = fold_batch(last_state, KEY, messages[-1:])
    assert redelivered.events == [], "a re-delivery tells nothing"


def test_every_event_type_has_a_timeline() -> None:
    told = {event["type"] for case in CASES for step in json.loads(case.read_text())["steps"]
            for event in step["events"]}
    assert told == set(EVENT_TYPES)
