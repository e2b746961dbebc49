"""The embedded store: one SQLite file in WAL mode, through aiosqlite."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import aiosqlite

from schemas.codec import decode, encode
from schemas.vmi import VMIRecord
from sinks.store import TABLE, Change, StoreError, Tombstone, Version

_CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    revision INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
)
"""
_UPSERT = f"""
INSERT INTO {TABLE} (namespace, name, revision, updated_at, record) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (namespace, name) DO UPDATE SET
    revision = excluded.revision, updated_at = excluded.updated_at, record = excluded.record
WHERE excluded.revision >= {TABLE}.revision
"""
_DELETE = f"DELETE FROM {TABLE} WHERE namespace = ? AND name = ?"
_GET = f"SELECT record FROM {TABLE} WHERE namespace = ? AND name = ?"
_VERSION = f"SELECT revision, updated_at FROM {TABLE} WHERE namespace = ? AND name = ?"


def sqlite_path(url: str) -> Path:
    """`sqlite:///ABS/PATH.db` → `/ABS/PATH.db`; anything else is a `StoreError`."""
    prefix = "sqlite://"
    path = url[len(prefix):] if url.lower().startswith(prefix) else ""
    if not path.startswith("/") or path == "/":
        raise StoreError(f"bad SQLite URL {url!r}: expected sqlite:///ABSOLUTE/PATH.db")
    return Path(path)


class SQLiteStore:
    """A `Store` on two aiosqlite connections: one writes batches, one reads.

    In WAL mode the reader sees only committed batches, never half of one in progress.
    """

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._conn: aiosqlite.Connection | None = writer
        self._reader: aiosqlite.Connection | None = reader

    def _db(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreError("the store is closed")
        return self._conn

    def _read_db(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("the store is closed")
        return self._reader

    async def _upsert(self, record: VMIRecord) -> bool:
        ref = record.vmi
        cursor = await self._db().execute(
            _UPSERT, (ref.namespace, ref.name, record.revision, time.time(), encode(record).decode())
        )
        return cursor.rowcount > 0

    async def _delete(self, namespace: str, name: str) -> bool:
        cursor = await self._db().execute(_DELETE, (namespace, name))
        return cursor.rowcount > 0

    async def upsert(self, record: VMIRecord) -> bool:
        return await self.write_batch([record]) > 0

    async def delete(self, namespace: str, name: str) -> bool:
        return await self.write_batch([Tombstone(namespace, name)]) > 0

    async def write_batch(self, changes: Sequence[Change]) -> int:
        db = self._db()
        changed = 0
        try:
            for change in changes:
                if isinstance(change, Tombstone):
                    changed += await self._delete(change.namespace, change.name)
                else:
                    changed += await self._upsert(change)
            await db.commit()
        except BaseException:
            await db.rollback()
            raise
        return changed

    async def get(self, namespace: str, name: str) -> VMIRecord | None:
        async with self._read_db().execute(_GET, (namespace, name)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else decode(VMIRecord, row[0])

    async def version(self, namespace: str, name: str) -> Version | None:
        async with self._read_db().execute(_VERSION, (namespace, name)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else (int(row[0]), float(row[1]))

    async def close(self) -> None:
        for conn in (self._conn, self._reader):
            if conn is not None:
                await conn.close()
        self._conn = self._reader = None


async def open_sqlite(url: str) -> SQLiteStore:
    """Open the SQLite file (its directory must exist), switch to WAL and create the table."""
    path = sqlite_path(url)
    if not path.parent.is_dir():
        raise StoreError(f"cannot open SQLite store {path}: directory {path.parent} does not exist")
    opened: list[aiosqlite.Connection] = []
    try:
        writer = await aiosqlite.connect(path)
        opened.append(writer)
        await writer.execute("PRAGMA journal_mode=WAL")
        await writer.execute("PRAGMA synchronous=NORMAL")
        await writer.execute("PRAGMA busy_timeout=5000")
        await writer.execute(_CREATE)
        await writer.commit()
        reader = await aiosqlite.connect(path)
        opened.append(reader)
        await reader.execute("PRAGMA busy_timeout=5000")
    except sqlite3.Error as exc:
        for conn in opened:
            await conn.close()
        raise StoreError(f"cannot open SQLite store {path}: {exc}") from exc
    return SQLiteStore(writer, reader)
