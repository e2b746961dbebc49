"""The guestinfo.kubevirt.io/v1alpha1 API over real HTTP, on SQLite and PostgreSQL: discovery, get,
list with selectors and paging, Table output, watch with resume, bookmarks and selector transitions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from schemas.vmi import VMIRecord
from sinks.api import make_app
from sinks.store import Store, Tombstone
from sinks.watch import ChangeFeed, Follower, WatchEnded
from tests.sinks.conftest import golden
from tests.sinks.records import full_record
from tests.sinks.stores import delete, upsert
from tests.sinks.test_guestinfo_store import with_hostname

GI = "/apis/guestinfo.kubevirt.io/v1alpha1"
TABLE = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
         "application/json")


@pytest.fixture
async def api(store: Store) -> AsyncIterator[str]:
    runner = web.AppRunner(make_app(store, bookmark_seconds=0.3), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def get(base: str, path: str, accept: str = "application/json") -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(base + path, headers={"Accept": accept}) as response:
        return response.status, orjson.loads(await response.read())


async def test_discovery(api: str) -> None:
    status, groups = await get(api, "/apis")
    assert status == 200 and groups["kind"] == "APIGroupList"
    assert [g["name"] for g in groups["groups"]] == ["guestinfo.kubevirt.io", "subresources.kubevirt.io"]
    status, group = await get(api, "/apis/guestinfo.kubevirt.io")
    assert status == 200 and group["preferredVersion"] == {"groupVersion": "guestinfo.kubevirt.io/v1alpha1",
                                                           "version": "v1alpha1"}
    status, resources = await get(api, GI)
    assert status == 200 and resources["groupVersion"] == "guestinfo.kubevirt.io/v1alpha1"
    main = resources["resources"][0]
    assert (main["name"], main["kind"], main["shortNames"], main["verbs"]) == (
        "guestinfos", "GuestInfo", ["gi"], ["get", "list", "watch"])
    assert {r["name"] for r in resources["resources"][1:]} == {
        "guestinfos/guestosinfo", "guestinfos/userlist", "guestinfos/filesystemlist"}
    assert all(r["namespaced"] for r in resources["resources"])  # the aggregator needs them to agree
    for path in ("/openapi/v2", "/openapi/v3", "/openapi/v3/apis/guestinfo.kubevirt.io/v1alpha1?hash=x"):
        status, _ = await get(api, path)
        assert status == 200, path
    assert (await get(api, "/openapi/v3/apis/nope.io/v1"))[0] == 404


async def test_get_and_its_subresources(api: str, store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    await upsert(store, full_record(ns, "full", revision=2))
    status, obj = await get(api, f"{GI}/namespaces/{ns}/guestinfos/full")
    assert status == 200 and obj["kind"] == "GuestInfo"
    stored = await store.get_guestinfo(ns, "full")
    assert stored is not None and obj["metadata"]["resourceVersion"] == str(stored.resource_version)
    for sub in ("guestosinfo", "userlist", "filesystemlist"):
        async with aiohttp.ClientSession() as session, session.get(
            f"{api}{GI}/namespaces/{ns}/guestinfos/full/{sub}") as response:
            assert response.status == 200 and await response.read() == golden(f"{sub}-full.json")
    status, missing = await get(api, f"{GI}/namespaces/{ns}/guestinfos/ghost")
    assert (status, missing) == (404, {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'guestinfos.guestinfo.kubevirt.io "ghost" not found', "reason": "NotFound",
        "details": {"name": "ghost", "group": "guestinfo.kubevirt.io", "kind": "guestinfos"}, "code": 404})
    assert (await get(api, f"{GI}/namespaces/{ns}/guestinfos/ghost/userlist"))[1]["reason"] == "NotFound"
    status, table = await get(api, f"{GI}/namespaces/{ns}/guestinfos/full", TABLE)
    assert status == 200 and table["kind"] == "Table" and len(table["rows"]) == 1
    assert table["rows"][0]["object"]["metadata"]["name"] == "full"


async def test_list_select_and_page(api: str, store: Store, unique: str) -> None:
    ns, other = f"ns-{unique}", f"other-{unique}"
    await store.write_batch([full_record(ns, f"vm{i}", 1) for i in range(5)] + [full_record(other, "vm9", 1)])
    status, listed = await get(api, f"{GI}/namespaces/{ns}/guestinfos")
    assert status == 200 and listed["kind"] == "GuestInfoList"
    assert [item["metadata"]["name"] for item in listed["items"]] == [f"vm{i}" for i in range(5)]
    status, everywhere = await get(api, f"{GI}/guestinfos?fieldSelector=metadata.namespace%3D{other}")
    assert [item["metadata"]["name"] for item in everywhere["items"]] == ["vm9"]
    names, token, versions = [], "", set()
    while True:
        status, page = await get(api, f"{GI}/namespaces/{ns}/guestinfos?limit=2&continue={token}")
        assert status == 200
        names += [item["metadata"]["name"] for item in page["items"]]
        versions.add(page["metadata"]["resourceVersion"])
        if len(names) == 2:  # a change after the first page: later pages still show the first page's version
            await upsert(store, with_hostname(full_record(ns, "vm3", 1), "moved", 2))
        token = page["metadata"].get("continue", "")
        if not token:
            break
    assert names == [f"vm{i}" for i in range(5)] and len(versions) == 1
    status, now = await get(api, f"{GI}/namespaces/{ns}/guestinfos?fieldSelector=status.hostname%3Dmoved")
    assert [item["metadata"]["name"] for item in now["items"]] == ["vm3"]


@pytest.mark.parametrize(("query", "code", "message"), [
    ("fieldSelector=spec.x%3D1", 400, "field label not supported: spec.x"),
    ("fieldSelector=status.hostname", 400, "can't understand"),
    ("labelSelector=a%20b%20c", 400, "unable to parse requirement"),
    ("limit=x", 400, "expected an integer"),
    ("continue=garbage", 400, "continue key is not valid"),
    ("continue=eyJydiI6MSwic3RhcnQiOlsiYSIsImIiXX0&resourceVersion=1", 400, "not allowed when using continue"),
    ("resourceVersion=99999999999", 504, "Too large resource version"),
    ("resourceVersionMatch=Exact", 422, "resourceVersionMatch is forbidden unless resourceVersion is provided"),
    ("watch=1&sendInitialEvents=true", 422, "unless allowWatchBookmarks=true"),
    ("watch=maybe", 400, "expected true or false"),
])
async def test_bad_requests_are_status_bodies(api: str, query: str, code: int, message: str) -> None:
    status, body = await get(api, f"{GI}/guestinfos?{query}")
    assert status == code and body["kind"] == "Status" and body["code"] == code
    assert message in body["message"]


async def test_label_selector_matches_every_or_no_guestinfo(api: str, store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    await upsert(store, full_record(ns, "vm1", 1))
    assert len((await get(api, f"{GI}/namespaces/{ns}/guestinfos?labelSelector=!app"))[1]["items"]) == 1
    assert (await get(api, f"{GI}/namespaces/{ns}/guestinfos?labelSelector=app%3Dweb"))[1]["items"] == []


async def test_table_and_metadata_lists(api: str, store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    await store.write_batch([full_record(ns, "a", 1), full_record(ns, "b", 1)])
    status, table = await get(api, f"{GI}/namespaces/{ns}/guestinfos?limit=1", TABLE)
    assert status == 200 and table["apiVersion"] == "meta.k8s.io/v1"
    assert [c["name"] for c in table["columnDefinitions"]][:3] == ["Name", "Node", "Agent"]
    assert table["metadata"]["continue"] and table["rows"][0]["cells"][0] == "a"
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    status, bare = await get(api, f"{GI}/namespaces/{ns}/guestinfos?includeObject=None", TABLE)
    assert "object" not in bare["rows"][0]
    status, partial = await get(api, f"{GI}/namespaces/{ns}/guestinfos",
                                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1")
    assert partial["kind"] == "PartialObjectMetadataList" and "status" not in partial["items"][0]
    assert (await get(api, f"{GI}/guestinfos", "application/yaml"))[0] == 406


class Watch:
    """A watch over real HTTP: `next()` is the next event (type, name, hostname, resourceVersion)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout: float = 10.0) -> tuple[str, str, Any, str]:
        line = await asyncio.wait_for(self.response.content.readline(), timeout)
        assert line, "the watch ended"
        event = orjson.loads(line)
        obj = event["object"]
        if event["type"] in ("BOOKMARK", "ERROR"):
            return event["type"], "", obj, obj.get("metadata", {}).get("resourceVersion", "")
        return event["type"], obj["metadata"]["name"], obj["status"].get("hostname"), obj["metadata"][
            "resourceVersion"]

    async def skip_bookmarks(self) -> tuple[str, str, Any, str]:
        while (event := await self.next())[0] == "BOOKMARK":
            pass
        return event


@contextlib.asynccontextmanager
async def watching(base: str, path: str, accept: str = "application/json") -> AsyncIterator[Watch]:
    async with aiohttp.ClientSession() as session, session.get(base + path, headers={"Accept": accept}) as response:
        assert response.status == 200
        yield Watch(response)


async def test_watch_from_a_list_then_resume(api: str, store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    vm1 = full_record(ns, "vm1", 1)
    await upsert(store, vm1)
    _, listed = await get(api, f"{GI}/namespaces/{ns}/guestinfos")
    version = listed["metadata"]["resourceVersion"]
    async with watching(api, f"{GI}/namespaces/{ns}/guestinfos?watch=1&resourceVersion={version}") as watch:
        await upsert(store, with_hostname(vm1, "one", 2))
        await upsert(store, full_record(ns, "vm2", 1))
        await upsert(store, full_record(f"other-{unique}", "vm3", 1))  # another namespace: not sent
        await delete(store, ns, "vm1")
        events = [await watch.next() for _ in range(3)]
    assert [event[:3] for event in events] == [
        ("MODIFIED", "vm1", "one"), ("ADDED", "vm2", vm1.guest_agent_info.hostname), ("DELETED", "vm1", "one")]
    # Resume after the first event: the rest again, in order, from the change log.
    async with watching(api, f"{GI}/namespaces/{ns}/guestinfos?watch=1&resourceVersion={events[0][3]}") as watch:
        again = [await watch.next() for _ in range(2)]
    assert again == events[1:]


async def test_watch_without_a_version_starts_with_every_object_then_bookmarks(
    api: str, store: Store, unique: str
) -> None:
    ns = f"ns-{unique}"
    await store.write_batch([full_record(ns, "a", 1), full_record(ns, "b", 1)])
    path = f"{GI}/namespaces/{ns}/guestinfos?watch=true&allowWatchBookmarks=true"
    async with watching(api, path) as watch:
        assert [(await watch.next())[:2] for _ in range(2)] == [("ADDED", "a"), ("ADDED", "b")]
        bookmark = await watch.next()
        assert bookmark[0] == "BOOKMARK" and int(bookmark[3]) >= int(await store.resource_version())
        await upsert(store, with_hostname(full_record(ns, "a", 1), "x", 2))
        assert (await watch.skip_bookmarks())[:3] == ("MODIFIED", "a", "x")
    path += "&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
    async with watching(api, path) as watch:
        assert [(await watch.next())[:2] for _ in range(2)] == [("ADDED", "a"), ("ADDED", "b")]
        end = await watch.next()
        assert end[0] == "BOOKMARK" and end[2]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_watch_with_a_field_selector_sees_objects_come_and_go(api: str, store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    vm = full_record(ns, "vm", 1)
    await upsert(store, vm)
    version = await store.resource_version()
    path = f"{GI}/namespaces/{ns}/guestinfos?watch=1&resourceVersion={version}&fieldSelector=status.hostname%3Dweb"
    async with watching(api, path) as watch:
        await upsert(store, with_hostname(vm, "web", 2))  # starts to match
        await upsert(store, with_hostname(vm, "web", 3).model_copy(update={"node": "node-b"}))  # still matches
        await upsert(store, with_hostname(vm, "db", 4))  # stops matching
        await upsert(store, with_hostname(vm, "db2", 5))  # never matched: nothing
        await upsert(store, with_hostname(vm, "web", 6))
        events = [(await watch.next())[:3] for _ in range(4)]
    assert events == [("ADDED", "vm", "web"), ("MODIFIED", "vm", "web"), ("DELETED", "vm", "web"),
                      ("ADDED", "vm", "web")]


async def test_watch_from_a_compacted_version_is_410(api: str, store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    vm = full_record(ns, "vm", 1)
    await upsert(store, vm)
    old = await store.resource_version()
    for revision in range(2, 5):
        await upsert(store, with_hostname(vm, f"h{revision}", revision))
    await store.compact(3600, 1)
    async with watching(api, f"{GI}/guestinfos?watch=1&resourceVersion={old}") as watch:
        kind, _, status, _ = await watch.next()
    assert kind == "ERROR" and (status["code"], status["reason"]) == (410, "Expired")
    assert status["message"].startswith("too old resource version")  # from the replay, or the feed itself


async def test_watch_as_table(api: str, store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    version = await store.resource_version()
    async with aiohttp.ClientSession() as session, session.get(
        f"{api}{GI}/namespaces/{ns}/guestinfos?watch=1&resourceVersion={version}", headers={"Accept": TABLE}
    ) as response:
        await upsert(store, full_record(ns, "vm", 1))
        event = orjson.loads(await asyncio.wait_for(response.content.readline(), 10))
    assert event["type"] == "ADDED" and event["object"]["kind"] == "Table"
    assert event["object"]["rows"][0]["cells"][0] == "vm"


async def test_watch_with_a_tombstone_only_batch(api: str, store: Store, unique: str) -> None:
    """A batch of deletions is seen like any other."""
    ns = f"ns-{unique}"
    records: list[VMIRecord] = [full_record(ns, f"vm{i}", 1) for i in range(3)]
    await store.write_batch(records)
    version = await store.resource_version()
    async with watching(api, f"{GI}/namespaces/{ns}/guestinfos?watch=1&resourceVersion={version}") as watch:
        await store.write_batch([Tombstone(ns, f"vm{i}") for i in range(3)])
        assert [(await watch.next())[:2] for _ in range(3)] == [("DELETED", f"vm{i}") for i in range(3)]


async def test_a_watch_that_fell_behind_claims_no_bookmark_and_ends(store: Store, unique: str) -> None:
    """Entries dropped for a slow watch must never be covered by a bookmark: the client would skip them."""
    ns = f"ns-{unique}"
    feed = ChangeFeed(store, backlog=5)
    await feed._read()
    async with Follower(feed, feed.position) as follower:
        await store.write_batch([full_record(ns, f"vm{i}", 1) for i in range(20)])
        await feed._read()  # offers 20 entries to a watch that holds 5
        assert follower.caught_up is None
        with pytest.raises(WatchEnded):
            await follower.next(1.0)


class FailingLists:
    """The real store, except that lists fail (as a database gone away would)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    async def list_guestinfos(self, query: Any) -> Any:
        raise OSError("connection to the database lost")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_failure_inside_a_watch_is_an_error_event_not_a_second_response(store: Store, unique: str) -> None:
    runner = web.AppRunner(make_app(FailingLists(store)), access_log=None)  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as session, session.get(f"{base}{GI}/guestinfos?watch=1") as response:
            assert response.status == 200
            body = await asyncio.wait_for(response.read(), 10)  # the watch ends after its ERROR event
        events = [orjson.loads(line) for line in body.splitlines()]
        assert [event["type"] for event in events] == ["ERROR"]
        assert events[0]["object"]["code"] == 500 and "connection to the database lost" in events[0]["object"][
            "message"]
    finally:
        await runner.cleanup()


async def test_a_watch_from_a_version_the_store_never_reached_must_list_again(api: str, store: Store) -> None:
    newest = await store.resource_version()
    status, body = await get(api, f"{GI}/guestinfos?watch=1&resourceVersion={newest + 1000}")
    assert (status, body["reason"]) == (410, "Expired")
    assert f"resource version {newest + 1000} is newer than the newest of this store" in body["message"]


@pytest.mark.parametrize(("path", "code"), [
    (f"{GI}/guestinfos?limit=9223372036854775807", 200),
    (f"{GI}/guestinfos?limit=9223372036854775808", 400),
    (f"{GI}/guestinfos?resourceVersion=0&resourceVersionMatch=Exact", 422),
    (f"{GI}/namespaces/a%00b/guestinfos/x", 404),
    (f"{GI}/namespaces/a/guestinfos/x%00y/userlist", 404),
    ("/apis/subresources.kubevirt.io/v1/namespaces/a%00/virtualmachineinstances/x/guestosinfo", 404),
    (f"{GI}/guestinfos?fieldSelector=status.hostname%3Da%00b", 400),
    (f"{GI}/guestinfos?continue=eyJydiI6OTIyMzM3MjAzNjg1NDc3NTgwOCwic3RhcnQiOlsiYSIsImIiXX0", 400),  # rv 2**63
    (f"{GI}/guestinfos?continue=eyJydiI6MSwic3RhcnQiOlsiYVx1MDAwMCIsImIiXX0", 400),  # a NUL in the key
])
async def test_hostile_query_values_are_answered_not_crashed_on(api: str, path: str, code: int) -> None:
    status, body = await get(api, path)
    assert status == code, body
