"""GuestInfos in the store, on SQLite and PostgreSQL: the change log, lists at a version, paging, compaction."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import asyncpg
import orjson
import pytest

from schemas.codec import encode
from schemas.events import VMIRef
from schemas.vmi import VMIRecord
from sinks.guestinfos import FIELD_PATHS
from sinks.selectors import parse_field_selector
from sinks.store import Store, Tombstone, open_store
from sinks.store_listing import ListQuery, ResourceExpired, decode_continue, encode_continue
from tests.sinks.records import full_record
from tests.sinks.stores import delete, upsert


def with_hostname(record: VMIRecord, hostname: str, revision: int) -> VMIRecord:
    info = record.guest_agent_info.model_copy(update={"hostname": hostname})
    return record.model_copy(update={"guest_agent_info": info, "revision": revision})


def with_usage(record: VMIRecord, used: int, revision: int) -> VMIRecord:
    filesystems = [fs.model_copy(update={"used_bytes": used}) for fs in record.filesystems]
    return record.model_copy(update={"filesystems": filesystems, "revision": revision})


async def log_after(store: Store, after: int) -> list[tuple[str, str, str | None, str | None]]:
    """(type, name, hostname of the object, hostname before) of each log entry after `after`."""
    _, entries = await store.changes_since(after, 1000)
    return [
        (e.type, e.name, orjson.loads(e.body)["status"].get("hostname"),
         None if e.prev_body is None else orjson.loads(e.prev_body)["status"].get("hostname"))
        for e in entries
    ]


async def names(store: Store, query: ListQuery) -> list[str]:
    return [item.name for item in (await store.list_guestinfos(query)).items]


async def test_each_object_change_is_logged_once(store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    start = await store.resource_version()
    first = full_record(ns, "vm1", revision=1)
    await upsert(store, first)
    await upsert(store, with_hostname(first, "renamed", 2))
    written = await store.resource_version()
    await upsert(store, with_usage(with_hostname(first, "renamed", 3), 123, 3))  # only usage: no event
    await upsert(store, with_hostname(first, "older", 2))  # a stale re-delivery: nothing at all
    assert await store.resource_version() == written + 1
    await delete(store, ns, "vm1")
    hostname = first.guest_agent_info.hostname
    assert await log_after(store, start) == [
        ("ADDED", "vm1", hostname, None),
        ("MODIFIED", "vm1", "renamed", hostname),
        ("DELETED", "vm1", "renamed", "renamed"),
    ]


async def test_usage_change_keeps_the_object_version_but_not_the_record_version(store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    record = full_record(ns, "vm1", revision=1)
    await upsert(store, record)
    before = await store.get_guestinfo(ns, "vm1")
    version = await store.version(ns, "vm1")
    await upsert(store, with_usage(record, 999, 2))
    after = await store.get_guestinfo(ns, "vm1")
    assert before is not None and after is not None
    assert after.resource_version == before.resource_version and after.body == before.body
    assert (await store.version(ns, "vm1") or 0) > (version or 0)  # the filesystemlist body changed
    stored = await store.get(ns, "vm1")
    assert stored is not None and stored.filesystems[0].used_bytes == 999


async def test_a_new_uid_is_a_new_object(store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    start = await store.resource_version()
    old = full_record(ns, "vm1", revision=1)
    await upsert(store, old)
    first = await store.get_guestinfo(ns, "vm1")
    await asyncio.sleep(1.1)  # creationTimestamp has whole seconds
    new = old.model_copy(update={"vmi": VMIRef(namespace=ns, name="vm1", uid="uid-2"), "revision": 2})
    await upsert(store, new)
    second = await store.get_guestinfo(ns, "vm1")
    entries = await log_after(store, start)
    assert [entry[0] for entry in entries] == ["ADDED", "DELETED", "ADDED"]
    assert first is not None and second is not None
    old_meta, new_meta = orjson.loads(first.body)["metadata"], orjson.loads(second.body)["metadata"]
    assert (old_meta["uid"], new_meta["uid"]) == ("uid-1", "uid-2")
    assert new_meta["creationTimestamp"] > old_meta["creationTimestamp"]


async def test_list_by_namespace_and_field_selector(store: Store, unique: str) -> None:
    ns1, ns2 = f"ns1-{unique}", f"ns2-{unique}"
    rhel = full_record(ns2, "vm-rhel", 1)
    rhel = rhel.model_copy(update={"status": rhel.status.model_copy(update={
        "guest_os_info": rhel.status.guest_os_info.model_copy(update={"id": "rhel"})}), "node": "node-b"})
    await store.write_batch([full_record(ns1, "vm-b", 1), full_record(ns1, "vm-a", 1), rhel,
                             full_record(ns1, "vm-off", 1, agent_connected=False)])
    def select(text: str) -> ListQuery:
        return ListQuery(None, parse_field_selector(text, FIELD_PATHS))

    assert await names(store, ListQuery(ns1)) == ["vm-a", "vm-b", "vm-off"]
    assert await names(store, select(f"metadata.namespace={ns2}")) == ["vm-rhel"]
    assert await names(store, select(f"status.guestOSInfo.id!=fedora,metadata.namespace={ns2}")) == ["vm-rhel"]
    assert await names(store, select(f"status.nodeName=node-a,metadata.namespace={ns2}")) == []
    assert await names(store, ListQuery(ns1, select("status.agentConnected=false").terms)) == ["vm-off"]
    page = await store.list_guestinfos(ListQuery(ns1))
    assert all(orjson.loads(item.body)["metadata"]["namespace"] == ns1 for item in page.items)
    assert page.resource_version == await store.resource_version()


async def test_pages_show_the_collection_as_it_was_at_the_first_page(store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    records = {name: full_record(ns, name, 1) for name in ("a", "b", "c", "d", "e")}
    await store.write_batch(list(records.values()))
    first = await store.list_guestinfos(ListQuery(ns, limit=2))
    assert [item.name for item in first.items] == ["a", "b"] and first.more
    # Between the pages: c renamed, d deleted, a new f, b (already listed) renamed, e changed only in usage.
    await store.write_batch([with_hostname(records["c"], "c-renamed", 2), Tombstone(ns, "d"),
                             full_record(ns, "f", 1), with_hostname(records["b"], "b-renamed", 2),
                             with_usage(records["e"], 5, 2)])
    after = (first.items[-1].namespace, first.items[-1].name)
    rest = await store.list_guestinfos(ListQuery(ns, limit=2, after=after, at=first.resource_version))
    assert [item.name for item in rest.items] == ["c", "d"] and rest.more
    hostnames = [orjson.loads(item.body)["status"]["hostname"] for item in rest.items]
    assert hostnames == [records["c"].guest_agent_info.hostname] * 2
    assert all(item.resource_version <= first.resource_version for item in rest.items)
    last = await store.list_guestinfos(ListQuery(ns, limit=2, after=(ns, "d"), at=first.resource_version))
    assert [item.name for item in last.items] == ["e"] and not last.more
    now = await store.list_guestinfos(ListQuery(ns))
    assert [item.name for item in now.items] == ["a", "b", "c", "e", "f"]


async def test_selector_applies_to_the_earlier_state(store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    await store.write_batch([full_record(ns, name, 1) for name in ("a", "b", "c")])
    terms = parse_field_selector("status.hostname=web<1>", FIELD_PATHS)
    first = await store.list_guestinfos(ListQuery(ns, terms, limit=1))
    await upsert(store, with_hostname(full_record(ns, "b", 1), "other", 2))
    await upsert(store, with_hostname(full_record(ns, "c", 1), "web<1>", 2))  # same value: no change
    rest = await store.list_guestinfos(ListQuery(ns, terms, limit=0, after=(ns, "a"), at=first.resource_version))
    assert [item.name for item in rest.items] == ["b", "c"]
    assert await names(store, ListQuery(ns, terms)) == ["a", "c"]


async def test_compaction_expires_old_versions(store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    await store.write_batch([full_record(ns, name, 1) for name in ("a", "b")])
    first = await store.list_guestinfos(ListQuery(ns, limit=1))
    await upsert(store, with_hostname(full_record(ns, "b", 1), "x", 2))
    await upsert(store, with_hostname(full_record(ns, "b", 1), "y", 3))
    assert await store.compact(3600, 1) >= 1  # keep only the newest entry
    with pytest.raises(ResourceExpired):
        await store.list_guestinfos(ListQuery(ns, limit=1, after=(ns, "a"), at=first.resource_version))
    with pytest.raises(ResourceExpired):
        await store.changes_since(first.resource_version, 10)
    newest, entries = await store.changes_since(await store.resource_version() - 1, 10)
    assert [orjson.loads(e.body)["status"]["hostname"] for e in entries] == ["y"]
    assert newest == await store.resource_version()
    assert await store.compact(0, 1000) >= 1  # by age: everything written before now
    assert (await store.changes_since(newest, 10))[1] == []


def test_continue_tokens_round_trip_and_reject_garbage() -> None:
    assert decode_continue(encode_continue(42, ("ns", "vm/1"))) == (42, ("ns", "vm/1"))
    for token in ("", "%%%", "eyJ9", encode_continue(1, ("a", "b"))[:-3]):
        with pytest.raises(ValueError, match="continue key is not valid"):
            decode_continue(token)


OLD_SQLITE_TABLE = """
CREATE TABLE guestinfo_vmi_records (
    namespace TEXT NOT NULL, name TEXT NOT NULL, revision INTEGER NOT NULL, updated_at REAL NOT NULL,
    record TEXT NOT NULL, PRIMARY KEY (namespace, name))
"""
OLD_POSTGRES_TABLE = """
CREATE TABLE guestinfo_vmi_records (
    namespace TEXT NOT NULL, name TEXT NOT NULL, revision BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), record JSONB NOT NULL, PRIMARY KEY (namespace, name))
"""


async def test_a_store_made_before_guestinfos_is_upgraded(store_url: str, unique: str) -> None:
    """Rows written by the earlier table layout get their GuestInfo (the topic offsets are committed:
    the rows cannot be re-read from the topic)."""
    ns = f"ns-{unique}"
    record = full_record(ns, "vm1", revision=3)
    if store_url.startswith("sqlite"):
        with sqlite3.connect(store_url.removeprefix("sqlite://")) as conn:
            conn.execute(OLD_SQLITE_TABLE)
            conn.execute("INSERT INTO guestinfo_vmi_records VALUES (?, ?, 3, 1764237000.0, ?)",
                         (ns, "vm1", encode(record).decode()))
    else:
        conn = await asyncpg.connect(store_url)
        try:
            await conn.execute(OLD_POSTGRES_TABLE)
            await conn.execute(
                "INSERT INTO guestinfo_vmi_records (namespace, name, revision, updated_at, record) "
                "VALUES ($1, 'vm1', 3, to_timestamp(1764237000), $2::jsonb)", ns, encode(record).decode(),
            )
        finally:
            await conn.close()
    store = await open_store(store_url)
    try:
        assert await store.get(ns, "vm1") == record
        item = await store.get_guestinfo(ns, "vm1")
        assert item is not None and item.resource_version >= 1
        assert orjson.loads(item.body)["metadata"]["creationTimestamp"] == "2025-11-27T09:50:00Z"
        assert await names(store, ListQuery(ns, parse_field_selector("status.guestOSInfo.id=fedora", FIELD_PATHS))) \
            == ["vm1"]
        start = await store.resource_version()
        await upsert(store, with_hostname(record, "after", 4))
        assert [entry[:3] for entry in await log_after(store, start)] == [("MODIFIED", "vm1", "after")]
        await old_writer_is_refused(store_url, ns, with_hostname(record, "stale", 5))
        assert orjson.loads((await store.get_guestinfo(ns, "vm1")).body)["status"]["hostname"] == "after"  # type: ignore[union-attr]
    finally:
        await store.close()


#: The upsert of the store before GuestInfos (it does not know the write number).
OLD_SQLITE_UPSERT = (
    "INSERT INTO guestinfo_vmi_records (namespace, name, revision, updated_at, record) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (namespace, name) DO UPDATE SET revision = excluded.revision, updated_at = excluded.updated_at, "
    "record = excluded.record WHERE excluded.revision >= guestinfo_vmi_records.revision"
)
OLD_POSTGRES_UPSERT = (
    "INSERT INTO guestinfo_vmi_records AS t (namespace, name, revision, updated_at, record) "
    "VALUES ($1, $2, $3, clock_timestamp(), $4::jsonb) ON CONFLICT (namespace, name) DO UPDATE SET "
    "revision = excluded.revision, updated_at = excluded.updated_at, record = excluded.record "
    "WHERE excluded.revision >= t.revision"
)


async def old_writer_is_refused(store_url: str, ns: str, record: VMIRecord) -> None:
    """An older serve still running during a rolling update cannot update nor add rows behind the log's back."""
    for name in ("vm1", "vm-new"):
        payload = encode(record.model_copy(update={"vmi": record.vmi.model_copy(update={"name": name})})).decode()
        if store_url.startswith("sqlite"):
            with sqlite3.connect(store_url.removeprefix("sqlite://")) as conn, pytest.raises(
                sqlite3.IntegrityError, match="an older guestinfo serve is writing this store"
            ):
                conn.execute(OLD_SQLITE_UPSERT, (ns, name, record.revision, time.time(), payload))
        else:
            conn = await asyncpg.connect(store_url)
            try:
                with pytest.raises(asyncpg.RaiseError, match="an older guestinfo serve is writing this store"):
                    await conn.execute(OLD_POSTGRES_UPSERT, ns, name, record.revision, payload)
            finally:
                await conn.close()
