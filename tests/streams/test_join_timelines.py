"""The per-VMI join as timelines of raw events with the expected emission after each step.

Each file under data/timelines/ is one rule: `steps` of `{"domain"|"agent": report, "expect": ...}`.
`expect.emit` is `record`, `tombstone` or `none`; `expect.record` lists fields the emitted record must
have (objects are matched key by key, lists and scalars exactly; the value "<absent>" means the key
must not be there, e.g. an omitted empty hostname).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import DecodeError, encode
from schemas.events import AgentReport, DomainReport
from schemas.topics import AGENT_TOPIC, DOMAIN_TOPIC
from streams.app import apply_event, fold
from streams.join import VMIState

ABSENT = "<absent>"
CASES = sorted((Path(__file__).parent / "data" / "timelines").glob("*.json"))


def assert_contains(actual: Any, expected: Any, path: str = "record") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        for key, value in expected.items():
            if value == ABSENT:
                assert key not in actual, f"{path}.{key} should be absent, is {actual.get(key)!r}"
                continue
            assert key in actual, f"{path}.{key} is missing in {actual!r}"
            assert_contains(actual[key], value, f"{path}.{key}")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_timeline(case: Path) -> None:
    data = json.loads(case.read_text())
    stored: bytes | None = None
    for number, step in enumerate(data["steps"], 1):
        if "domain" in step:
            topic, value = DOMAIN_TOPIC, encode(DomainReport.model_validate(step["domain"]))
        else:
            topic, value = AGENT_TOPIC, encode(AgentReport.model_validate(step["agent"]))
        result = fold(stored, topic, value)
        expect = step["expect"]
        emitted = "record" if result.record is not None else "tombstone" if result.tombstone else "none"
        assert emitted == expect["emit"], f"{data['rule']} — step {number}"
        if result.record is not None:
            assert result.record_bytes() == encode(result.record), "the bytes sent are the record's JSON"
        if "record" in expect:
            assert result.record is not None
            assert_contains(json.loads(encode(result.record)), expect["record"], f"step {number}")
        stored = None if result.state is None else encode(result.state)


def test_state_round_trips_through_the_changelog_encoding() -> None:
    case = json.loads((Path(__file__).parent / "data" / "timelines" / "domain_then_agent.json").read_text())
    result = fold(None, DOMAIN_TOPIC, encode(DomainReport.model_validate(case["steps"][1]["domain"])))
    assert result.state is not None
    assert VMIState.model_validate_json(encode(result.state)) == result.state


def test_unreadable_stored_state_starts_afresh() -> None:
    """A state that no longer decodes must not wedge the VMI: the next event rebuilds it."""
    case = json.loads((Path(__file__).parent / "data" / "timelines" / "domain_then_agent.json").read_text())
    domain = encode(DomainReport.model_validate(case["steps"][1]["domain"]))
    result = fold(b'{"revision": "garbage"}', DOMAIN_TOPIC, domain)
    assert result.record is not None and result.record.revision == 1


def test_a_report_under_another_vmis_key_is_refused() -> None:
    """The key routes the event to a VMI's state: a report of another VMI must not land there."""
    case = json.loads((Path(__file__).parent / "data" / "timelines" / "domain_then_agent.json").read_text())
    domain = encode(DomainReport.model_validate(case["steps"][1]["domain"]))
    with pytest.raises(DecodeError, match="is not the report's VMI"):
        apply_event(VMIState(), DOMAIN_TOPIC, domain, key=b"other/vmi")
    assert apply_event(VMIState(), DOMAIN_TOPIC, domain, key=b"ns1/vm1").record is not None
