"""The REST API over real HTTP (aiohttp client and kubectl), from a real store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from sinks.serve import start_api
from sinks.store import Store, Tombstone, open_store
from tests import tools
from tests.sinks.conftest import golden
from tests.sinks.records import empty_record, full_record
from tests.sinks.stores import delete, upsert

PREFIX = "/apis/subresources.kubevirt.io"
SUBRESOURCES = ("guestosinfo", "userlist", "filesystemlist")


@pytest.fixture
async def api(store: Store, unique: str) -> AsyncIterator[str]:
    """The API on a free port over a store holding `full`, `empty` and `offline` in `ns-<unique>`."""
    ns = f"ns-{unique}"
    await upsert(store, full_record(ns, "full"))
    await upsert(store, empty_record(ns, "empty"))
    await upsert(store, full_record(ns, "offline", agent_connected=False))
    runner, port = await start_api(store, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def fetch(url: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers["Content-Type"], await response.read()


@pytest.mark.parametrize("version", ["v1", "v1alpha3"])
@pytest.mark.parametrize("vmi", ["full", "empty"])
@pytest.mark.parametrize("sub", SUBRESOURCES)
async def test_bodies_match_golden_files(api: str, unique: str, version: str, vmi: str, sub: str) -> None:
    status, content_type, body = await fetch(
        f"{api}{PREFIX}/{version}/namespaces/ns-{unique}/virtualmachineinstances/{vmi}/{sub}"
    )
    assert (status, content_type) == (200, "application/json")
    assert body == golden(f"{sub}-{vmi}.json")


async def test_unknown_vmi_is_404_status(api: str, unique: str) -> None:
    status, content_type, body = await fetch(
        f"{api}{PREFIX}/v1/namespaces/ns-{unique}/virtualmachineinstances/ghost/guestosinfo"
    )
    assert (status, content_type) == (404, "application/json")
    assert body == golden("status-notfound-ghost.json")


@pytest.mark.parametrize("sub", SUBRESOURCES)
async def test_agent_not_connected_is_409_status(api: str, unique: str, sub: str) -> None:
    status, content_type, body = await fetch(
        f"{api}{PREFIX}/v1/namespaces/ns-{unique}/virtualmachineinstances/offline/{sub}"
    )
    assert (status, content_type) == (409, "application/json")
    assert body == golden("status-conflict-offline.json")


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        f"{PREFIX}/v2",
        f"{PREFIX}/v1/namespaces/ns/virtualmachineinstances/x/console",
        f"{PREFIX}/v1/namespaces/ns/virtualmachineinstances/x",
    ],
)
async def test_unknown_path_is_404_status(api: str, path: str) -> None:
    status, content_type, body = await fetch(api + path)
    assert (status, content_type) == (404, "application/json")
    assert orjson.loads(body) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "the server could not find the requested resource",
        "reason": "NotFound",
        "details": {},
        "code": 404,
    }


async def test_wrong_method_is_405_status(api: str, unique: str) -> None:
    url = f"{api}{PREFIX}/v1/namespaces/ns-{unique}/virtualmachineinstances/full/guestosinfo"
    async with aiohttp.ClientSession() as session, session.post(url, data=b"{}") as response:
        assert response.status == 405
        body = orjson.loads(await response.read())
    assert (body["kind"], body["reason"], body["code"]) == ("Status", "MethodNotAllowed", 405)


async def test_discovery_lists_the_three_subresources(api: str) -> None:
    status, content_type, body = await fetch(f"{api}{PREFIX}/v1")
    assert (status, content_type) == (200, "application/json")
    doc = orjson.loads(body)
    assert (doc["kind"], doc["groupVersion"]) == ("APIResourceList", "subresources.kubevirt.io/v1")
    assert [(r["name"], r["namespaced"]) for r in doc["resources"]] == [
        ("virtualmachineinstances/guestosinfo", True),
        ("virtualmachineinstances/userlist", True),
        ("virtualmachineinstances/filesystemlist", True),
    ]


async def test_healthz(api: str) -> None:
    status, _, body = await fetch(f"{api}/healthz")
    assert (status, body) == (200, b"ok")


async def test_metrics_count_requests_by_endpoint_and_code(api: str, unique: str) -> None:
    base = f"{api}{PREFIX}/v1/namespaces/ns-{unique}/virtualmachineinstances"
    _, _, before = await fetch(f"{api}/metrics")
    await fetch(f"{base}/full/userlist")
    await fetch(f"{base}/ghost/userlist")
    status, content_type, text = await fetch(f"{api}/metrics")
    assert status == 200 and content_type.startswith("text/plain")

    def value(metrics: bytes, line: str) -> float:
        for row in metrics.decode().splitlines():
            if row.startswith(line + " "):
                return float(row.rsplit(" ", 1)[1])
        return 0.0

    ok = 'guestinfo_sink_api_requests_total{code="200",endpoint="userlist"}'
    missing = 'guestinfo_sink_api_requests_total{code="404",endpoint="userlist"}'
    assert value(text, ok) == value(before, ok) + 1
    assert value(text, missing) == value(before, missing) + 1
    assert "guestinfo_sink_api_request_duration_seconds_bucket" in text.decode()
    assert "guestinfo_sink_store_records_written_total" in text.decode()


async def kubectl(server: str, path: str, home: Path) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        tools.kubectl(), "--server", server, "--cache-dir", str(home / "cache"), "get", "--raw", path,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stdout, stderr


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_kubectl_get_raw_prints_the_bodies(api: str, unique: str, tmp_path: Path) -> None:
    base = f"{PREFIX}/v1/namespaces/ns-{unique}/virtualmachineinstances"
    results = await asyncio.gather(*(kubectl(api, f"{base}/full/{sub}", tmp_path) for sub in SUBRESOURCES))
    for sub, (rc, stdout, stderr) in zip(SUBRESOURCES, results, strict=True):
        assert rc == 0, stderr
        assert stdout.rstrip(b"\n") == golden(f"{sub}-full.json")


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_kubectl_unknown_vmi_is_not_found(api: str, unique: str, tmp_path: Path) -> None:
    rc, _, stderr = await kubectl(
        api, f"{PREFIX}/v1/namespaces/ns-{unique}/virtualmachineinstances/ghost/guestosinfo", tmp_path
    )
    assert rc == 1
    assert b'Error from server (NotFound): virtualmachineinstance.kubevirt.io "ghost" not found' in stderr


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_store_failure_is_a_500_status_without_traceback(
    api: str, store: Store, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    await store.close()  # every read now fails inside the handler
    status, content_type, body = await fetch(
        f"{api}{PREFIX}/v1/namespaces/ns-{unique}/virtualmachineinstances/full/guestosinfo"
    )
    assert (status, content_type) == (500, "application/json")
    doc = orjson.loads(body)
    assert (doc["kind"], doc["reason"], doc["code"]) == ("Status", "InternalError", 500)
    assert b"Traceback" not in body and b"File " not in body
    assert "API: GET /apis/subresources.kubevirt.io/v1/namespaces" in caplog.text
    assert not any(r.exc_info for r in caplog.records)


async def test_served_bodies_follow_every_new_revision(api: str, store: Store, unique: str) -> None:
    """Bodies are kept per revision: a new revision is served at once, a disconnect turns into 409,
    and a VMI gone from the store is 404 again."""
    ns = f"ns-{unique}"
    url = f"{api}{PREFIX}/v1/namespaces/{ns}/virtualmachineinstances/full/guestosinfo"
    first = full_record(ns, "full")
    _, _, body = await fetch(url)
    assert orjson.loads(body)["hostname"] == first.guest_agent_info.hostname
    renamed = first.model_copy(
        update={"revision": 2, "guest_agent_info": first.guest_agent_info.model_copy(update={"hostname": "renamed"})}
    )
    await upsert(store, renamed)
    _, _, body = await fetch(url)
    assert orjson.loads(body)["hostname"] == "renamed"
    await upsert(store, renamed.model_copy(update={"revision": 3, "agent_connected": False}))
    status, _, _ = await fetch(url)
    assert status == 409
    await delete(store, ns, "full")
    status, _, _ = await fetch(url)
    assert status == 404


async def test_version_is_read_without_the_record(store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    assert await store.version(ns, "vm") is None
    await upsert(store, full_record(ns, "vm", revision=7))
    first = await store.version(ns, "vm")
    assert first is not None
    await upsert(store, full_record(ns, "vm", revision=7))  # a re-delivery rewrites the row: a new version
    second = await store.version(ns, "vm")
    assert second is not None and second > first


class CountingStore:
    """A store that counts the reads the API makes (everything else is the real store)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.gets = 0
        self.versions = 0

    async def get(self, namespace: str, name: str) -> Any:
        self.gets += 1
        return await self.inner.get(namespace, name)

    async def version(self, namespace: str, name: str) -> Any:
        self.versions += 1
        return await self.inner.version(namespace, name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_read_of_an_unchanged_vmi_reads_only_its_version(store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    record = full_record(ns, "vm")
    await upsert(store, record)
    counting = CountingStore(store)
    runner, port = await start_api(counting, "127.0.0.1", 0)  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{port}{PREFIX}/v1/namespaces/{ns}/virtualmachineinstances/vm/guestosinfo"
    try:
        bodies = [(await fetch(url))[2] for _ in range(3)]
        assert (counting.versions, counting.gets) == (3, 1), "the record is read and encoded once"
        await upsert(store, record.model_copy(update={"revision": 2}))
        bodies.append((await fetch(url))[2])
        assert (counting.versions, counting.gets) == (4, 2), "a new version is read again"
    finally:
        await runner.cleanup()
    assert len(set(bodies)) == 1 and bodies[0] == golden("guestosinfo-full.json")


async def test_a_write_by_another_store_connection_is_served_at_once(
    api: str, store_url: str, unique: str
) -> None:
    """As when the store sink (or another serve process) writes: every committed revision is the next body."""
    ns = f"ns-{unique}"
    url = f"{api}{PREFIX}/v1/namespaces/{ns}/virtualmachineinstances/full/guestosinfo"
    writer = await open_store(store_url)
    try:
        record = full_record(ns, "full")
        async with aiohttp.ClientSession() as session:
            for revision in range(2, 12):
                hostname = f"host-{revision}"
                record = record.model_copy(update={
                    "revision": revision,
                    "guest_agent_info": record.guest_agent_info.model_copy(update={"hostname": hostname}),
                })
                await writer.write_batch([record])
                async with session.get(url) as response:
                    assert response.status == 200
                    assert orjson.loads(await response.read())["hostname"] == hostname
            await writer.write_batch([Tombstone(ns, "full")])
            async with session.get(url) as response:
                assert response.status == 404
    finally:
        await writer.close()
