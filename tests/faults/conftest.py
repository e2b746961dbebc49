"""Fixtures of the fault tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest


@pytest.fixture
async def shared_store(postgres_url: str, unique: str) -> AsyncIterator[str]:
    """A schema of its own on the session's PostgreSQL, for both replicas."""
    schema = f"replicas_{unique}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        yield f"{postgres_url}?search_path={schema}"
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()
