"""`streams.output.deliver`: what fails for a passing reason is sent again until delivered; what the
broker refuses for good is returned; anything else is a bug and raised (no broker: a scripted producer,
`tests.streams.producers`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from streams import output
from streams.output import Send, deliver
from tests.streams.producers import ScriptedProducer, scripts


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "RETRY_FIRST", 0.001)
    monkeypatch.setattr(output, "RETRY_MOST", 0.001)


def sends(*keys: bytes) -> list[Send]:
    return [Send("guestinfo.vmi.v1", key, b"{}") for key in keys]


async def test_an_outage_is_waited_out_and_nothing_is_lost() -> None:
    producer = ScriptedProducer(scripts({
        b"a": [KafkaConnectionError(), KafkaTimeoutError(), None],
        b"b": [None],
    }))
    assert await deliver(producer, sends(b"a", b"b")) == [None, None]
    assert producer.per_key() == {b"a": 3, b"b": 1}, "only what failed is sent again"


async def test_a_record_the_broker_refuses_for_good_is_returned_not_retried() -> None:
    too_large = MessageSizeTooLargeError()
    producer = ScriptedProducer(scripts({b"a": [too_large], b"b": [None]}))
    assert await deliver(producer, sends(b"a", b"b")) == [too_large, None]
    assert producer.per_key() == {b"a": 1, b"b": 1}


@pytest.mark.parametrize("make", [lambda: RuntimeError("bug"), lambda: asyncio.CancelledError()])
async def test_anything_but_a_kafka_error_is_raised(make: Callable[[], BaseException]) -> None:
    error = make()
    assert not isinstance(error, KafkaError)
    producer = ScriptedProducer(scripts({b"a": [error]}))
    with pytest.raises(type(error)):
        await deliver(producer, sends(b"a"))
