"""Golden files: the exact bytes of every KubeVirt body and status type (golden/*.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas import kubevirt
from schemas.codec import DecodeError, decode, encode, encode_kubevirt_body
from schemas.events import DomainReport

CASES = sorted((Path(__file__).parent / "golden").glob("*.json"))
MODELS = {
    name: getattr(kubevirt, name)
    for name in (
        "GuestAgentInfo", "GuestOSUserList", "FileSystemList", "NetworkInterface", "VMICondition", "GuestOSInfo"
    )
}


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_golden_bytes(case: Path) -> None:
    data = json.loads(case.read_text())
    model = MODELS[data["model"]].model_validate(data["input"])
    body = encode_kubevirt_body(model) if data["encoding"] == "kubevirt_body" else encode(model)
    assert body.decode() == data["expected"], data["rule"]


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_golden_round_trip(case: Path) -> None:
    """What we write, we read back to the same value."""
    data = json.loads(case.read_text())
    model_type = MODELS[data["model"]]
    model = model_type.model_validate(data["input"])
    assert decode(model_type, data["expected"]) == model


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b'{"userName": "x", "loginTime": NaN}', "invalid GuestOSUser"),
        (b'{"userName": "x", "loginTime": Infinity}', "invalid GuestOSUser"),
        (b'{"userName": 5}', "invalid GuestOSUser"),
        (b'{"userName": "x", "loginTime": -1}', "invalid GuestOSUser"),
        (b'{"userName": "' + b"a" * 5000 + b'"}', "invalid GuestOSUser"),
    ],
)
def test_decode_errors_say_why(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode(kubevirt.GuestOSUser, payload)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_raw_event_times_must_be_finite(literal: bytes) -> None:
    """A time that compares false with everything (NaN) or beats every later one would break ordering."""
    payload = b'{"vmi": {"namespace": "ns", "name": "vm"}, "node": "n", "observedAt": ' + literal + b"}"
    with pytest.raises(DecodeError, match="invalid DomainReport"):
        decode(DomainReport, payload)
