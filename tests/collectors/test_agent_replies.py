"""Data-driven tests of the reply conversions: `data/agent/<case>.json` holds the command, the agent's
`return` value, and either the `expected` model JSON or the `error` the conversion must raise."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from collectors import agent_replies
from collectors.agent_replies import CONVERTERS, CURRENT_GUEST, convert, guest_interfaces, guest_users
from collectors.errors import AgentProtocolError, AgentReplyError
from plumbing.logs import RateLimitedLog
from schemas.limits import MAX_ADDRESSES, MAX_ITEMS

DATA = Path(__file__).parent / "data" / "agent"
CASES = sorted(path.stem for path in DATA.glob("*.json"))


def as_json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [as_json(item) for item in value]
    return value


@pytest.mark.parametrize("case", CASES)
def test_reply_conversion(case: str) -> None:
    spec = orjson.loads((DATA / f"{case}.json").read_bytes())
    assert spec["command"] in CONVERTERS
    if "error" in spec:
        with pytest.raises(AgentReplyError) as caught:
            convert(spec["command"], spec["reply"])
        assert caught.value.command == spec["command"]
        assert str(caught.value) == spec["error"]
        assert isinstance(caught.value, AgentProtocolError)
    else:
        assert as_json(convert(spec["command"], spec["reply"])) == spec["expected"]


def test_cases_cover_every_polled_command() -> None:
    commands = {orjson.loads((DATA / f"{case}.json").read_bytes())["command"] for case in CASES}
    assert commands == set(CONVERTERS)


def test_over_long_lists_are_cut_to_the_schema_limits() -> None:
    users = [{"user": f"u{i}", "login-time": float(i)} for i in range(MAX_ITEMS + 500)]
    converted = guest_users(users)
    assert len(converted) == MAX_ITEMS
    assert converted[-1].user_name == f"u{MAX_ITEMS - 1}"

    addresses = [{"ip-address-type": "ipv4", "ip-address": f"10.0.{i // 256}.{i % 256}", "prefix": 32}
                 for i in range(MAX_ADDRESSES + 10)]
    (interface,) = guest_interfaces([{"name": "eth0", "ip-addresses": addresses}])
    assert len(interface.ip_addresses) == MAX_ADDRESSES


def test_unknown_command_is_a_reply_error() -> None:
    with pytest.raises(AgentReplyError, match="no converter"):
        convert("guest-exec", {})


def test_cut_notes_are_logged_once_per_guest_and_kind(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_replies, "_notes", RateLimitedLog(agent_replies.log))
    caplog.set_level(logging.INFO, logger="collectors.agent_replies")
    users = [{"user": f"u{i}", "login-time": 1.0} for i in range(MAX_ITEMS + 5)]
    token = CURRENT_GUEST.set("ns/a")
    try:
        for extra in range(4):  # the tenant varies the length: still one line
            guest_users([*users, {"user": "x" * (10000 + extra)}])
    finally:
        CURRENT_GUEST.reset(token)
    token = CURRENT_GUEST.set("ns/b")
    try:
        guest_users(users)
    finally:
        CURRENT_GUEST.reset(token)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert lines == [f"guest ns/a: list of {MAX_ITEMS + 6} items cut to {MAX_ITEMS}",
                     f"guest ns/b: list of {MAX_ITEMS + 5} items cut to {MAX_ITEMS}"]
