"""The OpenAPI documents: valid, self-contained, in step with what the server serves and sends."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from openapi_spec_validator import OpenAPIV2SpecValidator, OpenAPIV30SpecValidator, validate
from pydantic import BaseModel
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from schemas.codec import encode_kubevirt_body
from schemas.kubevirt import (
    FileSystem,
    FileSystemDisk,
    FileSystemInfo,
    FileSystemList,
    GuestAgentCommandInfo,
    GuestAgentInfo,
    GuestOSInfo,
    GuestOSUser,
    GuestOSUserList,
)
from sinks.openapi import (
    AGENT_INFO,
    FS_LIST,
    GROUP_VERSIONS,
    GUESTINFO,
    RAW_EXTENSION,
    USER_LIST,
    WATCH_EVENT,
    openapi_v2,
    openapi_v3,
    openapi_v3_index,
)

GI = "/apis/guestinfo.kubevirt.io/v1alpha1"
SERVED_GUESTINFO_PATHS = {
    f"{GI}/",
    f"{GI}/guestinfos",
    f"{GI}/namespaces/{{namespace}}/guestinfos",
    f"{GI}/namespaces/{{namespace}}/guestinfos/{{name}}",
    f"{GI}/namespaces/{{namespace}}/guestinfos/{{name}}/guestosinfo",
    f"{GI}/namespaces/{{namespace}}/guestinfos/{{name}}/userlist",
    f"{GI}/namespaces/{{namespace}}/guestinfos/{{name}}/filesystemlist",
}
SAMPLE: dict[str, Any] = {
    "kind": "GuestInfo", "apiVersion": "guestinfo.kubevirt.io/v1alpha1",
    "metadata": {"name": "vm1", "namespace": "ns1", "resourceVersion": "42",
                 "creationTimestamp": "2026-11-27T10:00:00Z", "uid": "uid-1"},
    "status": {
        "nodeName": "node-a", "agentConnected": True,
        "guestOSInfo": {"name": "Fedora Linux", "kernelRelease": "6.8.5", "version": "40 (Cloud Edition)",
                        "prettyName": "Fedora Linux 40 (Cloud Edition)", "versionId": "40",
                        "kernelVersion": "#1 SMP", "machine": "x86_64", "id": "fedora"},
        "hostname": "vm1.example", "timezone": "UTC, 0", "agentVersion": "8.2.0",
        "interfaces": [{"ipAddress": "10.0.2.2", "mac": "52:54:00:aa:bb:cc", "name": "default",
                        "ipAddresses": ["10.0.2.2"], "podInterfaceName": "eth0", "interfaceName": "eth0",
                        "infoSource": "domain, guest-agent", "queueCount": 1, "linkState": "up"}],
        "conditions": [{"type": "AgentConnected", "status": "True", "lastProbeTime": "2026-11-27T10:00:00Z",
                        "lastTransitionTime": None, "reason": "", "message": ""}],
        "userCount": 1, "filesystemCount": 2, "revision": 7,
        "observed": {"domain": "2026-11-27T10:00:00Z", "os": "2026-11-27T10:00:00Z"},
    },
}


def v2() -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(openapi_v2())
    return doc


def v3(group_version: str) -> dict[str, Any]:
    body = openapi_v3(group_version)
    assert body is not None
    doc: dict[str, Any] = orjson.loads(body)
    return doc


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [ref for key, value in node.items() for ref in ([value] if key == "$ref" else refs(value))]
    if isinstance(node, list):
        return [ref for item in node for ref in refs(item)]
    return []


def schema_validator(group_version: str, name: str) -> OAS30Validator:
    """A validator of definition `name` of a v3 document, its references resolved in that document."""
    uri = f"urn:openapi:{group_version}"
    registry: Registry[Any] = Registry().with_resource(uri, Resource.from_contents(v3(group_version), DRAFT4))
    return OAS30Validator({"$ref": f"{uri}#/components/schemas/{name}"}, registry=registry,
                          format_checker=oas30_format_checker)


def documents() -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """(document, its definitions, the prefix of its references) of v2 and of every v3 group-version."""
    out = [(v2(), v2()["definitions"], "#/definitions/")]
    for group_version in GROUP_VERSIONS:
        doc = v3(group_version)
        out.append((doc, doc["components"]["schemas"], "#/components/schemas/"))
    return out


def test_v2_is_valid_swagger() -> None:
    doc = v2()
    assert doc["swagger"] == "2.0" and doc["info"] == {"title": "guestinfo", "version": "v1alpha1"}
    validate(doc, cls=OpenAPIV2SpecValidator)


@pytest.mark.parametrize("group_version", GROUP_VERSIONS)
def test_v3_documents_are_valid(group_version: str) -> None:
    doc = v3(group_version)
    assert doc["openapi"] == "3.0.0"
    validate(doc, cls=OpenAPIV30SpecValidator)
    assert all(path.startswith(f"/apis/{group_version}/") for path in doc["paths"])


def test_unknown_group_version_has_no_document() -> None:
    assert openapi_v3("guestinfo.kubevirt.io/v1") is None
    assert openapi_v3("apis/guestinfo.kubevirt.io/v1alpha1") is None


def test_documents_are_built_once() -> None:
    assert openapi_v2() is openapi_v2()
    assert openapi_v3_index() is openapi_v3_index()
    assert openapi_v3(GROUP_VERSIONS[0]) is openapi_v3(GROUP_VERSIONS[0])


def test_every_definition_is_reached_from_the_paths_and_none_is_missing() -> None:
    for doc, definitions, prefix in documents():
        assert all(ref.startswith(prefix) for ref in refs(doc))
        reached: set[str] = set()
        pending = refs(doc["paths"])
        while pending:
            name = pending.pop().removeprefix(prefix)
            assert name in definitions, name
            if name not in reached:
                reached.add(name)
                pending += refs(definitions[name])
        assert reached == set(definitions)


def test_v2_and_v3_describe_the_same_schemas() -> None:
    definitions = v2()["definitions"]
    for group_version in GROUP_VERSIONS:
        schemas = v3(group_version)["components"]["schemas"]
        # Swagger 2.0 has one schema per response: a watch's stream of WatchEvents is not described there.
        assert set(schemas) - set(definitions) <= {WATCH_EVENT, RAW_EXTENSION}
        for name, schema in schemas.items():
            if name in (WATCH_EVENT, RAW_EXTENSION):
                continue
            assert schema.get("properties", {}).keys() == definitions[name].get("properties", {}).keys(), name
            assert schema.get("required") == definitions[name].get("required"), name


def test_every_field_is_described() -> None:
    for _, definitions, _ in documents():
        for name, schema in definitions.items():
            assert schema["description"], name
            for field, prop in schema.get("properties", {}).items():
                assert prop.get("description"), f"{name}.{field}"


def test_index_lists_the_group_versions_with_the_hash_of_their_documents() -> None:
    index = orjson.loads(openapi_v3_index())
    assert set(index) == {"paths"}
    assert set(index["paths"]) == {
        "apis/guestinfo.kubevirt.io/v1alpha1",
        "apis/subresources.kubevirt.io/v1",
        "apis/subresources.kubevirt.io/v1alpha3",
    }
    for key, entry in index["paths"].items():
        group_version = key.removeprefix("apis/")
        body = openapi_v3(group_version)
        assert body is not None
        url, _, digest = entry["serverRelativeURL"].partition("?hash=")
        assert url == f"/openapi/v3/{key}"
        assert digest == hashlib.sha512(body).hexdigest().upper()


def test_guestinfo_paths_are_the_served_ones() -> None:
    documented = {path for path in v2()["paths"] if path.startswith(f"{GI}/")}
    assert documented == SERVED_GUESTINFO_PATHS
    assert set(v3("guestinfo.kubevirt.io/v1alpha1")["paths"]) == SERVED_GUESTINFO_PATHS
    kubevirt = {path for path in v2()["paths"] if not path.startswith(f"{GI}/")}
    assert len(kubevirt) == 6
    assert all(path.startswith("/apis/subresources.kubevirt.io/v1") for path in kubevirt)


def test_operations_follow_kubernetes_conventions() -> None:
    paths = v2()["paths"]
    listing = paths[f"{GI}/namespaces/{{namespace}}/guestinfos"]
    op = listing["get"]
    assert op["operationId"] == "listGuestinfoKubevirtIoV1alpha1NamespacedGuestInfo"
    assert op["x-kubernetes-action"] == "list" and op["tags"] == ["guestinfoKubevirtIo_v1alpha1"]
    assert op["produces"] == ["application/json", "application/json;stream=watch"]
    names = {param["name"] for param in listing["parameters"]}
    assert {"namespace", "watch", "limit", "continue", "sendInitialEvents", "timeoutSeconds"} <= names
    assert paths[f"{GI}/guestinfos"]["get"]["operationId"] == "listGuestinfoKubevirtIoV1alpha1GuestInfoForAllNamespaces"
    read = paths[f"{GI}/namespaces/{{namespace}}/guestinfos/{{name}}"]["get"]
    assert read["operationId"] == "readGuestinfoKubevirtIoV1alpha1NamespacedGuestInfo"
    assert read["x-kubernetes-group-version-kind"] == {
        "group": "guestinfo.kubevirt.io", "version": "v1alpha1", "kind": "GuestInfo"
    }
    for doc, _, _ in documents():
        ops = [item["get"] for item in doc["paths"].values()]
        assert len({op["operationId"] for op in ops}) == len(ops)
        assert all(op["responses"]["401"] == {"description": "Unauthorized"} for op in ops)
        assert all("200" in op["responses"] for op in ops)
    watch = v3("guestinfo.kubevirt.io/v1alpha1")["paths"][f"{GI}/guestinfos"]["get"]["responses"]["200"]["content"]
    assert set(watch) == {"application/json", "application/json;stream=watch"}


def test_guestinfo_definitions_carry_their_group_version_kind() -> None:
    for _, definitions, _ in documents()[:2]:
        assert definitions[GUESTINFO]["x-kubernetes-group-version-kind"] == [
            {"group": "guestinfo.kubevirt.io", "version": "v1alpha1", "kind": "GuestInfo"}
        ]
        assert definitions[f"{GUESTINFO}List"]["x-kubernetes-group-version-kind"][0]["kind"] == "GuestInfoList"


def test_a_guestinfo_validates_against_its_schema() -> None:
    validator = schema_validator("guestinfo.kubevirt.io/v1alpha1", GUESTINFO)
    validator.validate(SAMPLE)
    validator.validate({"metadata": SAMPLE["metadata"], "status": {
        key: SAMPLE["status"][key] for key in ("nodeName", "agentConnected", "userCount", "filesystemCount", "revision")
    }})
    listing = {"kind": "GuestInfoList", "apiVersion": "guestinfo.kubevirt.io/v1alpha1",
               "metadata": {"resourceVersion": "42", "continue": "abc"}, "items": [SAMPLE]}
    schema_validator("guestinfo.kubevirt.io/v1alpha1", f"{GUESTINFO}List").validate(listing)
    broken = {**SAMPLE, "status": {**SAMPLE["status"], "userCount": "1"}}
    with pytest.raises(ValidationError):
        validator.validate(broken)
    with pytest.raises(ValidationError):
        validator.validate({**SAMPLE, "status": {**SAMPLE["status"], "observed": {"os": "yesterday"}}})


@pytest.mark.parametrize("group_version", GROUP_VERSIONS)
def test_the_kubevirt_bodies_validate_against_their_schemas(group_version: str) -> None:
    filesystem = FileSystem(disk_name="vda1", mount_point="/", file_system_type="xfs", used_bytes=2**40,
                            total_bytes=2**41, disk=[FileSystemDisk(serial="abc", bus_type="virtio")])
    user = GuestOSUser(user_name="fedora", domain="", login_time=1718000000.25)
    info = GuestAgentInfo(guest_agent_version="8.2.0", supported_commands=[GuestAgentCommandInfo(name="guest-ping")],
                          hostname="vm1", os=GuestOSInfo(id="fedora", version_id="40"), timezone="UTC, 0",
                          user_list=[user], fs_info=FileSystemInfo(disks=[filesystem]))
    bodies: dict[str, list[BaseModel]] = {
        AGENT_INFO: [info, GuestAgentInfo()],
        USER_LIST: [GuestOSUserList(items=[user]), GuestOSUserList()],
        FS_LIST: [FileSystemList(items=[filesystem]), FileSystemList()],
    }
    assert orjson.loads(encode_kubevirt_body(GuestAgentInfo()))["fsInfo"] == {"disks": None}
    for name, models in bodies.items():
        validator = schema_validator(group_version, name)
        for model in models:
            validator.validate(orjson.loads(encode_kubevirt_body(model)))
