"""Fixtures of the sinks tests: stores on both backends, producing to the merged topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from schemas.codec import encode
from schemas.events import vmi_key
from schemas.topics import VMI_TOPIC
from schemas.vmi import VMIRecord
from sinks.store import Store, open_store
from tests.conftest import started_producer

DATA = Path(__file__).parent / "data"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str, unique: str
) -> AsyncIterator[str]:
    """Both backends run every store test; PostgreSQL failing to connect fails the test.

    On PostgreSQL each test gets a schema of its own (asyncpg passes the URL's `search_path`
    to the server), dropped afterwards: the topic is shared, so a sink also stores other tests' VMIs.
    """
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'store.db'}"
        return
    schema = f"sinks_test_{unique}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        yield f"{postgres_url}?search_path={schema}"
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()


def golden(name: str) -> bytes:
    return (DATA / name).read_bytes()


Item = VMIRecord | tuple[str, str] | tuple[str, bytes]


async def produce(bootstrap_servers: str, items: list[Item]) -> None:
    """Send records (VMIRecord), tombstones (`(namespace, name)`) or raw bytes (`(key, value)`)."""
    async with started_producer(bootstrap_servers, max_batch_size=16384) as producer:
        for item in items:
            if isinstance(item, VMIRecord):
                await producer.send_and_wait(VMI_TOPIC, encode(item), key=item.vmi.key.encode())
            elif isinstance(item[1], bytes):
                await producer.send_and_wait(VMI_TOPIC, item[1], key=item[0].encode())
            else:
                await producer.send_and_wait(VMI_TOPIC, None, key=vmi_key(item[0], item[1]).encode())


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `check` until it is true, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)
