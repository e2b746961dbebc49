"""The strict emulator refuses what a real apiserver refuses (so the status sink tests mean something)."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from tests.sinks.strict_kmock import StrictKubernetesEmulator

pytestmark = pytest.mark.kmock(cls=StrictKubernetesEmulator)

NS, NAME = "default", "vm1"
URL = f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances/{NAME}"


async def patch(kmock: StrictKubernetesEmulator, path: str, body: Any, content_type: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": content_type} if content_type else {}
    skip = () if content_type else ("Content-Type",)
    async with aiohttp.ClientSession() as session, session.patch(
        f"{str(kmock.url).rstrip('/')}{path}", data=orjson.dumps(body), headers=headers, skip_auto_headers=skip
    ) as response:
        assert response.headers["Content-Type"] == "application/json"
        return response.status, orjson.loads(await response.read())


async def test_status_subresource_does_not_exist(kmock: StrictKubernetesEmulator) -> None:
    kmock.seed_vmi(NS, NAME)
    code, body = await patch(kmock, URL + "/status", {"status": {"x": 1}}, "application/merge-patch+json")
    assert (code, body["reason"]) == (404, "NotFound")
    assert "status" not in kmock.vmi(NS, NAME)


@pytest.mark.parametrize(
    ("content_type", "body", "code", "reason"),
    [
        (None, {"status": {"x": 1}}, 415, "UnsupportedMediaType"),
        ("application/json", {"status": {"x": 1}}, 415, "UnsupportedMediaType"),
        ("application/strategic-merge-patch+json", {"status": {"x": 1}}, 415, "UnsupportedMediaType"),
        ("application/json-patch+json", {"status": {"x": 1}}, 400, "BadRequest"),
        ("application/merge-patch+json", [{"op": "add", "path": "/status", "value": {}}], 400, "BadRequest"),
    ],
)
async def test_wrong_content_type_is_refused(
    kmock: StrictKubernetesEmulator, content_type: str | None, body: Any, code: int, reason: str
) -> None:
    kmock.seed_vmi(NS, NAME)
    status, answer = await patch(kmock, URL, body, content_type)
    assert (status, answer["code"], answer["reason"], answer["kind"]) == (code, code, reason, "Status")
    assert "status" not in kmock.vmi(NS, NAME)
    assert kmock.patches()[-1].headers.get("Content-Type") == content_type


async def test_failed_test_op_is_422_and_changes_nothing(kmock: StrictKubernetesEmulator) -> None:
    kmock.seed_vmi(NS, NAME)
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "stale"},
        {"op": "add", "path": "/status", "value": {"x": 1}},
    ]
    code, body = await patch(kmock, URL, ops, "application/json-patch+json")
    assert (code, body["reason"], body["kind"]) == (422, "Invalid", "Status")
    assert "traceback" not in body["details"]
    assert "status" not in kmock.vmi(NS, NAME)


async def test_every_write_bumps_the_resource_version(kmock: StrictKubernetesEmulator) -> None:
    kmock.seed_vmi(NS, NAME)
    first = kmock.vmi(NS, NAME)["metadata"]["resourceVersion"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": first},
        {"op": "add", "path": "/status", "value": {"x": 1}},
    ]
    code, body = await patch(kmock, URL, ops, "application/json-patch+json")
    second = kmock.vmi(NS, NAME)["metadata"]["resourceVersion"]
    assert code == 200 and body["status"] == {"x": 1}
    assert second != first and body["metadata"]["resourceVersion"] == second
    # The same patch again tests the old version: refused.
    assert (await patch(kmock, URL, ops, "application/json-patch+json"))[0] == 422
    merge = {"metadata": {"resourceVersion": first}, "status": {"x": 2}}
    assert (await patch(kmock, URL, merge, "application/merge-patch+json"))[0] == 409
    merge["metadata"]["resourceVersion"] = second
    assert (await patch(kmock, URL, merge, "application/merge-patch+json"))[0] == 200
    assert kmock.vmi(NS, NAME)["status"] == {"x": 2}
    assert kmock.vmi(NS, NAME)["metadata"]["resourceVersion"] not in (first, second)
