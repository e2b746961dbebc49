"""Golden tests: `data/domains/<case>.xml` → `<case>.json` (the DomainReport, `null`, or `{"error": ...}`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from collectors import domain_xml
from collectors.domain_xml import GUESTINFO_NS, MAX_DOMAIN_XML_BYTES, parse_domain
from collectors.errors import DomainXMLError
from plumbing.logs import RateLimitedLog
from schemas.codec import encode
from schemas.events import ReportOrder
from schemas.limits import MAX_ITEMS

DATA = Path(__file__).parent / "data" / "domains"
CASES = sorted(path.stem for path in DATA.glob("*.xml"))


def outcome(xml: str) -> Any:
    try:
        report = parse_domain(xml, node="node-1", observed_at=1700000000.5, state="running",
                              order=ReportOrder(boot="boot-1", uptime_ns=5_000_000_000))
    except DomainXMLError as exc:
        return {"error": type(exc).__name__, "message_contains": str(exc)}
    return None if report is None else orjson.loads(encode(report))


@pytest.mark.parametrize("case", CASES)
def test_domain_golden(case: str) -> None:
    expected = orjson.loads((DATA / f"{case}.json").read_bytes())
    actual = outcome((DATA / f"{case}.xml").read_text())
    if isinstance(expected, dict) and "error" in expected:
        assert isinstance(actual, dict) and actual.get("error") == expected["error"]
        assert expected["message_contains"] in actual["message_contains"]
    else:
        assert actual == expected


def test_every_case_has_expected_output() -> None:
    assert CASES
    assert sorted(path.stem for path in DATA.glob("*.json")) == CASES


def test_oversized_xml_is_refused_before_parsing() -> None:
    xml = "<domain><name>default_vm</name>" + " " * MAX_DOMAIN_XML_BYTES + "</domain>"
    with pytest.raises(DomainXMLError, match="too large"):
        parse_domain(xml, node="n", observed_at=0.0, state="running")


def test_state_is_passed_through() -> None:
    xml = (DATA / "channel_without_state.xml").read_text()
    report = parse_domain(xml, node="n", observed_at=1.0, state="paused")
    assert report is not None and report.state == "paused"


def test_guestinfo_interface_elements_beyond_the_limit_are_not_read(
    caplog: pytest.LogCaptureFixture, fresh_notes: None
) -> None:
    names = [f"n{i}" for i in range(MAX_ITEMS + 10)]
    metadata = "".join(f'<g:interface name="{name}" binding="bridge"/>' for name in names)
    devices = "".join(f"<interface type='ethernet'><alias name='ua-{name}'/></interface>" for name in names[-20:])
    xml = (
        f'<domain><name>default_vm</name><metadata><g:vmi xmlns:g="{GUESTINFO_NS}">{metadata}</g:vmi>'
        f"</metadata><devices>{devices}</devices></domain>"
    )
    report = parse_domain(xml, node="n", observed_at=0.0, state="running")
    assert report is not None
    bindings = {i.name: i.binding for i in report.interfaces}
    assert bindings[f"n{MAX_ITEMS - 1}"] == "bridge"
    assert bindings[f"n{MAX_ITEMS}"] == ""
    assert "reading the first" in caplog.text


@pytest.fixture
def fresh_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget what earlier tests had logged (the notes are rate-limited per VMI and kind)."""
    monkeypatch.setattr(domain_xml, "_notes", RateLimitedLog(domain_xml.log))


def test_bad_metadata_values_are_logged(caplog: pytest.LogCaptureFixture, fresh_notes: None) -> None:
    parse_domain((DATA / "metadata_bad_values_ignored.xml").read_text(), node="n", observed_at=0.0, state="running")
    assert "binding 'masquerade; rm -rf /' ignored" in caplog.text
    assert "sshPublicKeys='yes'> ignored" in caplog.text
    assert "named twice" in caplog.text


def test_notes_on_tenant_data_are_logged_once_per_vmi_and_kind(
    caplog: pytest.LogCaptureFixture, fresh_notes: None
) -> None:
    xml = (DATA / "metadata_bad_values_ignored.xml").read_text()
    caplog.set_level(logging.INFO, logger="collectors.domain_xml")
    parse_domain(xml, node="n", observed_at=0.0, state="running")
    first = [r for r in caplog.records if r.levelno >= logging.INFO]
    caplog.clear()
    for _ in range(5):
        parse_domain(xml, node="n", observed_at=0.0, state="running")
    assert first and not [r for r in caplog.records if r.levelno >= logging.INFO]
