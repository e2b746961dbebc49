"""`streams.batches.JoinBatches`, the join's delivery rules, without a broker: a scripted producer and a
dict of states. Per-batch coalescing, resends, the unsendable path, never writing a state (nor
returning, so never acknowledging) before its output is delivered, and abandoning a batch that cannot
finish."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import NoReturn

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from schemas.codec import encode
from schemas.dead_letters import DeadLetter
from schemas.events import AgentReport, DomainReport, VMIRef
from schemas.kubevirt import GuestOSInfo
from schemas.topics import AGENT_TOPIC, DEAD_LETTER_TOPIC, DOMAIN_TOPIC, EVENTS_TOPIC, VMI_TOPIC
from streams import output
from streams.batches import JoinBatches
from tests.schemas.topic_contracts import assert_valid
from tests.streams.producers import Outcome, ScriptedProducer, Stored

T0 = 1_764_000_000.0

@dataclass(frozen=True)
class Message:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int = 0
    offset: int = 0


class Abandoned(Exception):
    """Raised by the test's abandon instead of ending the process."""


def abandon(why: str) -> NoReturn:
    raise Abandoned(why)


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "RETRY_FIRST", 0.001)
    monkeypatch.setattr(output, "RETRY_MOST", 0.001)


def vmi(name: str) -> VMIRef:
    return VMIRef(namespace="ns", name=name, uid=f"uid-{name}")


def domain(name: str, at: float, offset: int = 0) -> Message:
    report = DomainReport(vmi=vmi(name), node="n1", observed_at=at, agent_connected=True)
    return Message(DOMAIN_TOPIC, f"ns/{name}".encode(), encode(report), offset=offset)


def agent(name: str, at: float, os_id: str, offset: int = 0) -> Message:
    report = AgentReport(vmi=vmi(name), node="n1", observed_at=at, connected=True, session="s",
                         os=GuestOSInfo(id=os_id))
    return Message(AGENT_TOPIC, f"ns/{name}".encode(), encode(report), offset=offset)


def revision_and_os(value: bytes | None) -> tuple[int, str]:
    assert value is not None
    record = orjson.loads(value)
    return record["revision"], record["status"]["guestOSInfo"].get("id", "")


async def test_a_batch_sends_one_output_per_vmi_the_last_and_writes_each_state_once() -> None:
    states: dict[bytes, bytes] = {}
    producer = ScriptedProducer()
    batches = JoinBatches(states, producer, on_abandon=abandon)
    await batches.take([domain("a", T0), agent("a", T0 + 1, "fedora"), agent("a", T0 + 2, "debian"),
                        domain("b", T0)])
    outputs = producer.to(VMI_TOPIC)
    assert [key for key, _ in outputs] == [b"ns/a", b"ns/b"], "one output per VMI and batch"
    assert revision_and_os(outputs[0][1]) == (3, "debian"), "the last output of the batch, its revision counted"
    assert set(states) == {b"ns/a", b"ns/b"}
    assert orjson.loads(states[b"ns/a"])["revision"] == 3


async def test_an_outage_is_waited_out_and_only_then_the_state_is_written() -> None:
    states: dict[bytes, bytes] = {}
    producer = ScriptedProducer(lambda topic, key, attempt: KafkaConnectionError() if attempt < 2 else None)
    await JoinBatches(states, producer, on_abandon=abandon).take([domain("a", T0)])
    assert [key for key, _ in producer.to(VMI_TOPIC)] == [b"ns/a"] * 3, "sent again until delivered"
    assert b"ns/a" in states


async def test_no_state_is_written_and_the_batch_not_done_before_its_outputs_are_acknowledged() -> None:
    states: dict[bytes, bytes] = {}
    ack: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    producer = ScriptedProducer(lambda topic, key, attempt: ack)
    taking = asyncio.ensure_future(JoinBatches(states, producer, on_abandon=abandon).take([domain("a", T0)]))
    await asyncio.sleep(0.05)
    assert not taking.done(), "the caller may not acknowledge the events yet"
    assert states == {}, "a state written before its output is delivered could lose the output"
    ack.set_result(object())
    await taking
    assert b"ns/a" in states


async def test_an_output_the_broker_refuses_for_good_dead_letters_the_vmis_events_and_keeps_its_state() -> None:
    states: dict[bytes, bytes] = {}
    refused = MessageSizeTooLargeError()
    producer = ScriptedProducer(lambda topic, key, attempt: refused if (topic, key) == (VMI_TOPIC, b"ns/a") else None)
    await JoinBatches(states, producer, on_abandon=abandon).take(
        [domain("a", T0, offset=7), agent("a", T0 + 1, "fedora", offset=8), domain("b", T0, offset=9)])
    assert list(states) == [b"ns/b"], "the refused VMI's state stays as it was: its next event sends again"
    letters = [orjson.loads(value or b"") for _, value in producer.to(DEAD_LETTER_TOPIC)]
    assert [(letter["topic"], letter["offset"]) for letter in letters] == [(DOMAIN_TOPIC, 7), (AGENT_TOPIC, 8)]
    assert all("the broker refuses the merged output" in letter["reason"] for letter in letters)
    for letter in letters:
        assert_valid(DEAD_LETTER_TOPIC, letter)
    assert [key for key, _ in producer.to(VMI_TOPIC)] == [b"ns/a", b"ns/b"], "refused for good: not sent again"


async def test_an_undecodable_event_is_dead_lettered_and_the_vmis_other_events_go_on() -> None:
    states: dict[bytes, bytes] = {}
    producer = ScriptedProducer()
    bad = Message(AGENT_TOPIC, b"ns/a", b"{not json", offset=3)
    await JoinBatches(states, producer, on_abandon=abandon).take([domain("a", T0), bad, agent("a", T0 + 1, "alma")])
    (letter,) = [orjson.loads(value or b"") for _, value in producer.to(DEAD_LETTER_TOPIC)]
    assert (letter["offset"], letter["value"]) == (3, "{not json")
    assert letter["reason"].startswith("not JSON")
    assert_valid(DEAD_LETTER_TOPIC, letter)
    DeadLetter.model_validate(letter)
    (record,) = producer.to(VMI_TOPIC)
    assert revision_and_os(record[1]) == (2, "alma")


async def test_a_bug_on_a_batch_abandons_it() -> None:
    class BrokenStates:
        def get(self, key: bytes) -> bytes | None:
            raise RuntimeError("the table is broken")

        def __setitem__(self, key: bytes, value: bytes) -> None:
            raise AssertionError("never reached")

    with pytest.raises(Abandoned, match="a bug on a batch"):
        await JoinBatches(BrokenStates(), ScriptedProducer(), on_abandon=abandon).take([domain("a", T0)])


async def test_a_stop_mid_batch_waits_for_the_batch_then_lets_the_cancellation_through() -> None:
    states: dict[bytes, bytes] = {}
    ack: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    producer = ScriptedProducer(lambda topic, key, attempt: ack)
    taking = asyncio.ensure_future(JoinBatches(states, producer, on_abandon=abandon).take([domain("a", T0)]))
    await asyncio.sleep(0.05)
    taking.cancel()
    await asyncio.sleep(0.05)
    assert not taking.done(), "a cancelled batch still runs to its end"
    ack.set_result(object())
    with pytest.raises(asyncio.CancelledError):
        await taking
    assert b"ns/a" in states, "the batch finished before the cancellation went through"


async def test_a_stop_mid_batch_that_cannot_finish_within_the_grace_abandons_it() -> None:
    states: dict[bytes, bytes] = {}
    never: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    producer = ScriptedProducer(lambda topic, key, attempt: never)
    batches = JoinBatches(states, producer, stop_grace=0.1, on_abandon=abandon)
    taking = asyncio.ensure_future(batches.take([domain("a", T0)]))
    await asyncio.sleep(0.05)
    taking.cancel()
    with pytest.raises(Abandoned, match="did not finish within"):
        await taking
    assert states == {}


CHANGELOG = "join-vmi-state-changelog"


async def test_with_a_changelog_topic_changed_states_go_there_after_the_outputs() -> None:
    states: dict[bytes, bytes] = {}
    producer = ScriptedProducer()
    batches = JoinBatches(states, producer, changelog_topic=CHANGELOG, on_abandon=abandon)
    await batches.take([domain("a", T0), domain("b", T0)])
    assert producer.to(CHANGELOG) == [(b"ns/a", states[b"ns/a"]), (b"ns/b", states[b"ns/b"])]
    assert [t for t, _, _ in producer.sent] == [VMI_TOPIC, VMI_TOPIC, EVENTS_TOPIC, EVENTS_TOPIC, CHANGELOG, CHANGELOG]
    assert [orjson.loads(value or b"")["type"] for _, value in producer.to(EVENTS_TOPIC)] == ["AgentConnected"] * 2
    await batches.take([domain("a", T0)])  # a re-delivery: the record again, the state unchanged
    assert len(producer.to(CHANGELOG)) == 2, "an unchanged state is not sent again"


async def test_no_state_reaches_the_changelog_before_its_output_is_acknowledged() -> None:
    """A changelog ahead of an output that a crash kept from the broker would lose the output for good:
    after a restart the state has the removal applied, and a removal applied twice sends nothing."""
    states: dict[bytes, bytes] = {}
    ack: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    producer = ScriptedProducer(lambda topic, key, attempt: ack if topic == VMI_TOPIC else None)
    batches = JoinBatches(states, producer, changelog_topic=CHANGELOG, on_abandon=abandon)
    taking = asyncio.ensure_future(batches.take([domain("a", T0)]))
    await asyncio.sleep(0.05)
    assert producer.to(CHANGELOG) == [] and states == {}
    ack.set_result(object())
    await taking
    assert producer.to(CHANGELOG) == [(b"ns/a", states[b"ns/a"])]


async def test_no_state_reaches_the_changelog_before_its_change_events_are_acknowledged() -> None:
    """A restart recovers the changelog's state and reads the raw events again: applied already, they
    make no revision, so events the broker had not taken by then would be lost."""
    states: dict[bytes, bytes] = {}
    ack: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    producer = ScriptedProducer(lambda topic, key, attempt: ack if topic == EVENTS_TOPIC else None)
    batches = JoinBatches(states, producer, changelog_topic=CHANGELOG, on_abandon=abandon)
    taking = asyncio.ensure_future(batches.take([domain("a", T0)]))
    await asyncio.sleep(0.05)
    assert len(producer.to(VMI_TOPIC)) == 1, "the record went"
    assert producer.to(CHANGELOG) == [] and states == {}, "the state waits for the event"
    ack.set_result(object())
    await taking
    assert [t for t, _, _ in producer.sent] == [VMI_TOPIC, EVENTS_TOPIC, CHANGELOG]


async def test_a_first_answer_is_a_baseline_and_sends_no_event() -> None:
    states: dict[bytes, bytes] = {}
    producer = ScriptedProducer()
    batches = JoinBatches(states, producer, changelog_topic=CHANGELOG, on_abandon=abandon)
    await batches.take([domain("a", T0)])
    sent = len(producer.sent)
    await batches.take([agent("a", T0 + 1, "fedora")])  # a first OS answer is a baseline: no event
    assert [t for t, _, _ in producer.sent[sent:]] == [VMI_TOPIC, CHANGELOG]


async def test_no_state_is_sent_for_an_unsendable_output() -> None:
    states: dict[bytes, bytes] = {}
    refuse = {b"ns/a"}
    producer = ScriptedProducer(
        lambda topic, key, attempt: MessageSizeTooLargeError() if topic == VMI_TOPIC and key in refuse else None)
    batches = JoinBatches(states, producer, changelog_topic=CHANGELOG, on_abandon=abandon)
    await batches.take([domain("a", T0)])
    assert states == {} and producer.to(CHANGELOG) == []
    assert len(producer.to(DEAD_LETTER_TOPIC)) == 1
    refuse.clear()
    await batches.take([domain("a", T0 + 1)])
    before = states[b"ns/a"]
    refuse.add(b"ns/a")
    await batches.take([agent("a", T0 + 2, "fedora")])
    assert states[b"ns/a"] == before
    assert producer.to(CHANGELOG) == [(b"ns/a", before)], "the changelog holds what the store holds"


async def test_a_state_the_changelog_refuses_is_written_there_without_the_agents_answers() -> None:
    from streams.join import STATES
    from streams.metrics import CHANGELOG_REFUSED

    states: dict[bytes, bytes] = {}
    big = {b"ns/a"}

    def script(topic: str, key: bytes, attempt: int) -> Outcome:
        return MessageSizeTooLargeError() if topic == CHANGELOG and key in big and attempt == 0 else None

    producer = ScriptedProducer(script)
    before = CHANGELOG_REFUSED._value.get()
    batches = JoinBatches(states, producer, changelog_topic=CHANGELOG, on_abandon=abandon)
    await batches.take([domain("a", T0), agent("a", T0 + 1, "fedora")])
    assert CHANGELOG_REFUSED._value.get() == before + 1
    full, trimmed = (STATES.decode(value or b"") for _, value in producer.to(CHANGELOG))
    assert STATES.decode(states[b"ns/a"]) == trimmed, "the store holds what the changelog holds"
    assert full.agent is not None and trimmed.agent is None and trimmed.domain == full.domain
    assert (trimmed.revision, trimmed.emitted_digest) == (full.revision, full.emitted_digest), \
        "the changelog never falls behind a revision consumers have seen"


async def test_a_state_reaches_the_store_only_once_the_changelog_holds_it_then_its_offset() -> None:
    """A store on disk (RocksDB) ahead of its changelog would outlive a crash: after the restart the
    re-read events are re-deliveries, which change no state, so the changelog would never catch up."""
    states: dict[bytes, bytes] = {}
    ack: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    producer = ScriptedProducer(lambda topic, key, attempt: ack if topic == CHANGELOG else None)
    persisted: list[tuple[int, int, bool]] = []
    batches = JoinBatches(states, producer, changelog_topic=CHANGELOG, on_abandon=abandon,
                          on_persisted=lambda partition, offset: persisted.append(
                              (partition, offset, b"ns/a" in states)))
    taking = asyncio.ensure_future(batches.take([domain("a", T0)]))
    await asyncio.sleep(0.05)
    assert producer.to(CHANGELOG) and states == {} and persisted == []
    ack.set_result(Stored(CHANGELOG, 2, 41))
    await taking
    assert b"ns/a" in states
    assert persisted == [(2, 41, True)], "the offset is remembered after the state is stored"


async def test_a_batch_whose_every_event_is_refused_writes_no_state() -> None:
    states: dict[bytes, bytes] = {}
    producer = ScriptedProducer()
    await JoinBatches(states, producer, changelog_topic=CHANGELOG, on_abandon=abandon).take(
        [Message(AGENT_TOPIC, None, b"{not json")])
    assert states == {} and producer.to(CHANGELOG) == [] and len(producer.to(DEAD_LETTER_TOPIC)) == 1
