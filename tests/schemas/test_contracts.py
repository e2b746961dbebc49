"""The topics' published JSON Schemas: checked in, in step with the models, changed only additively."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from schemas.contracts import (
    JSON_DIR,
    RELEASED_DIR,
    TOPIC_VALUES,
    UNVALIDATED_BY_BROKER,
    broker_schema,
    main,
    schema_text,
    topic_schema,
)
from schemas.topics import TOPIC_CONFIGS
from tests.schemas.schema_compat import breaking
from tests.schemas.topic_contracts import assert_valid, validator

CHANGES = json.loads((Path(__file__).parent / "data" / "schema_changes.json").read_text())


def test_every_topic_has_a_contract() -> None:
    assert set(TOPIC_VALUES) == set(TOPIC_CONFIGS)


@pytest.mark.parametrize("topic", sorted(TOPIC_VALUES))
def test_the_checked_in_schema_is_the_models(topic: str) -> None:
    """A model change that changes a contract must change `schemas/json/` in the same commit."""
    checked_in = (JSON_DIR / f"{topic}.json").read_text()
    assert checked_in == schema_text(topic_schema(topic)), (
        f"schemas/json/{topic}.json differs from the models: review the change, then run "
        "python -m schemas.contracts --write"
    )


def test_the_check_command_agrees() -> None:
    assert main([]) == 0


@pytest.mark.parametrize("topic", sorted(TOPIC_VALUES))
def test_the_schema_is_valid_2020_12(topic: str) -> None:
    schema = json.loads((JSON_DIR / f"{topic}.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("topic", sorted(TOPIC_VALUES))
def test_the_current_schema_only_adds_to_the_released_one(topic: str) -> None:
    released = json.loads((RELEASED_DIR / f"{topic}.json").read_text())
    current = json.loads((JSON_DIR / f"{topic}.json").read_text())
    assert breaking(released, current) == [], (
        f"{topic}: a breaking change needs a new topic version, not a new schema for this one"
    )


@pytest.mark.parametrize("case", CHANGES, ids=[case["change"] for case in CHANGES])
def test_the_compatibility_rule(case: dict[str, Any]) -> None:
    found = breaking(case["old"], case["new"])
    assert len(found) == len(case["breaking"]), found
    for expected, problem in zip(case["breaking"], found, strict=True):
        assert problem.startswith(expected), (problem, expected)


def test_the_published_objects_stay_open_while_the_models_refuse_unknown_fields() -> None:
    """Consumers must ignore fields they do not know: a record with a field added by a later version
    is valid under this version's schema."""
    record = {"vmi": {"namespace": "ns", "name": "vm"}, "node": "n", "observedAt": 1.0, "later": {"x": 1}}
    assert_valid("guestinfo.domain.v1", record)
    assert not validator("guestinfo.domain.v1").is_valid({**record, "observedAt": "soon"})


@pytest.mark.parametrize("topic", sorted(TOPIC_VALUES))
def test_a_broker_schema_holds_the_whole_value_schema(topic: str) -> None:
    """Tansu compiles the `value` property alone: every `$ref` must resolve inside it."""
    schema = broker_schema(topic)
    if schema is None:
        assert topic in UNVALIDATED_BY_BROKER
        return
    assert set(schema["properties"]) == {"value"}, "no key schema: Tansu would parse our keys as JSON"
    value_schema = schema["properties"]["value"]
    Draft202012Validator.check_schema(value_schema)
    alone = Draft202012Validator(value_schema)
    assert all(alone.is_valid(example) for example in EXAMPLES.get(topic, ()))
    assert not alone.is_valid({"vmi": "not an object"})


EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "guestinfo.domain.v1": [{"vmi": {"namespace": "ns", "name": "vm"}, "node": "n", "observedAt": 1.0}],
    "guestinfo.agent.v1": [{"vmi": {"namespace": "ns", "name": "vm"}, "node": "n", "observedAt": 1.0,
                            "connected": True, "users": [{"userName": "alice"}]}],
    "guestinfo.deadletter.v1": [{"topic": "t", "partition": 0, "offset": 1, "reason": "r", "value": None}],
    "guestinfo.events.v1": [{"type": "HostnameChanged", "vmi": {"namespace": "ns", "name": "vm"}, "node": "n",
                             "revision": 2, "observedAt": 1.0, "subject": "", "before": "a", "after": "b"}],
}


@pytest.mark.parametrize("topic", sorted(TOPIC_VALUES))
def test_removing_any_field_of_a_published_schema_is_caught(topic: str) -> None:
    """The rule on the real schemas: every property removed, one at a time, anywhere, is breaking."""
    released = json.loads((RELEASED_DIR / f"{topic}.json").read_text())
    places = [(name, definition) for name, definition in released.get("$defs", {}).items()]
    places.append(("(root)", released))
    removals = 0
    for where, node in places:
        for field in list(node.get("properties", {})):
            changed = json.loads(json.dumps(released))
            target = changed if where == "(root)" else changed["$defs"][where]
            del target["properties"][field]
            if field in target.get("required", []):
                target["required"].remove(field)
            found = breaking(released, changed)
            assert any(f".{field}: removed" in problem for problem in found), (where, field, found)
            removals += 1
    assert removals > 0
