"""The GuestInfo object, its selectable fields, selectors, Table cells and content negotiation (no I/O)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from sinks.guestinfo_api import Output, negotiate
from sinks.guestinfos import (
    FIELD_PATHS,
    encode_guestinfo,
    guestinfo,
    human_age,
    selectable_fields,
    table_cells,
    with_resource_version,
)
from sinks.selectors import SelectorError, labels_select_unlabelled, matches, parse_field_selector
from tests.sinks.conftest import DATA
from tests.sinks.records import empty_record, full_record

CASES = json.loads((DATA / "guestinfo" / "selectors.json").read_text())
CREATED = 1764237000.0


@pytest.mark.parametrize("case", CASES["field"], ids=lambda case: case["selector"] or "<empty>")
def test_field_selector(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(SelectorError, match=_literal(case["error"])):
            parse_field_selector(case["selector"], FIELD_PATHS)
        return
    terms = parse_field_selector(case["selector"], FIELD_PATHS)
    chosen = [name for name, fields in CASES["objects"].items() if matches(terms, fields)]
    assert chosen == case["names"]


@pytest.mark.parametrize("case", CASES["label"], ids=lambda case: case["selector"] or "<empty>")
def test_label_selector_against_unlabelled_objects(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(SelectorError, match=case["error"]):
            labels_select_unlabelled(case["selector"])
        return
    assert labels_select_unlabelled(case["selector"]) is case["unlabelled"]


def _literal(text: str) -> str:
    import re

    return re.escape(text)


def test_full_object_is_the_golden_one() -> None:
    body = with_resource_version(encode_guestinfo(guestinfo(full_record("ns1", "vm1", revision=7), CREATED)), 42)
    assert orjson.loads(body) == orjson.loads((DATA / "guestinfo" / "guestinfo-full.json").read_bytes())


def test_empty_object_omits_what_the_guest_did_not_say() -> None:
    obj = guestinfo(empty_record("ns1", "vm1", revision=1), CREATED)
    assert set(obj["status"]) <= {"nodeName", "agentConnected", "userCount", "filesystemCount", "observed",
                                  "conditions"}
    assert obj["metadata"]["creationTimestamp"] == "2025-11-27T09:50:00Z"


def test_selectable_fields_read_the_object() -> None:
    fields = selectable_fields(guestinfo(full_record("ns1", "vm1"), CREATED))
    assert fields == {
        "metadata.name": "vm1", "metadata.namespace": "ns1", "status.nodeName": "node-a",
        "status.guestOSInfo.id": "fedora", "status.guestOSInfo.versionId": "40",
        "status.guestOSInfo.kernelRelease": "6.8.5", "status.hostname": fields["status.hostname"],
        "status.agentVersion": fields["status.agentVersion"], "status.agentConnected": "true",
    }
    assert fields["status.hostname"] and fields["status.agentVersion"]
    assert selectable_fields(guestinfo(full_record("ns1", "vm1", agent_connected=False), CREATED))[
        "status.agentConnected"] == "false"


def test_resource_version_goes_into_metadata_only() -> None:
    record = full_record("ns1", "vm1")
    hostile = record.model_copy(update={"guest_agent_info": record.guest_agent_info.model_copy(
        update={"hostname": '"resourceVersion":""'})})
    body = with_resource_version(encode_guestinfo(guestinfo(hostile, CREATED)), 9)
    obj = orjson.loads(body)
    assert obj["metadata"]["resourceVersion"] == "9"
    assert obj["status"]["hostname"] == '"resourceVersion":""'


@pytest.mark.parametrize(("seconds", "shown"), [
    (0, "0s"), (119, "119s"), (120, "2m"), (185, "3m5s"), (600, "10m"), (179 * 60, "179m"), (3 * 3600, "3h"),
    (3 * 3600 + 60, "3h1m"), (8 * 3600, "8h"), (47 * 3600, "47h"), (48 * 3600, "2d"), (50 * 3600, "2d2h"),
    (8 * 86400, "8d"), (800 * 86400, "2y70d"), (3000 * 86400, "8y"),
])
def test_age_is_kubernetes_short_duration(seconds: int, shown: str) -> None:
    assert human_age(seconds) == shown


def test_table_cells() -> None:
    obj = orjson.loads(with_resource_version(encode_guestinfo(guestinfo(full_record("ns1", "vm1"), CREATED)), 3))
    cells = table_cells(obj, CREATED + 185)
    assert cells[:8] == ["vm1", "node-a", "Connected", "Fedora Linux 40 (Cloud Edition)", "6.8.5",
                         obj["status"]["hostname"], 3, "3m5s"]
    empty = orjson.loads(encode_guestinfo(guestinfo(empty_record("ns1", "vm2", 1), CREATED)))
    assert table_cells(empty, CREATED)[2:6] == ["Connected", "<unknown>", "<unknown>", "<unknown>"]


@pytest.mark.parametrize(("accept", "output"), [
    ("", Output()),
    ("application/json", Output()),
    ("*/*", Output()),
    ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
     Output("table", "v1")),
    ("application/json;as=Table;v=v1beta1;g=meta.k8s.io", Output("table", "v1beta1")),
    ("application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,"
     "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json", Output("metadata", "v1")),
    ("application/json;as=Table;v=v2;g=meta.k8s.io,application/json", Output()),
    ("application/yaml", None),
    ("application/vnd.kubernetes.protobuf", None),
])
def test_content_negotiation(accept: str, output: Output | None) -> None:
    assert negotiate(accept) == output
