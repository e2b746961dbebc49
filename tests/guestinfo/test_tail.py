"""`guestinfo tail`: a topic as JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
import sys

import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from guestinfo.broker import EmbeddedBroker, ensure_topics
from guestinfo.engines import Broker
from guestinfo.lab.bench import create_topics
from guestinfo.tail import Selection, TailError, line, tail
from schemas.topics import EVENTS_TOPIC, UID_HEADER
from tests.conftest import started_producer


def record(key: bytes | None, value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()) -> ConsumerRecord:
    return ConsumerRecord("t", 0, 0, 0, 0, key, value, None, len(key or b""), len(value or b""), headers)


def test_a_record_is_its_value_on_one_line() -> None:
    value = b'{\n  "vmi": {"namespace": "ns", "name": "vm"},\n  "revision": 3\n}'
    printed = line(record(b"ns/vm", value))
    assert printed.endswith(b"\n") and printed.count(b"\n") == 1
    assert json.loads(printed) == json.loads(value)


def test_a_tombstone_is_a_deletion_with_the_uid_it_removes() -> None:
    assert json.loads(line(record(b"ns/vm", None))) == {"key": "ns/vm", "deleted": True}
    assert json.loads(line(record(b"ns/vm", None, ((UID_HEADER, b"u-1"),)))) == {
        "key": "ns/vm", "deleted": True, "uid": "u-1"}


def test_a_value_that_is_not_json_is_shown_as_text() -> None:
    assert json.loads(line(record(b"ns/vm", b"{not json\n"))) == {"key": "ns/vm", "undecodable": "{not json\n"}


@pytest.mark.parametrize(("selection", "key", "wanted"), [
    (Selection(), b"ns/vm", True),
    (Selection(), None, True),
    (Selection(namespace="ns"), b"ns/vm", True),
    (Selection(namespace="ns"), b"ns2/vm", False),
    (Selection(name="vm"), b"other/vm", True),
    (Selection(namespace="ns", name="vm"), b"ns/vm2", False),
    (Selection(namespace="ns"), b"no-slash", False),
    (Selection(namespace="ns"), None, False),
])
def test_vmis_are_selected_by_the_key(selection: Selection, key: bytes | None, wanted: bool) -> None:
    assert selection.wants(key) is wanted


@pytest.mark.integration
async def test_it_prints_the_selected_records_from_the_beginning(lenient_broker: Broker, unique: str) -> None:
    topic = f"tail-{unique}"
    await create_topics(lenient_broker.bootstrap_servers, [topic])
    async with started_producer(lenient_broker.bootstrap_servers) as producer:
        for number in range(5):
            await producer.send_and_wait(topic, orjson.dumps({"n": number}), key=f"ns/vm-{number % 2}".encode())
        await producer.send_and_wait(topic, None, key=b"ns/vm-1", headers=[(UID_HEADER, b"u-9")])
    out = io.BytesIO()
    printed = await tail(lenient_broker.bootstrap_servers, topic, from_beginning=True,
                         selection=Selection(name="vm-1"), limit=3, out=out)
    assert printed == 3
    assert [json.loads(text) for text in out.getvalue().splitlines()] == [
        {"n": 1}, {"n": 3}, {"key": "ns/vm-1", "deleted": True, "uid": "u-9"}]


@pytest.mark.integration
async def test_a_topic_that_does_not_exist_is_an_error(lenient_broker: Broker, monkeypatch: pytest.MonkeyPatch,
                                                      unique: str) -> None:
    monkeypatch.setattr("guestinfo.tail.METADATA_WAIT", 0.5)
    with pytest.raises(TailError, match="does not exist"):
        await tail(lenient_broker.bootstrap_servers, f"missing-{unique}", limit=1, out=io.BytesIO())


@pytest.mark.integration
async def test_the_command_follows_the_events_topic() -> None:
    """`guestinfo tail` started at the end prints what comes after it, then stops at --max."""
    async with EmbeddedBroker() as broker:
        await ensure_topics(broker.bootstrap_servers, partitions=2)
        event = {"type": "HostnameChanged", "vmi": {"namespace": "ns", "name": "vm", "uid": "u"}, "node": "n",
                 "revision": 2, "observedAt": 1.0, "subject": "", "before": "a", "after": "b"}
        async with started_producer(broker.bootstrap_servers) as producer:
            await producer.send_and_wait(EVENTS_TOPIC, orjson.dumps({**event, "revision": 1}), key=b"ns/vm")
            command = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "guestinfo", "tail", "--bootstrap-servers", broker.bootstrap_servers,
                "--topic", EVENTS_TOPIC, "--max", "1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:
                ended = asyncio.ensure_future(command.communicate())
                for _ in range(60):  # until it has seeked to the end: it prints only what comes after
                    await producer.send_and_wait(EVENTS_TOPIC, orjson.dumps(event), key=b"ns/vm")
                    done, _ = await asyncio.wait([ended], timeout=0.5)
                    if done:
                        break
                else:
                    raise AssertionError("guestinfo tail printed nothing")
                out, err = ended.result()
            finally:
                if command.returncode is None:
                    command.kill()
                    await command.wait()
    assert command.returncode == 0, err
    assert json.loads(out) == event, "the event as it is, not the one sent before it started"


@pytest.mark.integration
async def test_a_topic_created_after_it_starts_is_found(lenient_broker: Broker, unique: str) -> None:
    topic = f"late-{unique}"
    out = io.BytesIO()
    tailing = asyncio.ensure_future(tail(lenient_broker.bootstrap_servers, topic, from_beginning=True, limit=1,
                                         out=out))
    await asyncio.sleep(1.0)
    await create_topics(lenient_broker.bootstrap_servers, [topic])
    async with started_producer(lenient_broker.bootstrap_servers) as producer:
        await producer.send_and_wait(topic, b'{"late": true}', key=b"ns/vm")
    assert await asyncio.wait_for(tailing, 15) == 1
    assert json.loads(out.getvalue()) == {"late": True}


@pytest.mark.integration
async def test_a_partitions_order_is_kept_whatever_the_timestamps(lenient_broker: Broker, unique: str) -> None:
    """A producer's clock may step back: within a partition, records come in offset order."""
    topic = f"order-{unique}"
    await create_topics(lenient_broker.bootstrap_servers, [topic], partitions=1)
    async with started_producer(lenient_broker.bootstrap_servers) as producer:
        for number, stamp in enumerate((5_000, 3_000, 4_000)):
            await producer.send_and_wait(topic, orjson.dumps({"n": number}), key=b"ns/vm", timestamp_ms=stamp)
    out = io.BytesIO()
    await tail(lenient_broker.bootstrap_servers, topic, from_beginning=True, limit=3, out=out)
    assert [json.loads(text)["n"] for text in out.getvalue().splitlines()] == [0, 1, 2]


async def test_a_broker_that_does_not_answer_is_an_error() -> None:
    from guestinfo.broker import free_port

    with pytest.raises(TailError, match="cannot read"):
        await tail(f"127.0.0.1:{free_port()}", "guestinfo.vmi.v1", limit=1, out=io.BytesIO())
