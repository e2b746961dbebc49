"""The PostgreSQL store, through an asyncpg pool."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from schemas.codec import decode, encode
from schemas.vmi import VMIRecord
from sinks.store import TABLE, Change, StoreError, Tombstone, Version, describe_url

_CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    revision BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    record JSONB NOT NULL,
    PRIMARY KEY (namespace, name)
)
"""
_UPSERT = f"""
INSERT INTO {TABLE} AS t (namespace, name, revision, updated_at, record)
VALUES ($1, $2, $3, clock_timestamp(), $4::jsonb)
ON CONFLICT (namespace, name) DO UPDATE SET
    revision = excluded.revision, updated_at = excluded.updated_at, record = excluded.record
WHERE excluded.revision >= t.revision
"""
_DELETE = f"DELETE FROM {TABLE} WHERE namespace = $1 AND name = $2"
_GET = f"SELECT record::text FROM {TABLE} WHERE namespace = $1 AND name = $2"
_VERSION = f"SELECT revision, extract(epoch FROM updated_at)::float8 FROM {TABLE} WHERE namespace = $1 AND name = $2"
# Two processes creating the table at once can both pass IF NOT EXISTS; serialise on a lock.
_CREATE_LOCK_KEY = 0x67756573


def _rows(status: str) -> int:
    """asyncpg's command tag (`INSERT 0 1`, `DELETE 1`) → affected rows."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


class PostgresStore:
    """A `Store` on an asyncpg pool; each batch is one transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool: asyncpg.Pool | None = pool

    def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("the store is closed")
        return self._pool

    async def upsert(self, record: VMIRecord) -> bool:
        return await self.write_batch([record]) > 0

    async def delete(self, namespace: str, name: str) -> bool:
        return await self.write_batch([Tombstone(namespace, name)]) > 0

    async def write_batch(self, changes: Sequence[Change]) -> int:
        changed = 0
        async with self._get_pool().acquire() as conn, conn.transaction():
            for change in changes:
                if isinstance(change, Tombstone):
                    status = await conn.execute(_DELETE, change.namespace, change.name)
                else:
                    ref = change.vmi
                    status = await conn.execute(
                        _UPSERT, ref.namespace, ref.name, change.revision, encode(change).decode()
                    )
                changed += _rows(status)
        return changed

    async def get(self, namespace: str, name: str) -> VMIRecord | None:
        raw = await self._get_pool().fetchval(_GET, namespace, name)
        return None if raw is None else decode(VMIRecord, raw)

    async def version(self, namespace: str, name: str) -> Version | None:
        row = await self._get_pool().fetchrow(_VERSION, namespace, name)
        return None if row is None else (int(row[0]), float(row[1]))

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


async def open_postgres(url: str) -> PostgresStore:
    """Connect a small pool and create the table if missing."""
    try:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4, command_timeout=30)
    except (OSError, asyncpg.PostgresError, ValueError) as exc:
        raise StoreError(f"cannot connect to PostgreSQL store {describe_url(url)}: {exc}") from exc
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _CREATE_LOCK_KEY)
            await conn.execute(_CREATE)
    except (OSError, asyncpg.PostgresError) as exc:
        await pool.close()
        raise StoreError(f"cannot create table {TABLE} in {describe_url(url)}: {exc}") from exc
    return PostgresStore(pool)
