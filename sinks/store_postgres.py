"""The PostgreSQL store, through an asyncpg pool.

Several `serve` processes may write one database: each batch first locks the write counter row, so
batches commit one after another in the order of their write numbers, and a reader of the change
log never sees a later number before an earlier one. Keys are compared and ordered with the "C"
collation (byte order), the order list pages and continue tokens use on every backend.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import asyncpg

from schemas.codec import decode, encode
from schemas.vmi import VMIRecord
from sinks.store import LOG_TABLE, META_TABLE, TABLE, Change, StoreError, Version, describe_url
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

_CREATE = (
    f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    namespace TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    revision BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    record JSONB NOT NULL,
    PRIMARY KEY (namespace, name)
)
""",
    f"""
CREATE TABLE IF NOT EXISTS {LOG_TABLE} (
    seq BIGINT PRIMARY KEY,
    type TEXT NOT NULL,
    namespace TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    body BYTEA NOT NULL,
    prev_body BYTEA,
    prev_seq BIGINT NOT NULL,
    written_at DOUBLE PRECISION NOT NULL
)
""",
    f"CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    f"INSERT INTO {META_TABLE} (key, value) VALUES ('seq', 0), ('compacted', 0) ON CONFLICT DO NOTHING",
)
_ADDED_COLUMNS = (
    ("seq", "BIGINT NOT NULL DEFAULT 0"),
    ("object_seq", "BIGINT NOT NULL DEFAULT 0"),
    ("uid", "TEXT NOT NULL DEFAULT ''"),
    ("created_at", "DOUBLE PRECISION NOT NULL DEFAULT 0"),
    ("body", "BYTEA NOT NULL DEFAULT ''::bytea"),
    *((column, "TEXT NOT NULL DEFAULT ''") for column in FIELD_ONLY_COLUMNS),
)
#: Every write of a row takes a new write number. A guestinfo from before GuestInfos writes rows without
#: one (its statement does not know the column); refusing those writes keeps it from leaving rows whose
#: GuestInfo and change log are stale: its store sink retries, its offsets stay uncommitted, and the
#: newer serve replicas take its partitions over once it stops (a rolling update needs nothing more).
_NUMBERED_WRITES = (
    f"""
CREATE OR REPLACE FUNCTION {TABLE}_numbered() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq = 0 OR (TG_OP = 'UPDATE' AND NEW.seq = OLD.seq) THEN
        RAISE EXCEPTION 'guestinfo: a write without a write number: an older guestinfo serve is writing this '
                        'store; stop it';
    END IF;
    RETURN NEW;
END $$
""",
    f"CREATE OR REPLACE TRIGGER {TABLE}_numbered BEFORE INSERT OR UPDATE ON {TABLE} "
    f"FOR EACH ROW EXECUTE FUNCTION {TABLE}_numbered()",
)
_ROW_COLUMNS = (
    "namespace", "name", "revision", "updated_at", "record", "seq", "object_seq", "uid", "created_at", "body",
    *FIELD_ONLY_COLUMNS,
)
_VALUES = ", ".join(
    "to_timestamp($4)" if column == "updated_at" else "$5::jsonb" if column == "record" else f"${i}"
    for i, column in enumerate(_ROW_COLUMNS, start=1)
)
_UPSERT = (
    f"INSERT INTO {TABLE} AS t ({', '.join(_ROW_COLUMNS)}) VALUES ({_VALUES}) "
    "ON CONFLICT (namespace, name) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in _ROW_COLUMNS[2:])
)
_STORED = (
    f"SELECT namespace, name, revision, uid, body, object_seq, created_at FROM {TABLE} "
    "WHERE (namespace, name) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
)
_DELETE = f"DELETE FROM {TABLE} WHERE namespace = $1 AND name = $2"
_LOG = (
    f"INSERT INTO {LOG_TABLE} (seq, type, namespace, name, body, prev_body, prev_seq, written_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)
_GET = f"SELECT record::text FROM {TABLE} WHERE namespace = $1 AND name = $2"
_VERSION = f"SELECT seq FROM {TABLE} WHERE namespace = $1 AND name = $2"
_GUESTINFO = f"SELECT object_seq, body FROM {TABLE} WHERE namespace = $1 AND name = $2"
_COUNTER = f"SELECT value FROM {META_TABLE} WHERE key = $1"
#: The counter row, locked for the batch, and the database's clock (one clock for every replica).
_LOCK_COUNTER = (
    f"SELECT value, extract(epoch FROM clock_timestamp())::float8 FROM {META_TABLE} WHERE key = 'seq' FOR UPDATE"
)
_SET_COUNTER = f"UPDATE {META_TABLE} SET value = $1 WHERE key = $2"
_CHANGES = (
    f"SELECT seq, type, namespace, name, body, prev_body, prev_seq FROM {LOG_TABLE} "
    "WHERE seq > $1 ORDER BY seq LIMIT $2"
)
# Two processes creating or upgrading the tables at once can both pass IF NOT EXISTS; serialise on a lock.
_CREATE_LOCK_KEY = 0x67756573


def _marks(start: int = 1) -> Iterator[str]:
    number = start
    while True:
        yield f"${number}"
        number += 1


class PostgresStore:
    """A `Store` on an asyncpg pool; each batch is one transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool: asyncpg.Pool | None = pool

    def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("the store is closed")
        return self._pool

    async def write_batch(self, changes: Sequence[Change]) -> int:
        keys = list({change_key(change) for change in changes})
        async with self._get_pool().acquire() as conn, conn.transaction():
            counter = await conn.fetchrow(_LOCK_COUNTER)
            last_seq, now = int(counter[0]), float(counter[1])
            found = await conn.fetch(_STORED, [key[0] for key in keys], [key[1] for key in keys])
            stored = {
                (row[0], row[1]): StoredVMI(int(row[2]), row[3], bytes(row[4]), int(row[5]), float(row[6]))
                for row in found
            }
            batch = plan_batch(changes, stored, last_seq, now)
            if batch.entries:
                await conn.executemany(_LOG, [
                    (e.seq, e.type, e.namespace, e.name, e.body, e.prev_body, e.prev_seq, now) for e in batch.entries
                ])
            deleted = [key for key, row in batch.rows.items() if row is None]
            if deleted:
                await conn.executemany(_DELETE, deleted)
            written = [
                (*key, row.record.revision, now, encode(row.record).decode(), row.seq, row.object_seq,
                 row.record.vmi.uid, row.created_at, row.body, *field_values(row.fields))
                for key, row in batch.rows.items() if row is not None
            ]
            if written:
                await conn.executemany(_UPSERT, written)
            await conn.execute(_SET_COUNTER, batch.last_seq, "seq")
        return batch.changed

    async def get(self, namespace: str, name: str) -> VMIRecord | None:
        raw = await self._get_pool().fetchval(_GET, namespace, name)
        return None if raw is None else decode(VMIRecord, raw)

    async def version(self, namespace: str, name: str) -> Version | None:
        seq = await self._get_pool().fetchval(_VERSION, namespace, name)
        return None if seq is None else int(seq)

    async def resource_version(self) -> int:
        return int(await self._get_pool().fetchval(_COUNTER, "seq"))

    async def get_guestinfo(self, namespace: str, name: str) -> Listed | None:
        row = await self._get_pool().fetchrow(_GUESTINFO, namespace, name)
        return None if row is None else Listed(namespace, name, int(row[0]), bytes(row[1]))

    async def list_guestinfos(self, query: ListQuery) -> ListPage:
        async with self._get_pool().acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            newest = int(await conn.fetchval(_COUNTER, "seq"))
            version = newest if query.at is None else query.at
            if version < newest:
                compacted = int(await conn.fetchval(_COUNTER, "compacted"))
                if version < compacted:
                    raise ResourceExpired(version, compacted)
            where, params = where_clause(query, _marks(2))
            limit = f" LIMIT {query.limit + 1}" if query.limit else ""
            rows = await conn.fetch(
                f"SELECT namespace, name, object_seq, body FROM {TABLE} WHERE object_seq <= $1{where} "
                f"ORDER BY namespace, name{limit}",
                version, *params,
            )
            unchanged = [Listed(row[0], row[1], int(row[2]), bytes(row[3])) for row in rows]
            changed: list[Listed] = []
            if version < newest:
                keys, key_params = where_clause(ListQuery(query.namespace, (), 0, query.after), _marks(2))
                entries = await conn.fetch(  # the first change of each object after `version`, in its key range
                    f"SELECT DISTINCT ON (namespace, name) namespace, name, prev_body, prev_seq FROM {LOG_TABLE} "
                    f"WHERE seq > $1{keys} ORDER BY namespace, name, seq",
                    version, *key_params,
                )
                changed = changed_since([(r[0], r[1], r[2], int(r[3])) for r in entries], query)
        return merge_page(unchanged, changed, query, version)

    async def changes_since(self, after: int, limit: int) -> tuple[int, list[LogEntry]]:
        async with self._get_pool().acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            newest = int(await conn.fetchval(_COUNTER, "seq"))
            compacted = int(await conn.fetchval(_COUNTER, "compacted"))
            if after < compacted:
                raise ResourceExpired(after, compacted)
            rows = await conn.fetch(_CHANGES, after, limit)
        entries = [
            LogEntry(int(r[0]), r[1], r[2], r[3], bytes(r[4]), None if r[5] is None else bytes(r[5]), int(r[6]))
            for r in rows
        ]
        return newest, entries

    async def compact(self, keep_seconds: float, keep_entries: int) -> int:
        async with self._get_pool().acquire() as conn, conn.transaction():
            by_time = await conn.fetchval(
                f"SELECT max(seq) FROM {LOG_TABLE} "
                "WHERE written_at < extract(epoch FROM clock_timestamp())::float8 - $1",
                float(keep_seconds),
            )
            by_count = await conn.fetchval(
                f"SELECT seq FROM {LOG_TABLE} ORDER BY seq DESC LIMIT 1 OFFSET $1", keep_entries
            )
            last = max(int(by_time or 0), int(by_count or 0))
            if not last:
                return 0
            status = await conn.execute(f"DELETE FROM {LOG_TABLE} WHERE seq <= $1", last)
            await conn.execute(
                f"UPDATE {META_TABLE} SET value = greatest(value, $1) WHERE key = 'compacted'", last
            )
        return int(status.rsplit(" ", 1)[-1])

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


async def _upgrade(conn: asyncpg.Connection) -> None:
    """Create the tables; give a table made before GuestInfos their columns and fill them in."""
    for statement in _CREATE:
        await conn.execute(statement)
    present = {
        row[0]
        for row in await conn.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = $1 AND table_schema = current_schema()",
            TABLE,
        )
    }
    missing = [(column, kind) for column, kind in _ADDED_COLUMNS if column not in present]
    for column, kind in missing:
        await conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN {column} {kind}")
    if missing:
        for column in ("namespace", "name"):
            await conn.execute(f'ALTER TABLE {TABLE} ALTER COLUMN {column} TYPE TEXT COLLATE "C"')
        await _backfill(conn)
    await conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_object_seq ON {TABLE} (object_seq)")
    for statement in _NUMBERED_WRITES:
        await conn.execute(statement)


async def _backfill(conn: asyncpg.Connection) -> None:
    """Number the rows of an older table and build their GuestInfos (no change log before this)."""
    seq = int(await conn.fetchval(_COUNTER, "seq"))
    rows = await conn.fetch(
        f"SELECT namespace, name, extract(epoch FROM updated_at)::float8, record::text FROM {TABLE} "
        "ORDER BY namespace, name"
    )
    columns = ("seq", "object_seq", "uid", "created_at", "body", *FIELD_ONLY_COLUMNS)
    marks = _marks()
    assignments = ", ".join(f"{column} = {next(marks)}" for column in columns)
    update = f"UPDATE {TABLE} SET {assignments} WHERE namespace = {next(marks)} AND name = {next(marks)}"
    for namespace, name, updated_at, raw in rows:
        seq += 1
        row = row_of(decode(VMIRecord, raw), seq, seq, float(updated_at))
        await conn.execute(update, seq, seq, row.record.vmi.uid, row.created_at, row.body,
                           *field_values(row.fields), namespace, name)
    await conn.execute(_SET_COUNTER, seq, "seq")
    await conn.execute(_SET_COUNTER, seq, "compacted")


async def open_postgres(url: str) -> PostgresStore:
    """Connect a small pool and create or upgrade the tables."""
    try:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4, command_timeout=30)
    except (OSError, asyncpg.PostgresError, ValueError) as exc:
        raise StoreError(f"cannot connect to PostgreSQL store {describe_url(url)}: {exc}") from exc
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _CREATE_LOCK_KEY)
            await _upgrade(conn)
    except (OSError, asyncpg.PostgresError) as exc:
        await pool.close()
        raise StoreError(f"cannot create table {TABLE} in {describe_url(url)}: {exc}") from exc
    return PostgresStore(pool)
