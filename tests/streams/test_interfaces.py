"""The interface merge, one data file per rule under data/interfaces/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.events import DomainInterface, GuestInterface
from streams.interfaces import add_info_source, merge_interfaces

CASES = sorted((Path(__file__).parent / "data" / "interfaces").glob("*.json"))


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_interface_merge(case: Path) -> None:
    data = json.loads(case.read_text())
    domain = [DomainInterface.model_validate(i) for i in data["domain"]]
    guest = None if data["guest"] is None else [GuestInterface.model_validate(i) for i in data["guest"]]
    merged = [i.model_dump(mode="json") for i in merge_interfaces(domain, guest)]
    assert merged == data["expected"], data["rule"]


def test_merge_is_deterministic() -> None:
    case = json.loads((Path(__file__).parent / "data" / "interfaces" / "mac_match_ipv4_first.json").read_text())
    domain = [DomainInterface.model_validate(i) for i in case["domain"]]
    guest = [GuestInterface.model_validate(i) for i in case["guest"]]
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
