"""The embedded store: one SQLite file in WAL mode."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from schemas.codec import decode, encode
from schemas.vmi import VMIRecord
from sinks.store import LOG_TABLE, META_TABLE, TABLE, Change, StoreError, Version, check_url
from sinks.store_changes import FIELD_ONLY_COLUMNS, LogEntry, StoredVMI, change_key, field_values, plan_batch, row_of
from sinks.store_listing import (
    Listed,
    ListPage,
    ListQuery,
    ResourceExpired,
    changed_since,
    merge_page,
    where_clause,
)

T = TypeVar("T")

_FIELD_DEFS = ",\n    ".join(f"{column} TEXT NOT NULL DEFAULT ''" for column in FIELD_ONLY_COLUMNS)
_CREATE = (
    f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    revision INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
)
""",
    f"""
CREATE TABLE IF NOT EXISTS {LOG_TABLE} (
    seq INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    body BLOB NOT NULL,
    prev_body BLOB,
    prev_seq INTEGER NOT NULL,
    written_at REAL NOT NULL
)
""",
    f"CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    f"INSERT OR IGNORE INTO {META_TABLE} (key, value) VALUES ('seq', 0), ('compacted', 0)",
)
#: Columns added to a table made before GuestInfos (filled in by `_backfill`).
_ADDED_COLUMNS = (
    ("seq", "INTEGER NOT NULL DEFAULT 0"),
    ("object_seq", "INTEGER NOT NULL DEFAULT 0"),
    ("uid", "TEXT NOT NULL DEFAULT ''"),
    ("created_at", "REAL NOT NULL DEFAULT 0"),
    ("body", "BLOB NOT NULL DEFAULT x''"),
    *((column, "TEXT NOT NULL DEFAULT ''") for column in FIELD_ONLY_COLUMNS),
)
#: Every write of a row takes a new write number. A guestinfo from before GuestInfos writes rows without
#: one (its statement does not know the column); refusing those writes keeps it from leaving rows whose
#: GuestInfo and change log are stale: its store sink retries, its offsets stay uncommitted, and the
#: newer serve replicas take its partitions over once it stops.
_REFUSED = "guestinfo: a write without a write number: an older guestinfo serve is writing this store; stop it"
_NUMBERED_WRITES = (
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_numbered_insert BEFORE INSERT ON {TABLE} WHEN NEW.seq = 0 "
    f"BEGIN SELECT RAISE(ABORT, '{_REFUSED}'); END",
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_numbered_update BEFORE UPDATE ON {TABLE} WHEN NEW.seq = OLD.seq "
    f"BEGIN SELECT RAISE(ABORT, '{_REFUSED}'); END",
)
_ROW_COLUMNS = (
    "namespace", "name", "revision", "updated_at", "record", "seq", "object_seq", "uid", "created_at", "body",
    *FIELD_ONLY_COLUMNS,
)
_UPSERT = (
    f"INSERT INTO {TABLE} ({', '.join(_ROW_COLUMNS)}) VALUES ({', '.join('?' for _ in _ROW_COLUMNS)}) "
    f"ON CONFLICT (namespace, name) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in _ROW_COLUMNS[2:])
)
_STORED = f"SELECT revision, uid, body, object_seq, created_at FROM {TABLE} WHERE namespace = ? AND name = ?"
_DELETE = f"DELETE FROM {TABLE} WHERE namespace = ? AND name = ?"
_LOG = (
    f"INSERT INTO {LOG_TABLE} (seq, type, namespace, name, body, prev_body, prev_seq, written_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_GET = f"SELECT record FROM {TABLE} WHERE namespace = ? AND name = ?"
_VERSION = f"SELECT seq FROM {TABLE} WHERE namespace = ? AND name = ?"
_GUESTINFO = f"SELECT object_seq, body FROM {TABLE} WHERE namespace = ? AND name = ?"
_COUNTER = f"SELECT value FROM {META_TABLE} WHERE key = ?"
_SET_COUNTER = f"UPDATE {META_TABLE} SET value = ? WHERE key = ?"
_CHANGES = (
    f"SELECT seq, type, namespace, name, body, prev_body, prev_seq FROM {LOG_TABLE} WHERE seq > ? ORDER BY seq LIMIT ?"
)


def sqlite_path(url: str) -> Path:
    """`sqlite:///ABS/PATH.db` → `/ABS/PATH.db`; anything else is a `StoreError`."""
    if check_url(url) != "sqlite":
        raise StoreError(f"bad SQLite URL {url!r}: expected sqlite:///ABSOLUTE/PATH.db")
    return Path(url[len("sqlite://"):])


#: SQLite's result codes for "the file is locked right now" (primary codes; extended ones are masked).
_LOCKED_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _Worker:
    """One sqlite3 connection used from worker threads, one call at a time."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn: sqlite3.Connection | None = conn
        self.lock = asyncio.Lock()

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(conn)` on a worker thread. A cancelled caller still waits for the thread to be done with
        the connection before the next call (or `close`) may use it: sqlite3 crashes on a connection
        closed under a running statement."""
        async with self.lock:
            if self.conn is None:
                raise StoreError("the store is closed")
            done = asyncio.ensure_future(asyncio.to_thread(work, self.conn))
            try:
                return await asyncio.shield(done)
            except asyncio.CancelledError:
                while not done.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({done})
                if not done.cancelled():
                    done.exception()  # retrieved: the caller is gone
                raise

    async def close(self) -> None:
        async with self.lock:
            conn, self.conn = self.conn, None
            if conn is not None:
                await asyncio.to_thread(conn.close)


def _counter(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute(_COUNTER, (key,)).fetchone()
    return int(row[0]) if row else 0


class _ReadTransaction:
    """`with _ReadTransaction(conn):` one snapshot for several statements."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN")
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("COMMIT")


def _marks() -> Iterator[str]:
    while True:
        yield "?"


class SQLiteStore:
    """A `Store` on three connections to one file: one that writes, two that only read.

    Each batch is written in one transaction on a worker thread (`writer`). Reads of one row are
    primary-key lookups of a few microseconds: they run on the caller's thread (the event loop)
    through `fast`, in autocommit mode with no busy wait, so each statement sees every batch committed
    before it, and in WAL mode a reader never waits for the writer. Only when SQLite reports the file
    locked (WAL recovery, the last connection of another process checkpointing on close) does the read
    go to `reader`, which waits up to the busy timeout on a worker thread, never on the loop. Lists
    and change-log reads, which read many rows in one snapshot, run on `reader` too.
    """

    def __init__(self, writer: sqlite3.Connection, reader: sqlite3.Connection, fast: sqlite3.Connection) -> None:
        self._writer = _Worker(writer)
        self._reader = _Worker(reader)
        self._fast: sqlite3.Connection | None = fast

    async def _read_row(self, sql: str, namespace: str, name: str) -> tuple[Any, ...] | None:
        """The one row of a primary-key query: on this thread, or on the reader's while the file is locked."""
        if self._fast is None:
            raise StoreError("the store is closed")
        try:
            row: tuple[Any, ...] | None = self._fast.execute(sql, (namespace, name)).fetchone()
            return row
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in _LOCKED_CODES:
                raise
        return await self._reader.run(lambda conn: conn.execute(sql, (namespace, name)).fetchone())

    async def write_batch(self, changes: Sequence[Change]) -> int:
        return await self._writer.run(lambda conn: _write_batch(conn, changes))

    async def get(self, namespace: str, name: str) -> VMIRecord | None:
        row = await self._read_row(_GET, namespace, name)
        return None if row is None else decode(VMIRecord, row[0])

    async def version(self, namespace: str, name: str) -> Version | None:
        row = await self._read_row(_VERSION, namespace, name)
        return None if row is None else int(row[0])

    async def resource_version(self) -> int:
        return await self._reader.run(lambda conn: _counter(conn, "seq"))

    async def get_guestinfo(self, namespace: str, name: str) -> Listed | None:
        row = await self._read_row(_GUESTINFO, namespace, name)
        return None if row is None else Listed(namespace, name, int(row[0]), bytes(row[1]))

    async def list_guestinfos(self, query: ListQuery) -> ListPage:
        return await self._reader.run(lambda conn: _list(conn, query))

    async def changes_since(self, after: int, limit: int) -> tuple[int, list[LogEntry]]:
        return await self._reader.run(lambda conn: _changes(conn, after, limit))

    async def compact(self, keep_seconds: float, keep_entries: int) -> int:
        cutoff = time.time() - keep_seconds
        return await self._writer.run(lambda conn: _compact(conn, cutoff, keep_entries))

    async def close(self) -> None:
        fast, self._fast = self._fast, None
        if fast is not None:
            fast.close()
        await self._writer.close()
        await self._reader.close()


def _stored(conn: sqlite3.Connection, namespace: str, name: str) -> StoredVMI | None:
    row = conn.execute(_STORED, (namespace, name)).fetchone()
    if row is None:
        return None
    return StoredVMI(int(row[0]), row[1], bytes(row[2]), int(row[3]), float(row[4]))


def _write_batch(conn: sqlite3.Connection, changes: Sequence[Change]) -> int:
    """Apply `changes` in order in one transaction; returns how many changes wrote something."""
    now = time.time()
    try:
        conn.execute("BEGIN IMMEDIATE")
        stored = {}
        for key in {change_key(change) for change in changes}:
            found = _stored(conn, *key)
            if found is not None:
                stored[key] = found
        batch = plan_batch(changes, stored, _counter(conn, "seq"), now)
        conn.executemany(_LOG, [
            (e.seq, e.type, e.namespace, e.name, e.body, e.prev_body, e.prev_seq, now) for e in batch.entries
        ])
        conn.executemany(_DELETE, [key for key, row in batch.rows.items() if row is None])
        conn.executemany(_UPSERT, [
            (*key, row.record.revision, now, encode(row.record).decode(), row.seq, row.object_seq,
             row.record.vmi.uid, row.created_at, row.body, *field_values(row.fields))
            for key, row in batch.rows.items() if row is not None
        ])
        conn.execute(_SET_COUNTER, (batch.last_seq, "seq"))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return batch.changed


def _list(conn: sqlite3.Connection, query: ListQuery) -> ListPage:
    with _ReadTransaction(conn):
        newest = _counter(conn, "seq")
        version = newest if query.at is None else query.at
        if version < newest and version < _counter(conn, "compacted"):
            raise ResourceExpired(version, _counter(conn, "compacted"))
        where, params = where_clause(query, _marks())
        limit = f" LIMIT {query.limit + 1}" if query.limit else ""
        rows = conn.execute(
            f"SELECT namespace, name, object_seq, body FROM {TABLE} WHERE object_seq <= ?{where} "
            f"ORDER BY namespace, name{limit}",
            (version, *params),
        ).fetchall()
        unchanged = [Listed(row[0], row[1], int(row[2]), bytes(row[3])) for row in rows]
        changed: list[Listed] = []
        if version < newest:
            keys, key_params = where_clause(ListQuery(query.namespace, (), 0, query.after), _marks())
            entries = conn.execute(  # the first change of each object after `version`, in its key range
                f"SELECT namespace, name, prev_body, prev_seq FROM {LOG_TABLE} WHERE seq IN "
                f"(SELECT min(seq) FROM {LOG_TABLE} WHERE seq > ?{keys} GROUP BY namespace, name)",
                (version, *key_params),
            ).fetchall()
            changed = changed_since(entries, query)
    return merge_page(unchanged, changed, query, version)


def _changes(conn: sqlite3.Connection, after: int, limit: int) -> tuple[int, list[LogEntry]]:
    with _ReadTransaction(conn):
        newest = _counter(conn, "seq")
        compacted = _counter(conn, "compacted")
        if after < compacted:
            raise ResourceExpired(after, compacted)
        rows = conn.execute(_CHANGES, (after, limit)).fetchall()
    entries = [
        LogEntry(int(r[0]), r[1], r[2], r[3], bytes(r[4]), None if r[5] is None else bytes(r[5]), int(r[6]))
        for r in rows
    ]
    return newest, entries


def _compact(conn: sqlite3.Connection, cutoff: float, keep_entries: int) -> int:
    try:
        conn.execute("BEGIN IMMEDIATE")
        by_time = conn.execute(f"SELECT max(seq) FROM {LOG_TABLE} WHERE written_at < ?", (cutoff,)).fetchone()[0]
        by_count = conn.execute(
            f"SELECT seq FROM {LOG_TABLE} ORDER BY seq DESC LIMIT 1 OFFSET ?", (keep_entries,)
        ).fetchone()
        last = max(by_time or 0, by_count[0] if by_count else 0)
        removed = 0
        if last:
            removed = conn.execute(f"DELETE FROM {LOG_TABLE} WHERE seq <= ?", (last,)).rowcount
            conn.execute(f"UPDATE {META_TABLE} SET value = max(value, ?) WHERE key = 'compacted'", (last,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return removed


def _upgrade(conn: sqlite3.Connection) -> None:
    """Create the tables; give a table made before GuestInfos their columns and fill them in."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _CREATE:
            conn.execute(statement)
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({TABLE})")}
        missing = [(column, kind) for column, kind in _ADDED_COLUMNS if column not in present]
        for column, kind in missing:
            conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN {column} {kind}")
        if missing:
            _backfill(conn)
        conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_object_seq ON {TABLE} (object_seq)")
        for statement in _NUMBERED_WRITES:
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _backfill(conn: sqlite3.Connection) -> None:
    """Number the rows of an older table and build their GuestInfos (no change log before this)."""
    seq = _counter(conn, "seq")
    rows = conn.execute(f"SELECT namespace, name, updated_at, record FROM {TABLE} ORDER BY namespace, name").fetchall()
    columns = ("seq", "object_seq", "uid", "created_at", "body", *FIELD_ONLY_COLUMNS)
    update = f"UPDATE {TABLE} SET {', '.join(f'{c} = ?' for c in columns)} WHERE namespace = ? AND name = ?"
    for namespace, name, updated_at, raw in rows:
        seq += 1
        row = row_of(decode(VMIRecord, raw), seq, seq, float(updated_at))
        conn.execute(update, (seq, seq, row.record.vmi.uid, row.created_at, row.body, *field_values(row.fields),
                              namespace, name))
    conn.execute(_SET_COUNTER, (seq, "seq"))
    conn.execute(_SET_COUNTER, (seq, "compacted"))


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)


async def open_sqlite(url: str) -> SQLiteStore:
    """Open the SQLite file (its directory must exist), switch to WAL and create or upgrade the tables."""
    path = sqlite_path(url)
    if not path.parent.is_dir():
        raise StoreError(f"cannot open SQLite store {path}: directory {path.parent} does not exist")
    opened: list[sqlite3.Connection] = []

    def open_all() -> tuple[sqlite3.Connection, sqlite3.Connection, sqlite3.Connection]:
        writer = _connect(path, 5.0)
        opened.append(writer)
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA synchronous=NORMAL")
        _upgrade(writer)
        reader = _connect(path, 5.0)
        opened.append(reader)
        reader.execute("PRAGMA query_only=ON")
        # timeout=0: a locked file is reported at once (and read through `reader`), never waited for here.
        fast = _connect(path, 0.0)
        opened.append(fast)
        fast.execute("PRAGMA query_only=ON")
        return writer, reader, fast

    try:
        writer, reader, fast = await asyncio.to_thread(open_all)
    except (sqlite3.Error, ValueError) as exc:
        for conn in opened:
            conn.close()
        raise StoreError(f"cannot open SQLite store {path}: {exc}") from exc
    return SQLiteStore(writer, reader, fast)
