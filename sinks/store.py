"""The record store behind a URL: `sqlite:///ABS/PATH.db` (embedded default) or `postgresql://...`.

Both backends keep one row per VMI: namespace, name, revision, updated time, the record JSON
(`schemas.codec.encode`), its GuestInfo object with the fields a selector can name, and the numbers
of the write that made the row and of the one that last changed the object. Writes are idempotent:
a record whose revision is lower than the stored one for the same VMI is ignored (delivery is
at-least-once, re-deliveries are stale). Beside the rows, a change log holds the GuestInfo watch
events of the last minutes (`sinks/store_changes.py`, `sinks/store_listing.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from schemas.vmi import VMIRecord

if TYPE_CHECKING:
    from sinks.store_changes import LogEntry
    from sinks.store_listing import Listed, ListPage, ListQuery

#: The table of VMI rows every backend writes; created if missing, and given missing columns.
TABLE = "guestinfo_vmi_records"
#: The change log: GuestInfo watch events, compacted after a retention time.
LOG_TABLE = "guestinfo_vmi_changes"
#: Counters: `seq` (the last write's number) and `compacted` (the newest log entry removed).
META_TABLE = "guestinfo_store_counters"


class StoreError(RuntimeError):
    """The store URL is unusable or the backend failed to open."""


@dataclass(frozen=True, slots=True)
class Tombstone:
    """The VMI `namespace/name` went away: its row is deleted."""

    namespace: str
    name: str


#: The number of the write that stored a record: a rewrite, even of the same revision, has a new one.
Version = int

#: One change of a batch, applied in order.
Change = VMIRecord | Tombstone


class Store(Protocol):
    """What every backend offers (all coroutines); `close` is idempotent."""

    async def get(self, namespace: str, name: str) -> VMIRecord | None:
        """The stored record, or None."""
        ...

    async def version(self, namespace: str, name: str) -> Version | None:
        """The number of the write that stored the VMI's record (cheap: the record is not read), or None."""
        ...

    async def resource_version(self) -> int:
        """The number of the newest write."""
        ...

    async def get_guestinfo(self, namespace: str, name: str) -> Listed | None:
        """The VMI's GuestInfo object and its resource version, or None."""
        ...

    async def list_guestinfos(self, query: ListQuery) -> ListPage:
        """One page of GuestInfos; a version older than the change log holds is `ResourceExpired`."""
        ...

    async def changes_since(self, after: int, limit: int) -> tuple[int, list[LogEntry]]:
        """(the newest write's number, up to `limit` log entries after `after` in order); an `after`
        older than the log holds is `ResourceExpired`."""
        ...

    async def compact(self, keep_seconds: float, keep_entries: int) -> int:
        """Drop log entries older than `keep_seconds` or beyond the newest `keep_entries`; returns how many."""
        ...

    async def write_batch(self, changes: Sequence[Change]) -> int:
        """Apply changes in order in one transaction; returns how many rows changed."""
        ...

    async def close(self) -> None:
        """Release connections (idempotent)."""
        ...


def describe_url(url: str) -> str:
    """The URL without a password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


async def open_store(url: str) -> Store:
    """Open (and create the table of) the store named by `url`.

    `sqlite:///ABS/PATH.db` uses SQLite in WAL mode: batches are written through aiosqlite, and
    primary-key reads run on the event loop (see `SQLiteStore`); `postgresql://user@host:port/db` (or
    `postgres://`) uses an asyncpg pool. Any other scheme is a `StoreError`.
    """
    if check_url(url) == "sqlite":
        from sinks.store_sqlite import open_sqlite

        return await open_sqlite(url)
    from sinks.store_postgres import open_postgres

    return await open_postgres(url)


def check_url(url: str) -> str:
    """The backend of `url` ("sqlite" or "postgresql"); a URL no backend takes is a `StoreError` saying why."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        path = url[len("sqlite://"):] if url.lower().startswith("sqlite://") else ""
        if not path.startswith("/") or path == "/":
            raise StoreError(f"bad SQLite URL {url!r}: expected sqlite:///ABSOLUTE/PATH.db")
        return "sqlite"
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit(url)
        if not parts.hostname and not parts.path.strip("/"):
            raise StoreError(f"bad PostgreSQL URL {describe_url(url)!r}: expected postgresql://USER@HOST:PORT/DB")
        return "postgresql"
    raise StoreError(
        f"unsupported store URL {describe_url(url)!r}: "
        "use sqlite:///ABSOLUTE/PATH.db or postgresql://USER@HOST:PORT/DB"
    )
