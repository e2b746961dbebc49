"""The embedded store: one SQLite file in WAL mode, through aiosqlite."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from schemas.codec import decode, encode
from schemas.vmi import VMIRecord
from sinks.store import TABLE, Change, StoreError, Tombstone, Version, check_url

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
    if check_url(url) != "sqlite":
        raise StoreError(f"bad SQLite URL {url!r}: expected sqlite:///ABSOLUTE/PATH.db")
    return Path(url[len("sqlite://"):])


#: SQLite's result codes for "the file is locked right now" (primary codes; extended ones are masked).
_LOCKED_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SQLiteStore:
    """A `Store` on an aiosqlite connection that writes batches and two connections that only read.

    Reads are single-row primary-key lookups of a few microseconds. They run on the caller's thread
    (the event loop) through `fast`, a plain `sqlite3` connection in autocommit mode with no busy wait:
    each statement is its own read transaction, so it sees every batch committed before it, and in WAL
    mode a reader never waits for the writer. Only when SQLite reports the file locked (WAL recovery,
    the last connection of another process checkpointing on close) does the read go to `reader`, an
    aiosqlite connection that waits up to the busy timeout in its own thread, never on the loop.
    Either way a reader sees only committed batches, never half of one in progress.
    """

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection, fast: sqlite3.Connection) -> None:
        self._conn: aiosqlite.Connection | None = writer
        self._reader: aiosqlite.Connection | None = reader
        self._fast: sqlite3.Connection | None = fast

    def _db(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreError("the store is closed")
        return self._conn

    def _read_db(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("the store is closed")
        return self._reader

    async def _read_row(self, sql: str, namespace: str, name: str) -> tuple[Any, ...] | None:
        """The one row of a primary-key query: on this thread, or in aiosqlite's while the file is locked."""
        if self._fast is None:
            raise StoreError("the store is closed")
        try:
            row: tuple[Any, ...] | None = self._fast.execute(sql, (namespace, name)).fetchone()
            return row
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in _LOCKED_CODES:
                raise
        async with self._read_db().execute(sql, (namespace, name)) as cursor:
            locked_row = await cursor.fetchone()
        return None if locked_row is None else tuple(locked_row)

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
        row = await self._read_row(_GET, namespace, name)
        return None if row is None else decode(VMIRecord, row[0])

    async def version(self, namespace: str, name: str) -> Version | None:
        row = await self._read_row(_VERSION, namespace, name)
        return None if row is None else (int(row[0]), float(row[1]))

    async def close(self) -> None:
        fast, self._fast = self._fast, None
        if fast is not None:
            fast.close()
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
    fast: sqlite3.Connection | None = None
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
        # timeout=0: a locked file is reported at once (and read through `reader`), never waited for here.
        fast = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        fast.execute("PRAGMA query_only=ON")
    except sqlite3.Error as exc:
        if fast is not None:
            fast.close()
        for conn in opened:
            await conn.close()
        raise StoreError(f"cannot open SQLite store {path}: {exc}") from exc
    return SQLiteStore(writer, reader, fast)
