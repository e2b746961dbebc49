"""The per-VMI join as timelines of raw events with the expected emission after each step.

Each file under data/timelines/ is one rule: `steps` of `{"domain"|"agent": report, "expect": ...}`.
`expect.emit` is `record`, `tombstone` or `none`; `expect.record` lists fields the emitted record must
have (objects are matched key by key, lists and scalars exactly; the value "<absent>" means the key
must not be there, e.g. an omitted empty hostname).

A step `{"tick": {"domain": report, "agent": report}, "expect": ...}` is one collector tick: its two
reports, which the join may read in either order, in two batches or in one. A timeline with ticks runs
once per order (`ORDERS`) and each tick's `expect` holds for the last output of the tick in every
order; `expectAgentAlone` (optional) is what the agent report alone emits when it is read first. The
revisions of such a timeline differ by order (a tick read domain first emits twice), so its
expectations name none; every run checks that revisions only grow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.codec import DecodeError, decode, encode
from schemas.events import AgentReport, DomainReport, vmi_key
from schemas.topics import AGENT_TOPIC, DOMAIN_TOPIC, VMI_TOPIC
from schemas.vmi import VMIRecord
from streams.fold import apply_event, fold, fold_batch
from streams.join import STATES, JoinResult, VMIState, encode_state
from tests.schemas.topic_contracts import assert_valid

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


#: How a tick's two reports may reach the join: in two batches, either first; or in one batch, either first.
ORDERS = ("agent-first", "domain-first", "one-batch-agent-first", "one-batch-domain-first")


def runs(case: Path) -> list[tuple[Path, str]]:
    data = json.loads(case.read_text())
    return [(case, order) for order in ORDERS] if any("tick" in step for step in data["steps"]) else [(case, "")]


RUNS = [run for case in CASES for run in runs(case)]


def raw(side: str, report: dict[str, Any]) -> tuple[str, bytes]:
    """The report as a collector publishes it; it must be valid under its topic's published schema."""
    if side == "domain":
        topic, value = DOMAIN_TOPIC, encode(DomainReport.model_validate(report))
    else:
        topic, value = AGENT_TOPIC, encode(AgentReport.model_validate(report))
    assert_valid(topic, value)
    return topic, value


@dataclass
class Message:
    """What `fold_batch` reads of a consumer record."""

    topic: str
    value: bytes
    key: bytes
    partition: int = 0
    offset: int = 0


def emitted(result: JoinResult | None) -> str:
    if result is None:
        return "none"
    return "record" if result.record is not None else "tombstone" if result.tombstone else "none"


class Timeline:
    """A VMI's stored state fed event by event (or batch by batch), as the worker does."""

    def __init__(self) -> None:
        self.stored: bytes | None = None
        self.revision = 0

    def one(self, side: str, report: dict[str, Any]) -> JoinResult | None:
        result = fold(self.stored, *raw(side, report))
        self.stored = encode_state(result.state)
        return self.check(result)

    def batch(self, events: list[tuple[str, dict[str, Any]]]) -> JoinResult | None:
        messages = [Message(*raw(side, report), key=vmi_key(report["vmi"]["namespace"], report["vmi"]["name"]).encode())
                    for side, report in events]
        folded = fold_batch(self.stored, messages[0].key, messages)
        assert not folded.refused, folded.refused
        self.stored = folded.state
        return self.check(folded.output)

    def check(self, result: JoinResult | None) -> JoinResult | None:
        if result is None or (result.record is None and not result.tombstone):
            return None
        if result.record is not None:
            record = decode(VMIRecord, result.record)
            assert encode(record) == result.record, "the bytes sent are the contract model's, byte for byte"
            assert_valid(VMI_TOPIC, result.record)
            assert record.revision >= self.revision, "revisions never go back"
            self.revision = record.revision
        return result


def check_expectation(result: JoinResult | None, expect: dict[str, Any], where: str) -> None:
    assert emitted(result) == expect["emit"], where
    if "record" in expect:
        assert result is not None and result.record is not None
        assert_contains(json.loads(result.record), expect["record"], where)


def play_tick(timeline: Timeline, step: dict[str, Any], order: str, where: str) -> JoinResult | None:
    domain, agent = ("domain", step["tick"]["domain"]), ("agent", step["tick"]["agent"])
    if order.startswith("one-batch"):
        return timeline.batch([agent, domain] if order.endswith("agent-first") else [domain, agent])
    first, second = (agent, domain) if order == "agent-first" else (domain, agent)
    before = timeline.one(*first)
    if order == "agent-first" and "expectAgentAlone" in step:
        check_expectation(before, step["expectAgentAlone"], f"{where}, the agent report alone")
    after = timeline.one(*second)
    return after if after is not None else before


@pytest.mark.parametrize(("case", "order"), RUNS, ids=[f"{c.stem}[{o}]" if o else c.stem for c, o in RUNS])
def test_timeline(case: Path, order: str) -> None:
    data = json.loads(case.read_text())
    timeline = Timeline()
    for number, step in enumerate(data["steps"], 1):
        where = f"{data['rule']} — step {number}{f' ({order})' if order else ''}"
        if "tick" in step:
            result = play_tick(timeline, step, order, where)
        else:
            side = "domain" if "domain" in step else "agent"
            result = timeline.one(side, step[side])
        check_expectation(result, step["expect"], where)


def test_state_round_trips_through_the_changelog_encoding() -> None:
    case = json.loads((Path(__file__).parent / "data" / "timelines" / "domain_then_agent.json").read_text())
    result = fold(None, DOMAIN_TOPIC, encode(DomainReport.model_validate(case["steps"][1]["domain"])))
    assert result.state is not None
    assert STATES.decode(encode_state(result.state)) == result.state


def test_unreadable_stored_state_starts_afresh() -> None:
    """A state that no longer decodes must not wedge the VMI: the next event rebuilds it."""
    case = json.loads((Path(__file__).parent / "data" / "timelines" / "domain_then_agent.json").read_text())
    domain = encode(DomainReport.model_validate(case["steps"][1]["domain"]))
    result = fold(b'{"revision": "garbage"}', DOMAIN_TOPIC, domain)
    assert result.record is not None and json.loads(result.record)["revision"] == 1


def test_a_report_under_another_vmis_key_is_refused() -> None:
    """The key routes the event to a VMI's state: a report of another VMI must not land there."""
    case = json.loads((Path(__file__).parent / "data" / "timelines" / "domain_then_agent.json").read_text())
    domain = encode(DomainReport.model_validate(case["steps"][1]["domain"]))
    with pytest.raises(DecodeError, match="is not the report's VMI"):
        apply_event(VMIState(), DOMAIN_TOPIC, domain, key=b"other/vmi")
    assert apply_event(VMIState(), DOMAIN_TOPIC, domain, key=b"ns1/vm1").record is not None


def test_a_state_written_before_the_msgspec_hot_path_reads_and_says_the_same() -> None:
    """An upgraded worker recovers states its predecessor wrote: the same records byte for byte, the
    same digest (an unchanged report emits nothing), revisions carried on (never reset to 1)."""
    case = json.loads((Path(__file__).parent / "data" / "state_before_msgspec.json").read_text())
    old_state, old_record = orjson.dumps(case["state"]), orjson.dumps(case["record"])
    steps = [(step["topic"], orjson.dumps(step["report"])) for step in case["steps"]]
    stored: bytes | None = None
    record = None
    for topic, value in steps:
        result = fold(stored, topic, value)
        stored, record = encode_state(result.state), result.record or record
    assert record == old_record, "the same events make the same record"
    assert STATES.decode(stored) == STATES.decode(old_state), "and the same state"
    agent_topic, agent = steps[1]
    again = fold(old_state, agent_topic, agent)
    assert again.record == old_record, "a re-delivery resends the old record, its revision unchanged"
    later = orjson.loads(agent)
    later["observedAt"] += 10
    assert fold(old_state, agent_topic, orjson.dumps(later)).record is None, "the old digest still matches"
    changed = {**later, "hostname": "renamed"}
    revision = json.loads(fold(old_state, agent_topic, orjson.dumps(changed)).record or b"{}")["revision"]
    assert revision == case["record"]["revision"] + 1


def test_a_report_nested_too_deep_is_undecodable_not_a_bug() -> None:
    """msgspec gives up past about 1,000 levels with a RecursionError, even inside an ignored key."""
    deep = b'{"vmi":{"namespace":"ns","name":"vm"},"node":"n","observedAt":1,"connected":true,"os":{"x":' \
        + b"[" * 5000 + b"]" * 5000 + b"}}"
    with pytest.raises(DecodeError, match="nested too deep"):
        apply_event(VMIState(), AGENT_TOPIC, deep)
