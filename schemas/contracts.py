"""The published contract of every topic: a JSON Schema (2020-12) of its record values, made from the
models and checked in under `schemas/json/` (docs/topics.md explains each topic).

- `schemas/json/<topic>.json`: the contract of the code as it is; a test fails when the models say
  otherwise, so that a contract change is a reviewed change of that file.
- `schemas/json/released/<topic>.json`: the contract last published; a test holds the current one to
  it: only additive changes (a new optional field, a new event type), never a field removed, retyped
  or made required. A breaking change is a new topic version (`.v2`).
- `broker_schema(topic)`: the same schema in the layout of Tansu's schema registry (`<topic>.json`,
  an object whose `value` property is the value's schema): the embedded broker validates every record
  of the topics it can (`write_broker_registry`).

The published schemas leave objects open (`additionalProperties` is not false): a consumer must ignore
fields it does not know, so that a new optional field breaks nobody. Producers write no others: the
models themselves refuse unknown fields.

Regenerate with `python -m schemas.contracts --write` (and, when publishing, `--release`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Final

from pydantic import TypeAdapter

from schemas.dead_letters import DeadLetter
from schemas.events import AgentReport, DomainReport
from schemas.topics import AGENT_TOPIC, DEAD_LETTER_TOPIC, DOMAIN_TOPIC, EVENTS_TOPIC, VMI_TOPIC
from schemas.vmi import VMIRecord
from schemas.vmi_events import VMI_EVENTS

JSON_DIR: Final = Path(__file__).parent / "json"
RELEASED_DIR: Final = JSON_DIR / "released"
DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
#: Every topic's value type, with a line saying what its records are.
TOPIC_VALUES: Final[dict[str, tuple[TypeAdapter[Any], str]]] = {
    DOMAIN_TOPIC: (TypeAdapter(DomainReport), "What libvirt says of one VMI's domain, per collector tick."),
    AGENT_TOPIC: (TypeAdapter(AgentReport), "What one VMI's guest agent answered, per collector tick."),
    VMI_TOPIC: (TypeAdapter(VMIRecord), "Everything known of one VMI (compacted; a null value removes it)."),
    DEAD_LETTER_TOPIC: (TypeAdapter(DeadLetter), "A raw event the join could not apply, and why."),
    EVENTS_TOPIC: (VMI_EVENTS, "One change of one VMI, derived from its consecutive revisions."),
}


def topic_schema(topic: str) -> dict[str, Any]:
    """The JSON Schema of `topic`'s record values, as published."""
    adapter, description = TOPIC_VALUES[topic]
    generated = adapter.json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = {"$schema": DIALECT, "$id": f"urn:guestinfo:topic:{topic}", "title": topic,
                              "description": description}
    schema.update(_published(generated))
    return schema


def broker_schema(topic: str) -> dict[str, Any] | None:
    """`topic_schema` in the layout of Tansu's schema registry, or None where the broker cannot
    validate the topic (`UNVALIDATED_BY_BROKER`).

    Tansu compiles the `value` property on its own, so its `$ref`s must resolve inside it: the
    definitions move into the value's schema. A schema that does not compile is dropped by Tansu
    without a word, and its topic goes unvalidated (the tests produce a bad record to prove that
    validation is on). There is no key schema: Tansu would parse keys as JSON, and ours are plain
    `namespace/name` strings."""
    if topic in UNVALIDATED_BY_BROKER:
        return None
    value = topic_schema(topic)
    for name in ("$schema", "$id"):
        value.pop(name, None)
    return {"title": topic, "type": "object", "properties": {"value": value}}


#: Topics the embedded broker does not validate, and why.
UNVALIDATED_BY_BROKER: Final = {
    VMI_TOPIC: "compacted with tombstones: Tansu refuses a record without a value whenever its topic "
    "has a value schema, and a tombstone has none",
}


def _published(node: Any) -> Any:
    """The generated schema without what it must not promise: closed objects, and the titles pydantic
    makes up from field names."""
    if isinstance(node, list):
        return [_published(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "additionalProperties" and value is False:
            continue
        if key == "properties":
            out[key] = {name: _without_title(_published(field)) for name, field in value.items()}
        else:
            out[key] = _published(value)
    return out


def _without_title(field: Any) -> Any:
    if isinstance(field, dict):
        return {key: value for key, value in field.items() if key != "title"}
    return field


def write_broker_registry(directory: Path) -> list[str]:
    """Write the broker schemas into `directory` (Tansu's `--schema-registry file://…`); returns the
    topics it validates."""
    directory.mkdir(parents=True, exist_ok=True)
    validated = []
    for topic in TOPIC_VALUES:
        schema = broker_schema(topic)
        if schema is not None:
            (directory / f"{topic}.json").write_text(json.dumps(schema))
            validated.append(topic)
    return validated


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for topic in TOPIC_VALUES:
        path = directory / f"{topic}.json"
        path.write_text(schema_text(topic_schema(topic)))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m schemas.contracts",
        description="Write the topics' JSON Schemas from the models (schemas/json/), or check them.",
    )
    parser.add_argument("--write", action="store_true", help="write schemas/json/<topic>.json")
    parser.add_argument("--release", action="store_true",
                        help="also copy them to schemas/json/released/ (publishing this version)")
    args = parser.parse_args(argv)
    if args.write or args.release:
        for path in write(JSON_DIR) + (write(RELEASED_DIR) if args.release else []):
            print(path)
        return 0
    stale = [topic for topic in TOPIC_VALUES
             if not (JSON_DIR / f"{topic}.json").is_file()
             or (JSON_DIR / f"{topic}.json").read_text() != schema_text(topic_schema(topic))]
    for topic in stale:
        print(f"{JSON_DIR / topic}.json differs from the models: run python -m schemas.contracts --write",
              file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
