"""The store on SQLite and PostgreSQL: same tests for both backends."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg
import pytest

from schemas.events import VMIRef
from sinks.store import Store, StoreError, Tombstone, open_store
from tests.sinks.records import empty_record, full_record
from tests.sinks.stores import delete, upsert


async def test_get_unknown_is_none(store: Store, unique: str) -> None:
    assert await store.get(f"ns-{unique}", "nope") is None


async def test_upsert_then_get_round_trips(store: Store, unique: str) -> None:
    record = full_record(f"ns-{unique}", "vm1", revision=3)
    assert await upsert(store, record) is True
    assert await store.get(f"ns-{unique}", "vm1") == record


async def test_lower_revision_is_ignored_same_or_higher_wins(store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    newer = full_record(ns, "vm1", revision=5)
    older = empty_record(ns, "vm1", revision=4)
    assert await upsert(store, newer)
    assert await upsert(store, older) is False
    assert await store.get(ns, "vm1") == newer
    assert await upsert(store, newer) is True  # re-delivery of the same revision is harmless
    newest = empty_record(ns, "vm1", revision=6)
    assert await upsert(store, newest)
    assert await store.get(ns, "vm1") == newest


async def test_delete(store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    await upsert(store, full_record(ns, "vm1"))
    await upsert(store, full_record(ns, "vm2"))
    assert await delete(store, ns, "vm1") is True
    assert await delete(store, ns, "vm1") is False
    assert await store.get(ns, "vm1") is None
    assert await store.get(ns, "vm2") is not None


async def test_batch_applies_in_order(store: Store, unique: str) -> None:
    ns = f"ns-{unique}"
    changed = await store.write_batch(
        [full_record(ns, "a", 1), Tombstone(ns, "a"), full_record(ns, "b", 2), empty_record(ns, "b", 1)]
    )
    assert changed == 3
    assert await store.get(ns, "a") is None
    record = await store.get(ns, "b")
    assert record is not None and record.revision == 2


async def test_table_survives_reopen(store: Store, store_url: str, unique: str) -> None:
    first = await open_store(store_url)
    try:
        await upsert(first, full_record(f"ns-{unique}", "vm1", revision=2))
    finally:
        await first.close()
    second = await open_store(store_url)
    try:
        record = await second.get(f"ns-{unique}", "vm1")
        assert record is not None and record.vmi == VMIRef(namespace=f"ns-{unique}", name="vm1", uid="uid-1")
    finally:
        await second.close()


async def test_sqlite_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    store = await open_store(f"sqlite://{path}")
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
async def test_postgres_row_has_revision_and_time(store: Store, store_url: str, unique: str) -> None:
    await upsert(store, full_record(f"ns-{unique}", "vm1", revision=7))
    conn = await asyncpg.connect(store_url)
    try:
        row = await conn.fetchrow(
            "SELECT revision, updated_at, record->'vmi'->>'name' AS name FROM guestinfo_vmi_records "
            "WHERE namespace = $1",
            f"ns-{unique}",
        )
        assert row is not None
        assert (row["revision"], row["name"]) == (7, "vm1")
        assert row["updated_at"] is not None
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@localhost/db", "unsupported store URL"),
        ("/tmp/x.db", "unsupported store URL"),
        ("sqlite://relative.db", "expected sqlite:///ABSOLUTE/PATH.db"),
        ("sqlite:///no/such/dir/x.db", "does not exist"),
        ("postgresql://postgres@127.0.0.1:1/test", "cannot connect to PostgreSQL"),
    ],
)
async def test_bad_url_is_a_clear_error(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        await open_store(url)


async def test_reads_see_a_batch_committed_by_another_writer_at_once(store: Store, store_url: str, unique: str) -> None:
    """Another connection's (or process's) committed batch is read back right after it commits."""
    ns = f"ns-{unique}"
    other = await open_store(store_url)
    try:
        versions = []
        for revision in range(1, 21):
            await other.write_batch([full_record(ns, "vm1", revision=revision)])
            version = await store.version(ns, "vm1")
            record = await store.get(ns, "vm1")
            assert version is not None
            versions.append(version)
            assert record is not None and record.revision == revision
        assert versions == sorted(set(versions))  # every write has a new, higher number
        await other.write_batch([Tombstone(ns, "vm1")])
        assert await store.version(ns, "vm1") is None
        assert await store.get(ns, "vm1") is None
    finally:
        await other.close()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_sqlite_reads_leave_no_read_transaction_open(store: Store, store_url: str, unique: str) -> None:
    """A read that kept its snapshot would hide later batches and keep the WAL from being checkpointed."""
    await upsert(store, full_record(f"ns-{unique}", "vm1"))
    assert await store.version(f"ns-{unique}", "vm1") is not None
    assert await store.get(f"ns-{unique}", "vm1") is not None
    assert await store.get(f"ns-{unique}", "ghost") is None
    with sqlite3.connect(store_url.removeprefix("sqlite://")) as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0


class _LockedFile:
    """A `sqlite3.Connection` stand-in that finds the file locked, as SQLite reports it, or failing otherwise."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.calls = 0

    def execute(self, sql: str, params: object) -> sqlite3.Cursor:
        self.calls += 1
        error = sqlite3.OperationalError("database is locked" if self.code == sqlite3.SQLITE_BUSY else "disk I/O error")
        error.sqlite_errorcode = self.code
        raise error

    def close(self) -> None:
        pass


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_sqlite_read_of_a_locked_file_waits_in_the_reader_thread(
    store: Store, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop-thread read never waits for a lock: it hands the read to the reader's thread instead."""
    record = full_record(f"ns-{unique}", "vm1", revision=4)
    await upsert(store, record)
    locked = _LockedFile(sqlite3.SQLITE_BUSY)
    monkeypatch.setattr(store, "_fast", locked)
    assert await store.get(f"ns-{unique}", "vm1") == record
    assert await store.version(f"ns-{unique}", "vm1") is not None
    assert locked.calls == 2
    monkeypatch.setattr(store, "_fast", _LockedFile(sqlite3.SQLITE_IOERR))
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        await store.get(f"ns-{unique}", "vm1")
