"""The checked-in topic schemas (`schemas/json/`) as validators, for tests that hold records to them."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator

from schemas.contracts import JSON_DIR


@cache
def validator(topic: str) -> Draft202012Validator:
    schema = json.loads((JSON_DIR / f"{topic}.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def assert_valid(topic: str, value: bytes | str | dict[str, Any]) -> None:
    """`value` (a record value, as bytes or decoded) is valid under `topic`'s published schema."""
    document = json.loads(value) if isinstance(value, bytes | str) else value
    errors = sorted(validator(topic).iter_errors(document), key=lambda error: list(error.absolute_path))
    assert not errors, f"{topic}: " + "; ".join(
        f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}" for error in errors[:5]
    )
