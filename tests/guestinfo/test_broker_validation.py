"""The embedded broker validates records against the topics' published schemas (Tansu's registry)."""

from __future__ import annotations

import json

import pytest
from aiokafka.errors import KafkaError

from guestinfo.broker import EmbeddedBroker, ensure_topics
from schemas.topics import AGENT_TOPIC, DEAD_LETTER_TOPIC, DOMAIN_TOPIC, EVENTS_TOPIC, VMI_TOPIC
from tests.conftest import started_producer

pytestmark = pytest.mark.integration

DOMAIN = {"vmi": {"namespace": "ns", "name": "vm", "uid": "u"}, "node": "n", "observedAt": 1.0}
AGENT = {**DOMAIN, "connected": True, "users": [{"userName": "alice", "loginTime": 5}]}
EVENT = {"type": "UserLoggedIn", "vmi": DOMAIN["vmi"], "node": "n", "revision": 2, "observedAt": 1.0,
         "subject": "alice", "userName": "alice", "domain": ""}
LETTER = {"topic": AGENT_TOPIC, "partition": 0, "offset": 3, "reason": "not JSON", "value": "{x"}


@pytest.mark.parametrize("compression", [None, "gzip"])
async def test_records_that_break_their_topics_contract_are_refused(compression: str | None) -> None:
    async with EmbeddedBroker() as broker:
        await ensure_topics(broker.bootstrap_servers, partitions=1)
        async with started_producer(broker.bootstrap_servers, compression_type=compression,
                                    request_timeout_ms=5000) as producer:
            async def sends(topic: str, value: object) -> bool:
                body = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
                try:
                    await producer.send_and_wait(topic, body, key=b"ns/vm")
                except KafkaError:
                    return False
                return True

            for topic, good, retyped in ((DOMAIN_TOPIC, DOMAIN, {"node": 42}), (AGENT_TOPIC, AGENT, {"node": 42}),
                                         (EVENTS_TOPIC, EVENT, {"revision": "2"}),
                                         (DEAD_LETTER_TOPIC, LETTER, {"offset": "3"})):
                assert await sends(topic, good), f"{topic}: a valid record is taken"
                assert not await sends(topic, b"{not json"), f"{topic}: not JSON is refused"
                assert not await sends(topic, {**good, **retyped}), f"{topic}: a retyped field is refused"
            assert not await sends(AGENT_TOPIC, {**AGENT, "users": [{"loginTime": 5}]}), "a required field missing"
            assert not await sends(EVENTS_TOPIC, {**EVENT, "type": "Unknown"}), "an event type not in the contract"
            assert await sends(DOMAIN_TOPIC, {**DOMAIN, "addedLater": 1}), "objects stay open to new fields"
            assert await sends(VMI_TOPIC, None), "the merged topic takes tombstones (not validated by the broker)"


async def test_validation_can_be_turned_off() -> None:
    async with EmbeddedBroker(validate_records=False) as broker:
        await ensure_topics(broker.bootstrap_servers, partitions=1)
        async with started_producer(broker.bootstrap_servers) as producer:
            await producer.send_and_wait(DOMAIN_TOPIC, b"{not json", key=b"ns/vm")
