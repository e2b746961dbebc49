"""The interface merge, one data file per rule under data/interfaces/."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from schemas.kubevirt import NetworkInterface
from streams.interfaces import add_info_source, merge_interfaces
from streams.reports import DomainInterface, GuestInterface

CASES = sorted((Path(__file__).parent / "data" / "interfaces").glob("*.json"))


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_interface_merge(case: Path) -> None:
    data = json.loads(case.read_text())
    domain = msgspec.convert(data["domain"], list[DomainInterface])
    guest = None if data["guest"] is None else msgspec.convert(data["guest"], list[GuestInterface])
    merged = merge_interfaces(domain, guest)
    assert merged == data["expected"], data["rule"]
    contract = [NetworkInterface.model_validate(entry).model_dump(mode="json") for entry in merged]
    assert [list(entry) for entry in merged] == [list(entry) for entry in contract], "the model's keys, in its order"


def test_merge_is_deterministic() -> None:
    case = json.loads((Path(__file__).parent / "data" / "interfaces" / "mac_match_ipv4_first.json").read_text())
    domain = msgspec.convert(case["domain"], list[DomainInterface])
    guest = msgspec.convert(case["guest"], list[GuestInterface])
    assert merge_interfaces(domain, guest) == merge_interfaces(domain, guest)


@pytest.mark.parametrize(
    ("before", "token", "after"),
    [
        ("", "domain", "domain"),
        ("domain", "guest-agent", "domain, guest-agent"),
        ("domain, guest-agent", "guest-agent", "domain, guest-agent"),
        ("multus-status", "domain", "domain, multus-status"),
        ("domain, multus-status", "guest-agent", "domain, guest-agent, multus-status"),
    ],
)
def test_info_source_tokens_in_canonical_order(before: str, token: str, after: str) -> None:
    assert add_info_source(before, token) == after
